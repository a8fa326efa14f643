"""The annotation page in a real headless Chromium against a real `saengine campaign serve`
on a campaign made by `saengine campaign create` (bundled photos, bundled model): prompts
draw masks read back from the canvas, brush and eraser change exactly their pixels, undo
and redo restore, an accepted mask is stored as our torch model makes it for the same
prompts, reloads lose nothing, finishing shows the prefetched next image, and the page's
own decode times are written to a results file."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from selenium.webdriver.common.keys import Keys

from engine.campaigns.campaign import Campaign
from engine.models import load_model
from model import SamPredictor
from tests.engine.campaigns.browser import (
    ARTIFACTS,
    NO_WARNINGS,
    Page,
    machine,
    start_chromium,
)
from tests.engine.campaigns.webapp import (
    DOG,
    GROCERIES,
    TRUCK,
    add_annotator,
    copy_campaign,
    mask_rows,
    served,
    stored_rgb,
    template,
)

pytestmark = pytest.mark.slow
HELD_EMBEDDING: dict[str, object] = {}  # the truck's embedding row, until the test gives it back


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("annotate")
    campaign = copy_campaign(template(tmp_path_factory), folder / "campaign")
    token = add_annotator(campaign, "ana")
    with campaign.db.write() as db:  # the truck waits for its embedding (given back below)
        truck = dict(db.execute("SELECT * FROM embeddings WHERE image_id = ?", (TRUCK,)).fetchone())
        db.execute("DELETE FROM embeddings WHERE image_id = ?", (TRUCK,))
    HELD_EMBEDDING.update(truck)
    with served(campaign) as url:
        driver = start_chromium(folder / "profile")
        try:
            page = Page(driver, url, "annotate")
            page.open(NO_WARNINGS)  # the warnings are tested on their own, at the end
            page.sign_in(token)
            page.wait_ready(DOG)
            yield page, campaign
        finally:
            driver.quit()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _torch_chain(campaign: Campaign, image_id: int, steps: list[dict[str, object]]) -> np.ndarray:
    """Our torch model on the same prompts, one step per click as the page makes them: a
    single point gives the multimask output with the best predicted IoU, later steps the
    single-mask output, each fed the previous step's low-res logits."""
    predictor = SamPredictor(load_model("vit_mini", "bundled"))
    predictor.set_image(stored_rgb(campaign, image_id))
    previous = None
    for step in steps:
        points = np.array(step["points"], float).reshape(-1, 3)
        box = None if step.get("box") is None else np.array(step["box"], float)
        single_point = len(points) == 1 and box is None
        masks, iou, low = predictor.predict(
            point_coords=points[:, :2] if len(points) else None,
            point_labels=points[:, 2] if len(points) else None,
            box=box,
            mask_input=None if previous is None else previous[None],
            multimask_output=single_point,
        )
        best = int(np.argmax(iou)) if single_point else 0
        mask, previous = masks[best], low[best]
    return mask


def _stored_mask(row) -> np.ndarray:
    rle = {"size": [row["height"], row["width"]], "counts": row["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def _progress(page: Page) -> str:
    text: str = page.js("return document.getElementById('progress').textContent")
    return text


def _enabled(page: Page) -> set[str]:
    return set(
        page.js(
            "return [...document.querySelectorAll('#toolbar [data-action]')]"
            ".filter(b => !b.disabled).map(b => b.dataset.action)"
        )
    )


def test_progress_and_a_first_hint_once_the_image_is_ready(page) -> None:
    page, _ = page
    assert _progress(page) == "image 1 of 3 · 3 left"
    assert "Click an object" in page.message()
    assert {"finishImage", "toolBrush"} <= _enabled(page)
    assert not {"accept", "undo", "skipObject", "clear"} & _enabled(page)  # nothing to do yet
    page.shot("00-first-hint")
    page.click(520, 390)
    assert "Click an object" not in page.message()
    assert {"accept", "undo", "clear"} <= _enabled(page)
    page.press(Keys.ESCAPE, Keys.ESCAPE)  # start over, then forget the object


def test_help_lists_a_shortcut_for_every_button(page) -> None:
    page, _ = page
    page.press("h")
    help_text = page.js("return document.getElementById('help').innerText")
    assert page.js("return !document.getElementById('help').classList.contains('hidden')")
    page.shot("01-help")
    buttons = page.js(
        "return [...document.querySelectorAll('#toolbar [data-action]')].map(b => b.dataset.action)"
    )
    shortcuts = page.driver.execute_async_script(
        "const done = arguments[0];"
        "import('./js/keys.js').then(m => done(m.SHORTCUTS.map(s => [s.action, s.keys, s.label])));"
    )
    actions = {action for action, _, _ in shortcuts}
    assert set(buttons) <= actions, set(buttons) - actions
    for _, keys, label in shortcuts:
        assert keys and label in help_text
    page.press("h")
    assert page.js("return document.getElementById('help').classList.contains('hidden')")


def test_points_and_box_draw_masks_and_undo_restores(page) -> None:
    page, _ = page
    page.shot("02-image")
    assert not page.work_mask().any()
    page.click(520, 390)
    first = page.work_mask()
    assert first.shape == (534, 800) and first[390, 520] and first.sum() > 500
    page.shot("03-foreground-point")
    page.press(Keys.TAB)
    second = page.work_mask()
    assert not np.array_equal(first, second)  # the next of the three multimask outputs
    page.press(Keys.TAB, Keys.TAB)
    assert np.array_equal(page.work_mask(), first)  # three outputs, cycled back
    page.click(700, 300, right=True)
    with_background = page.work_mask()
    assert not np.array_equal(with_background, first)
    page.shot("04-background-point")
    page.press("z")
    assert np.array_equal(page.work_mask(), first)
    page.press("y")
    assert np.array_equal(page.work_mask(), with_background)
    page.press(Keys.ESCAPE)
    assert not page.work_mask().any()
    page.drag([(440, 250), (520, 330), (640, 470)])
    boxed = page.work_mask()
    assert boxed.any() and not np.array_equal(boxed, first)
    page.shot("05-box")
    page.press(Keys.ESCAPE)


def test_brush_and_eraser_change_exactly_their_pixels(page) -> None:
    page, _ = page
    page.click(520, 390)
    base = page.work_mask()
    page.press("b")
    page.js("document.getElementById('brush-size').value = 9")
    page.js("document.getElementById('brush-size').dispatchEvent(new Event('input'))")
    free = [r for r in range(20, 514) if not base[r - 8 : r + 9, 90:310].any()]
    row = free[len(free) // 2]  # rows the mask leaves free around the stroke
    page.drag([(100, row), (200, row), (300, row)])
    brushed = page.work_mask()
    added = brushed & ~base
    assert not (base & ~brushed).any()  # the brush only adds
    assert added[row, 105:296].all()
    assert not added[: row - 6].any() and not added[row + 7 :].any()  # a 9-pixel band
    assert 9 * 190 < added.sum() < 9 * 215
    page.shot("06-brush")
    page.press("e")
    column = int(np.argmax(brushed.sum(axis=0)))
    top, bottom = np.nonzero(brushed[:, column])[0][[0, -1]]
    page.drag([(column, top - 10), (column, bottom + 10)])
    erased = page.work_mask()
    assert not (erased & ~brushed).any()  # the eraser only removes
    assert not erased[:, column].any()
    assert (brushed & ~erased)[:, : column - 6].sum() == 0
    page.shot("07-eraser")
    page.press("z")
    assert np.array_equal(page.work_mask(), brushed)
    page.press("z")
    assert np.array_equal(page.work_mask(), base)
    page.press("v", Keys.ESCAPE, Keys.ESCAPE)


def test_accepted_mask_is_what_our_torch_model_makes(page) -> None:
    page, campaign = page
    page.click(520, 390)
    page.click(250, 420)
    page.click(700, 300, right=True)
    shown = page.work_mask()
    page.accept()
    page.wait_saved()
    page.shot("08-accepted")
    assert not page.work_mask().any()  # the next object starts empty
    (row,) = mask_rows(campaign, DOG)
    prompts = json.loads(row["prompts"])
    assert prompts == {"points": [[520, 390, 1], [250, 420, 1], [700, 300, 0]], "box": None}
    assert (row["clicks"], row["brush_strokes"], row["origin"]) == (3, 0, "manual")
    assert 0 < row["seconds"] < 120 and row["predicted_iou"] is not None
    stored = _stored_mask(row)
    assert np.array_equal(stored, shown)  # work size = stored size for this image
    points = prompts["points"]
    expected = _torch_chain(campaign, DOG, [{"points": points[: i + 1]} for i in range(3)])
    assert _iou(stored, expected) >= 0.99
    drawn = page.canvas_mask("masks-layer")
    assert _iou(drawn, stored) > 0.99
    assert page.js("return document.querySelectorAll('#mask-list .mask-row.saved').length") == 1


def test_reload_in_the_middle_of_an_object_loses_nothing(page) -> None:
    page, campaign = page
    page.drag([(60, 60), (330, 200)])
    page.accept()
    page.click(130, 150)
    page.click(200, 100)
    in_progress = page.work_mask()
    page.wait_saved()
    accepted = page.canvas_mask("masks-layer")
    page.driver.refresh()
    page.wait_ready(DOG)
    page.shot("09-after-reload")
    assert np.array_equal(page.canvas_mask("masks-layer"), accepted)
    assert np.array_equal(page.work_mask(), in_progress)  # the object's clicks replayed
    assert len(mask_rows(campaign, DOG)) == 2
    page.press(Keys.ESCAPE)


def test_delete_one_of_the_image_masks(page) -> None:
    page, campaign = page
    box_mask = _stored_mask(mask_rows(campaign, DOG)[1])
    ys, xs = np.nonzero(box_mask & ~_stored_mask(mask_rows(campaign, DOG)[0]))
    page.click(int(xs[len(xs) // 2]), int(ys[len(ys) // 2]), alt=True)
    assert page.js("return document.querySelectorAll('#mask-list .selected').length") == 1
    page.press(Keys.DELETE)
    page.wait_saved()
    states = [row["state"] for row in mask_rows(campaign, DOG)]
    assert states == ["accepted", "deleted"]
    assert not (
        page.canvas_mask("masks-layer") & box_mask & ~_stored_mask(mask_rows(campaign, DOG)[0])
    ).any()


def test_zoom_and_pan_keep_clicks_on_their_pixel(page) -> None:
    page, campaign = page
    fitted = page.js("return document.getElementById('image-layer').getBoundingClientRect().width")
    page.press("+", "+", "+")
    zoomed = page.js("return document.getElementById('image-layer').getBoundingClientRect().width")
    assert zoomed == pytest.approx(fitted * 1.25**3, rel=0.01)
    before = page.js("return document.getElementById('image-layer').getBoundingClientRect().left")
    page.middle_drag(-120, 0)
    after = page.js("return document.getElementById('image-layer').getBoundingClientRect().left")
    assert after == pytest.approx(before - 120, abs=2)
    page.click(613, 287)  # at about 2 screen pixels per image pixel: exactly this pixel
    page.shot("10-zoomed")
    assert (
        json.loads(page.js("return sessionStorage.getItem('saengine.object.1')"))["actions"][0]["x"]
        == 613
    )
    page.press("0", Keys.ESCAPE, Keys.ESCAPE)
    width = page.js("return document.getElementById('image-layer').getBoundingClientRect().width")
    assert width == pytest.approx(fitted, rel=0.001)


def test_skip_object_after_the_time_hint(page) -> None:
    page, campaign = page
    page.click(400, 480)
    assert page.js("return document.getElementById('timer-hint').classList.contains('hidden')")
    page.js("window.saengine.app.bench.editor.startedAt -= 31000")  # as if 31 s went by
    page.wait(
        lambda: (
            not page.js("return document.getElementById('timer-hint').classList.contains('hidden')")
        ),
        "the hint to move on",
    )
    assert "30 s" in page.js("return document.getElementById('timer-hint').textContent")
    page.shot("11-move-on-hint")
    page.press("s")
    page.wait_saved()
    assert not page.work_mask().any()
    with campaign.db.read() as db:
        (event,) = db.execute("SELECT * FROM events WHERE kind = 'skip_object'").fetchall()
    assert event["image_id"] == DOG and event["clicks"] == 1 and 31 <= event["seconds"] < 120
    assert json.loads(event["detail"])["prompts"]["points"] == [[400, 480, 1]]


def test_finish_shows_the_prefetched_next_image(page) -> None:
    page, campaign = page
    started = time.monotonic()
    page.press("f")
    page.wait_ready(GROCERIES)
    switch_s = time.monotonic() - started
    page.shot("12-next-image")
    assert _progress(page) == "image 2 of 3 · 2 left"
    page.wait_saved()
    with campaign.db.read() as db:
        status = db.execute("SELECT status FROM images WHERE image_id = ?", (DOG,)).fetchone()[0]
    assert status == "done"
    fetched = page.js(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => n.includes('/api/images/2/') || n.includes('decoder.onnx'))"
    )
    assert sum("/api/images/2/embedding" in n for n in fetched) == 1  # fetched once, ahead
    assert sum("/api/images/2/image" in n for n in fetched) == 1
    assert sum("decoder.onnx" in n for n in fetched) == 1  # one decoder for both images
    assert switch_s < 10


def test_waiting_for_an_embedding_shows_the_time_and_an_estimate(page) -> None:
    """The truck's embedding is not computed: the page says how long it has waited and the
    server's estimate, and no control looks usable until the image is ready."""
    page, campaign = page
    page.press("f")
    page.wait(lambda: page.body("image") == str(TRUCK), "the truck on screen")
    page.wait(lambda: "s so far" in page.message(), "the waiting message")
    time.sleep(1.2)
    waiting = page.message()
    assert "embedding" in waiting and "no estimate" not in waiting
    assert ("about" in waiting and "s more" in waiting) or "any moment" in waiting, waiting
    assert _enabled(page) == {"help"}
    page.shot("13-waiting-for-the-embedding")
    held = HELD_EMBEDDING
    with campaign.db.write() as db:
        db.execute(
            f"INSERT INTO embeddings ({', '.join(held)}) VALUES ({', '.join('?' * len(held))})",
            tuple(held.values()),
        )
    page.wait_ready(TRUCK)
    assert "finishImage" in _enabled(page) and "accept" not in _enabled(page)
    assert _progress(page) == "image 3 of 3 · 1 left"
    page.wait(lambda: not page.message(), "the messages to go")  # the layout settles


def test_large_image_masks_are_submitted_at_the_stored_size(page) -> None:
    page, campaign = page
    assert page.stats()["workSizes"][-1] == [683, 1024]
    page.drag([(300, 250), (900, 600), (1500, 1000)])
    page.click(900, 600)
    assert page.work_mask().shape == (683, 1024)
    page.accept()
    page.wait_saved()
    page.shot("14-large-image")
    (row,) = mask_rows(campaign, TRUCK)
    assert (row["height"], row["width"]) == (1200, 1800)
    prompts = json.loads(row["prompts"])  # where the pointer landed, at about 2 pixels a dot
    assert np.allclose(prompts["points"], [[900, 600, 1]], atol=2)
    assert np.allclose(prompts["box"], [300, 250, 1500, 1000], atol=2)
    steps = [{"points": [], "box": prompts["box"]}, prompts]
    expected = _torch_chain(campaign, TRUCK, steps)
    assert _iou(_stored_mask(row), expected) >= 0.99


def test_decode_times_are_measured_and_recorded(page) -> None:
    """Twelve clicks (objects of three points) on the truck; the page's own decode times."""
    page, _ = page
    before = len(page.stats()["decodeMs"])
    for index, (x, y) in enumerate([(900, 600), (500, 800), (1400, 300)] * 4):
        page.click(x + index, y - index, right=index % 3 == 2)
        if index % 3 == 2:
            page.press(Keys.ESCAPE)
    stats = page.stats()
    times = stats["decodeMs"][before:]
    assert len(times) == 12 and all(0 < t < 5000 for t in times)
    result = {
        "what": "decode time per click in the page (performance.now around the onnxruntime run)",
        "model": "bundled (vit_mini)",
        "image": "truck 1800 x 1200, decoded at the work size",
        "work_size": stats["workSizes"][-1],
        "decoder": "quantized" if stats["quantized"] else "fp32",
        "threads": stats["threads"],
        "cross_origin_isolated": stats["isolated"],
        "onnxruntime_web": stats["ort"],
        "browser": f"Chromium {page.driver.capabilities['browserVersion']} (headless)",
        "machine": machine(),
        "median_ms": round(float(np.median(times)), 1),
        "all_ms": [round(t, 1) for t in times],
    }
    (ARTIFACTS / "decode_latency.json").write_text(json.dumps(result, indent=2))
    assert stats["isolated"] and stats["threads"] >= 1


def _checks(page: Page, *, warn_iou: float, duplicate_iou: float) -> None:
    """The page's thresholds for warnings before accepting (as if the model were that sure)."""
    page.js(
        "Object.assign(window.saengine.app.limits, "
        "{warnIou: arguments[0], duplicateIou: arguments[1]})",
        warn_iou,
        duplicate_iou,
    )


def test_clear_then_accept_counts_the_whole_object(page) -> None:
    """Esc starts the object over: its clicks and time still count for the mask accepted."""
    page, campaign = page
    _checks(page, warn_iou=0, duplicate_iou=2)
    page.press(Keys.ESCAPE)  # forget what the test before left
    before = len(mask_rows(campaign, TRUCK))
    page.click(500, 800)
    page.click(1400, 300, right=True)
    first = time.monotonic()
    time.sleep(1.5)
    page.press(Keys.ESCAPE)
    assert not page.work_mask().any()
    page.click(900, 600)
    page.accept()
    page.wait_saved()
    row = mask_rows(campaign, TRUCK)[-1]
    assert len(mask_rows(campaign, TRUCK)) == before + 1
    assert row["clicks"] == 3 and 1.5 <= row["seconds"] <= time.monotonic() - first + 1
    assert json.loads(row["prompts"])["points"] == [[900, 600, 1]]  # the mask's own prompts


def test_an_unsure_or_repeated_mask_warns_before_it_is_accepted(page) -> None:
    page, campaign = page
    count = "return document.querySelectorAll('#mask-list .mask-row').length"
    for step, limits in enumerate(
        ({"warn_iou": 2.0, "duplicate_iou": 2}, {"warn_iou": 0, "duplicate_iou": 0.9})
    ):
        _checks(page, **limits)
        before, rows = page.js(count), len(mask_rows(campaign, TRUCK))
        page.click(500, 800)  # the same object twice: the second nearly repeats the first
        page.press(Keys.ENTER)
        expected = "predicted IoU" if step == 0 else "nearly repeats mask #"
        page.wait(lambda expected=expected: expected in page.message(), "the warning")
        page.shot(f"15-warning-{step}")
        assert "Enter accepts it anyway" in page.message()
        time.sleep(0.5)
        assert page.js(count) == before and len(mask_rows(campaign, TRUCK)) == rows
        page.accept()  # one more Enter
        page.wait_saved()
        assert len(mask_rows(campaign, TRUCK)) == rows + 1
    _checks(page, warn_iou=0, duplicate_iou=2)


def test_finishing_the_last_image_leaves_no_image_on_screen(page) -> None:
    page, campaign = page
    page.press("f")
    page.wait(lambda: "No images left" in page.message(), "the empty queue")
    page.wait_saved()
    page.shot("16-queue-empty")
    assert page.js("return getComputedStyle(document.getElementById('stage')).display") == "none"
    assert page.js("return document.getElementById('image-layer').width") == 0
    assert _progress(page) == "3 of 3 images done"
    assert _enabled(page) == {"help"}
    with campaign.db.read() as db:
        statuses = [row[0] for row in db.execute("SELECT status FROM images")]
    assert statuses == ["done"] * 3
