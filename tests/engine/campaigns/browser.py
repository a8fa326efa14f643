"""Driving the annotation page in a real headless Chromium (Debian's chromium and
chromium-driver, installed by the test setup) with Selenium: real pointer and key events,
the page's canvases read back as masks, a screenshot per step kept as a test artefact in
outputs/test-artifacts/webapp/."""

from __future__ import annotations

import base64
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.actions.mouse_button import MouseButton
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "outputs" / "test-artifacts" / "webapp"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# The page without its warnings before accepting (a mask the model is unsure of, or one
# nearly repeating another): for tests of other things, whatever the bundled model scores.
NO_WARNINGS = "?warn_iou=0&warn_repeat=2"
QUIET_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)

# Reads a canvas's alpha channel as 0/1 bytes (base64), with its size.
_CANVAS_ALPHA = """
const canvas = document.getElementById(arguments[0]);
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
const bits = new Uint8Array(canvas.width * canvas.height);
for (let i = 0; i < bits.length; i += 1) bits[i] = data[4 * i + 3] > 0 ? 1 : 0;
let text = "";
for (let i = 0; i < bits.length; i += 8192) {
  text += String.fromCharCode(...bits.subarray(i, i + 8192));
}
return [canvas.width, canvas.height, btoa(text)];
"""


def start_chromium(profile: Path) -> webdriver.Chrome:
    """Headless Chromium with a fresh profile; fails with what to install when missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"{missing} missing: run web/install-browser.sh (make .venv-test/.ready)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*QUIET_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


class Page:
    """The annotation page in one browser, for one test module (screenshots named
    <prefix>-<step>.png; a module's earlier screenshots are removed)."""

    def __init__(self, driver: webdriver.Chrome, url: str, prefix: str) -> None:
        self.driver, self.url, self.prefix = driver, url, prefix
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for old in ARTIFACTS.glob(f"{prefix}-*.png"):
            old.unlink()

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, condition: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.1)
        self.shot(f"timeout-{what.replace(' ', '-')}")
        raise AssertionError(f"timed out waiting for {what}; page says: {self.message()!r}")

    def body(self, name: str) -> str | None:
        value: str | None = self.js(f"return document.body.dataset.{name} ?? null")
        return value

    def open(self, query: str = "") -> None:
        self.driver.get(f"{self.url}/{query}")

    def sign_in(self, token: str) -> None:
        field = self.wait(lambda: self._visible("token"), "the sign-in form")
        field.send_keys(token + "\n")

    def _visible(self, element_id: str) -> Any:
        found = self.driver.find_elements(By.ID, element_id)
        return found[0] if found and found[0].is_displayed() else None

    def wait_ready(self, image_id: int | None = None, timeout_s: float = 90) -> None:
        def ready() -> bool:
            if self.body("ready") != "1":
                return False
            return image_id is None or self.body("image") == str(image_id)

        self.wait(ready, f"image {image_id or ''} ready to annotate", timeout_s)
        self.wait_idle()

    def wait_idle(self) -> None:
        self.wait(lambda: self.body("decoding") in ("0", None), "the decoder")

    def wait_saved(self) -> None:
        self.wait(lambda: self.body("outbox") == "0", "the changes to be saved")

    def message(self) -> str:
        text: str = self.js("return document.getElementById('message').textContent")
        return text

    # Input: real pointer and key events through ChromeDriver ---------------------------

    def client(self, x: float, y: float) -> tuple[int, int]:
        """Viewport coordinates of stored-image pixel (x, y)'s centre, from where the image
        layer lies on screen (its bounding box) and the stored size."""
        left, top, width, height = self.js(
            "const r = document.getElementById('image-layer').getBoundingClientRect();"
            "return [r.left, r.top, r.width, r.height]"
        )
        stored_w, stored_h = self.js(
            "const i = window.saengine.app.lease.image; return [i.width, i.height]"
        )
        return round(left + (x + 0.5) * width / stored_w), round(
            top + (y + 0.5) * height / stored_h
        )

    def middle_drag(self, dx: int, dy: int) -> None:
        """Pan: drag with the middle button from the viewport's centre."""
        left, top, width, height = self.js(
            "const r = document.getElementById('viewport').getBoundingClientRect();"
            "return [r.left, r.top, r.width, r.height]"
        )
        start = (round(left + width / 2), round(top + height / 2))
        actions = ActionBuilder(self.driver)
        actions.pointer_action.move_to_location(*start)
        actions.pointer_action.pointer_down(MouseButton.MIDDLE)
        actions.pointer_action.move_to_location(start[0] + dx, start[1] + dy)
        actions.pointer_action.pointer_up(MouseButton.MIDDLE)
        actions.perform()

    def click(self, x: float, y: float, *, right: bool = False, alt: bool = False) -> None:
        actions = ActionBuilder(self.driver)
        actions.pointer_action.move_to_location(*self.client(x, y))
        if alt:
            actions.key_action.key_down("\ue00a")
        button = MouseButton.RIGHT if right else MouseButton.LEFT
        actions.pointer_action.pointer_down(button).pointer_up(button)
        if alt:
            actions.key_action.key_up("\ue00a")
        actions.perform()
        self.wait_idle()

    def drag(self, points: list[tuple[float, float]]) -> None:
        actions = ActionBuilder(self.driver)
        actions.pointer_action.move_to_location(*self.client(*points[0]))
        actions.pointer_action.pointer_down(MouseButton.LEFT)
        for point in points[1:]:
            actions.pointer_action.move_to_location(*self.client(*point))
        actions.pointer_action.pointer_up(MouseButton.LEFT)
        actions.perform()
        self.wait_idle()

    def accept(self) -> None:
        """Enter, then wait for the accepted mask to join the image's list."""
        count = "return document.querySelectorAll('#mask-list .mask-row').length"
        before = self.js(count)
        self.press(Keys.ENTER)
        self.wait(lambda: self.js(count) > before, "the accepted mask in the list")

    def press(self, *keys: str) -> None:
        ActionChains(self.driver).send_keys(*keys).perform()
        self.wait_idle()

    # Reading the page back ------------------------------------------------------------

    def canvas_mask(self, canvas_id: str) -> np.ndarray:
        """A layer's painted pixels (alpha > 0) as an H x W bool array."""
        width, height, data = self.js(_CANVAS_ALPHA, canvas_id)
        return np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width).astype(bool)

    def work_mask(self) -> np.ndarray:
        return self.canvas_mask("work-layer")

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.js("return window.saengine.stats()")
        return stats

    def shot(self, step: str) -> Path:
        path = ARTIFACTS / f"{self.prefix}-{step}.png"
        self.driver.save_screenshot(str(path))
        return path

    def console(self) -> list[str]:
        return [f"{e['level']} {e['message']}" for e in self.driver.get_log("browser")]


def machine() -> dict[str, Any]:
    """This machine, for results files."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform()}
