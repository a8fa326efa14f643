"""Stage 2 in the annotation page (headless Chromium, real server): an image prefilled with
masks (rows inserted here as the stage-2 prefill stores them) shows them locked in their
own style; clicks on them start a new object instead of editing them; a wrong one is
rejected (recorded with an event), the others are kept when the image is finished."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from selenium.webdriver.common.keys import Keys

from engine.campaigns.campaign import Campaign
from engine.campaigns.masks import mask_shape
from engine.campaigns.queue import current_model
from engine.models import load_model
from model import SamPredictor
from tests.engine.campaigns.browser import NO_WARNINGS, Page, start_chromium
from tests.engine.campaigns.webapp import (
    DOG,
    add_annotator,
    copy_campaign,
    mask_rows,
    served,
    stored_rgb,
    template,
)

pytestmark = pytest.mark.slow

# Boxes the prefill would have found on the dog photo: the bowl, and the dog's head.
BOXES = ([490, 135, 660, 265], [240, 215, 430, 380])
PREFILLED_RGB = (90, 110, 255)  # the page's colour for prefilled masks


def _prefill(campaign: Campaign) -> list[np.ndarray]:
    """Make every image a stage-2 image and store box-prompt masks of our model on the dog
    as proposed prefilled masks, as the prefill job does."""
    predictor = SamPredictor(load_model("vit_mini", "bundled"))
    predictor.set_image(stored_rgb(campaign, DOG))
    masks = [predictor.predict(box=np.array(b), multimask_output=False)[0][0] for b in BOXES]
    with campaign.db.write() as db:
        model = current_model(db)
        db.execute("UPDATE images SET stage = 2, prefill_model = ?", (model,))
        for box, mask in zip(BOXES, masks):
            shape = mask_shape(mask)
            db.execute(
                "INSERT INTO masks (image_id, origin, state, counts, height, width, bbox, area, "
                "prompts, model_sha256, detector_score, created, changed) VALUES "
                "(?, 'prefilled', 'proposed', ?, ?, ?, ?, ?, ?, ?, 0.9, ?, ?)",
                (DOG, shape.counts, shape.height, shape.width, json.dumps(shape.bbox),
                 shape.area, json.dumps({"points": [], "box": box}), model, time.time(),
                 time.time()),
            )  # fmt: skip
    return masks


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("prefilled")
    campaign = copy_campaign(template(tmp_path_factory), folder / "campaign")
    masks = _prefill(campaign)
    token = add_annotator(campaign, "cy")
    with served(campaign) as url:
        driver = start_chromium(folder / "profile")
        try:
            page = Page(driver, url, "prefilled")
            page.open(NO_WARNINGS)
            page.sign_in(token)
            page.wait_ready(DOG)
            yield page, campaign, masks
        finally:
            driver.quit()


def _inside(mask: np.ndarray) -> tuple[int, int]:
    """A pixel deep inside the mask (x, y)."""
    ys, xs = np.nonzero(mask)
    order = np.argsort((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    inner = [i for i in order if mask[ys[i] - 3 : ys[i] + 4, xs[i] - 3 : xs[i] + 4].all()]
    return int(xs[inner[0]]), int(ys[inner[0]])


def test_prefilled_masks_are_drawn_locked_in_their_own_style(page) -> None:
    page, _, masks = page
    page.shot("01-prefilled")
    assert "stage 2" in page.js("return document.getElementById('image-info').textContent")
    drawn = page.canvas_mask("masks-layer")
    union = masks[0] | masks[1]
    assert (drawn & union).sum() / union.sum() > 0.99 and not (drawn & ~union).any()
    x, y = _inside(masks[0])
    pixel = page.js(
        "return [...document.getElementById('masks-layer').getContext('2d')"
        ".getImageData(arguments[0], arguments[1], 1, 1).data]",
        x,
        y,
    )
    assert np.allclose(pixel[:3], PREFILLED_RGB, atol=4)
    rows = page.js(
        "return [...document.querySelectorAll('#mask-list .prefilled')].map(r => r.textContent)"
    )
    assert len(rows) == 2 and all("locked" in text for text in rows)
    page.click(x, y)  # a click on a prefilled mask starts a new object; the mask stays as it is
    assert page.work_mask()[y, x]
    assert np.array_equal(page.canvas_mask("masks-layer"), drawn)
    page.press(Keys.ESCAPE)


def test_a_wrong_prefilled_mask_is_rejected_and_the_rest_kept(page) -> None:
    page, campaign, masks = page
    x, y = _inside(masks[0] & ~masks[1])
    page.click(x, y, alt=True)
    page.press(Keys.DELETE)  # prefilled masks are not deleted
    assert "rejected" in page.message()
    page.press("x")
    page.wait_saved()
    page.shot("02-rejected")
    assert not (page.canvas_mask("masks-layer") & masks[0] & ~masks[1]).any()
    page.click(150, 480)
    page.accept()
    page.wait_saved()
    page.press("f")
    page.wait_saved()
    states = [(row["origin"], row["state"]) for row in mask_rows(campaign, DOG)]
    assert states == [("prefilled", "rejected"), ("prefilled", "kept"), ("manual", "accepted")]
    with campaign.db.read() as db:
        events = db.execute(
            "SELECT detail FROM events WHERE kind = 'reject_prefilled' AND image_id = ?", (DOG,)
        ).fetchall()
    first = mask_rows(campaign, DOG)[0]["mask_id"]
    assert [json.loads(e["detail"])["mask_id"] for e in events] == [first]
