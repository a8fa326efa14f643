"""The audit and verify modes of the annotation page in a real headless Chromium against
`saengine campaign serve` (one browser for both): copies of the bundled-photo campaign made
review campaigns with proposed masks (rows as `saengine audit create` stores them). Audit:
each proposed mask kept, rejected or corrected with the brush starting from the mask (the
correction linked to it), a missing object added, the image finished, and the report's
figures. Verify: one key per mask, "something is missing" sent with an answer, the image
finished by its last answer and the next one shown."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from pycocotools import mask as mask_utils
from selenium.webdriver.common.keys import Keys

from engine.campaigns.audit import audit_report
from engine.campaigns.campaign import CONFIG_FILE, Campaign
from engine.campaigns.masks import insert_prefilled, mask_shape
from engine.campaigns.queue import current_model
from engine.models import load_model
from model import SamPredictor
from tests.engine.campaigns.browser import NO_WARNINGS, Page, start_chromium
from tests.engine.campaigns.webapp import (
    DOG,
    GROCERIES,
    add_annotator,
    copy_campaign,
    mask_rows,
    served,
    stored_rgb,
    template,
)

pytestmark = pytest.mark.slow

# Boxes a generator might have found: on the dog photo the bowl, the dog's head and a
# patch of floor; on the groceries photo two items.
BOXES = {
    DOG: ([490, 135, 660, 265], [240, 215, 430, 380], [40, 420, 200, 520]),
    GROCERIES: ([100, 100, 300, 300], [450, 150, 650, 400]),
}


def _review_campaign(template_dir, folder, mode: str, images: tuple[int, ...]) -> Campaign:
    """A copy of the template whose images carry proposed masks (box-prompt masks of the
    bundled model with scores), in `mode`."""
    copy_campaign(template_dir, folder)
    config = OmegaConf.load(folder / CONFIG_FILE)
    config.mode, config.stage = mode, "semi"
    (folder / CONFIG_FILE).write_text(OmegaConf.to_yaml(config))
    campaign = Campaign(folder)
    predictor = SamPredictor(load_model("vit_mini", "bundled"))
    with campaign.db.write() as db:
        model = str(current_model(db))
        db.execute("UPDATE images SET stage = 2, prefill_model = 'test'")
    for image_id in images:
        predictor.set_image(stored_rgb(campaign, image_id))
        for index, box in enumerate(BOXES[image_id]):
            mask, iou, _ = predictor.predict(box=np.array(box), multimask_output=False)
            proposal = {
                **vars(mask_shape(mask[0])),
                "prompts": {"points": [], "box": None},
                "predicted_iou": float(iou[0]),
                "stability_score": 0.9,
                "annotation_id": 100 * image_id + index,
            }
            with campaign.db.write() as db:
                insert_prefilled(db, image_id, proposal, model_sha256=model)
    return campaign


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("review")
    driver = start_chromium(folder / "profile")
    try:
        yield driver, folder, template(tmp_path_factory)
    finally:
        driver.quit()


def _decoded(row) -> np.ndarray:
    rle = {"size": [row["height"], row["width"]], "counts": row["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def _selected_mask_id(page: Page) -> int:
    key = page.js("return window.saengine.app.panel.selected")
    assert key and key.startswith("m"), key
    return int(key[1:])


def test_audit_keep_reject_correct_add_and_report(browser) -> None:
    driver, folder, template_dir = browser
    campaign = _review_campaign(template_dir, folder / "audit", "audit", (DOG,))
    token = add_annotator(campaign, "auditor")
    with served(campaign) as url:
        page = Page(driver, url, "audit")
        page.open(NO_WARNINGS)  # the warnings are tested in test_webapp_annotate
        page.sign_in(token)
        page.wait_ready(DOG)
        page.shot("01-proposed")
        assert page.body("mode") == "audit"
        labels = page.js(
            "return [...document.querySelectorAll('#mask-list .prefilled .state')]"
            ".map(r => r.textContent)"
        )
        assert labels == ["to review"] * 3
        proposed = [row for row in mask_rows(campaign, DOG) if row["origin"] == "prefilled"]
        first, second, third = (row["mask_id"] for row in proposed)
        assert _selected_mask_id(page) == first  # the first mask to review is selected
        page.press("k")
        assert _selected_mask_id(page) == second
        page.press("x")
        assert _selected_mask_id(page) == third
        page.press("c")  # correct: the work layer starts from the proposed mask
        start = _decoded(proposed[2])
        assert np.array_equal(page.work_mask(), start)
        page.press("b")
        page.js("document.getElementById('brush-size').value = 9")
        page.js("document.getElementById('brush-size').dispatchEvent(new Event('input'))")
        ys, xs = np.nonzero(start)
        row = int(ys.min()) - 12  # a stroke just above the mask
        page.drag([(int(xs.min()), row), (int(xs.max()), row)])
        corrected = page.work_mask()
        page.shot("02-correcting")
        assert not (start & ~corrected).any() and corrected[row, xs.min() + 5 : xs.max() - 5].all()
        page.press(Keys.ENTER)
        page.wait_saved()
        page.press("v")
        page.click(700, 480)  # a missing object, added as a new mask
        page.accept()
        page.wait_saved()
        page.press("f")
        page.wait_saved()
        page.shot("03-finished")
    rows = {row["mask_id"]: row for row in mask_rows(campaign, DOG)}
    assert [rows[i]["state"] for i in (first, second, third)] == ["kept", "rejected", "corrected"]
    correction = [r for r in rows.values() if r["corrects"] == third]
    assert len(correction) == 1 and correction[0]["brush_strokes"] == 1
    assert np.array_equal(_decoded(correction[0]), corrected)
    added = [r for r in rows.values() if r["origin"] == "manual" and r["corrects"] is None]
    assert len(added) == 1
    with campaign.db.read() as db:
        reviews = db.execute("SELECT mask_id, verdict, seconds FROM reviews").fetchall()
    assert {(r["mask_id"], r["verdict"]) for r in reviews} == {
        (first, "keep"),
        (second, "reject"),
        (third, "correct"),
    }
    assert all(r["seconds"] > 0 for r in reviews)
    report = audit_report(campaign, predicted_iou_bins=[0.0, 1.0], stability_bins=[0.0, 1.0])
    iou = (start & corrected).sum() / (start | corrected).sum()
    expected_09 = (1 + (iou > 0.9)) / 3  # kept (IoU 1), corrected, rejected (0)
    assert (report["masks"], report["images"], report["added"]) == (3, 1, 1)
    assert report["iou_gt_0_9"] == pytest.approx(expected_09)
    assert report["rejected"] == pytest.approx(1 / 3)


def test_verify_one_key_per_mask_then_the_next_image(browser) -> None:
    driver, folder, template_dir = browser
    campaign = _review_campaign(template_dir, folder / "verify", "verify", (DOG, GROCERIES))
    token = add_annotator(campaign, "verifier")
    with served(campaign) as url:
        page = Page(driver, url, "verify")
        page.open(NO_WARNINGS)  # the warnings are tested in test_webapp_annotate
        page.sign_in(token)
        page.wait(lambda: page.body("ready") == "1", "the first mask to verify")
        assert page.body("mode") == "verify" and page.body("image") == str(DOG)
        page.shot("01-first-mask")
        drawn = page.canvas_mask("masks-layer")
        proposed = {row["mask_id"]: row for row in mask_rows(campaign, DOG)}
        shown = int(page.body("item"))
        assert np.array_equal(drawn, _decoded(proposed[shown]))  # only the mask asked about
        answers = []
        for key in ("y", "m", "n", "y"):  # the second answer carries "something is missing"
            before = page.body("item")
            page.press(key)
            if key != "m":
                answers.append(int(before))
                page.wait(lambda before=before: page.body("item") != before, "the next mask")
        assert page.body("image") == str(GROCERIES)  # DOG finished by its last answer
        page.shot("02-next-image")
        page.wait_saved()
    with campaign.db.read() as db:
        reviews = db.execute(
            "SELECT mask_id, verdict, missing FROM reviews ORDER BY review_id"
        ).fetchall()
        dog = db.execute("SELECT status FROM images WHERE image_id = ?", (DOG,)).fetchone()
    assert [(r["mask_id"], r["verdict"], r["missing"]) for r in reviews] == [
        (answers[0], "keep", 0),
        (answers[1], "reject", 1),
        (answers[2], "keep", 0),
    ]
    assert dog["status"] == "done"
