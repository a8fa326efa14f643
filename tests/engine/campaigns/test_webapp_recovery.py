"""The annotation page when things go wrong, in a real headless Chromium: an answer lost on
the way back (the page sends the mask again with the same client id: one mask stored), no
connection at all (the mask waits in the page and is sent when the link is back), and a
lease that expired while the page was cut off (its message, and the mask accepted meanwhile
sent once the image is leased again)."""

from __future__ import annotations

import json
import time

import pytest
from selenium.webdriver.common.by import By

from tests.engine.campaigns.browser import NO_WARNINGS, Page, start_chromium
from tests.engine.campaigns.proxy import LossyProxy
from tests.engine.campaigns.webapp import (
    DOG,
    add_annotator,
    copy_campaign,
    mask_rows,
    served,
    template,
)

pytestmark = pytest.mark.slow

LEASE_TTL_S = 15.0  # heartbeats every 5 s; short enough to let one run out
LOST_ANSWERS = 2  # a transparent resend by the browser, if any, loses its answer too


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("recovery")
    made = template(tmp_path_factory)
    campaign = copy_campaign(made, folder / "campaign", lease_ttl_s=LEASE_TTL_S)
    token = add_annotator(campaign, "bo")
    lost: list[str] = []

    def drop(method: str, path: str) -> bool:
        if method == "POST" and path == "/api/masks" and len(lost) < LOST_ANSWERS:
            lost.append(path)
            return True
        return False

    with served(campaign) as url:
        proxy = LossyProxy(url, drop)
        driver = start_chromium(folder / "profile")
        try:
            page = Page(driver, proxy.url, "recovery")
            page.open(NO_WARNINGS)
            page.sign_in(token)
            page.wait_ready(DOG)
            yield page, campaign, proxy
        finally:
            driver.quit()
            proxy.close()


def _offline(page: Page, offline: bool) -> None:
    page.driver.execute_cdp_cmd("Network.enable", {})
    conditions = {
        "offline": offline,
        "latency": 0,
        "downloadThroughput": -1,
        "uploadThroughput": -1,
    }
    page.driver.execute_cdp_cmd("Network.emulateNetworkConditions", conditions)


def _submissions(proxy: LossyProxy) -> list[str]:
    return [
        json.loads(body)["client_id"]
        for method, path, body in proxy.requests
        if (method, path) == ("POST", "/api/masks")
    ]


def test_a_lost_answer_is_retried_without_a_duplicate(page) -> None:
    page, campaign, proxy = page
    page.click(520, 390)
    page.accept()
    page.wait_saved()
    page.shot("01-lost-answer-retried")
    sent = _submissions(proxy)
    assert len(sent) >= LOST_ANSWERS + 1 and len(set(sent)) == 1  # the same id each time
    (row,) = mask_rows(campaign, DOG)
    assert row["client_id"] == sent[0]
    assert page.js("return document.querySelectorAll('#mask-list .saved').length") == 1


def test_a_mask_accepted_offline_waits_and_is_sent(page) -> None:
    page, campaign, _ = page
    page.click(250, 420)
    _offline(page, True)
    page.accept()
    notice = "return document.getElementById('connection').innerText"
    page.wait(lambda: "Connection lost" in page.js(notice), "the connection notice")
    assert "1 change waits in this page" in page.js(notice)
    assert page.body("outbox") == "1" and "waiting" in page.js(
        "return document.getElementById('outbox-status').textContent"
    )
    page.shot("02-offline-waiting")
    time.sleep(2)
    assert len(mask_rows(campaign, DOG)) == 1
    _offline(page, False)
    page.wait_saved()
    assert len(mask_rows(campaign, DOG)) == 2
    page.wait(
        lambda: page.js(
            "return document.getElementById('connection').classList.contains('hidden')"
        ),
        "the connection notice to go",
    )


def test_an_expired_lease_shows_its_message_and_keeps_the_accepted_mask(page) -> None:
    page, campaign, _ = page
    lease_before = page.body("lease")
    page.click(130, 150)
    _offline(page, True)
    page.accept()
    time.sleep(LEASE_TTL_S + 3)  # no heartbeat reaches the server: the lease runs out
    _offline(page, False)
    expired = "Your lease on this image expired"
    page.wait(lambda: expired in page.message(), "the expired-lease message", timeout_s=30)
    page.shot("03-lease-expired")
    assert page.body("ready") is None  # no more editing on an image no longer held
    page.wait(lambda: "kept in this page" in page.message(), "the held mask's notice")
    assert len(mask_rows(campaign, DOG)) == 2  # refused: the lease had ended
    button = page.driver.find_element(By.XPATH, "//button[text()='Lease an image']")
    button.click()
    page.wait_ready(DOG)  # back in the queue, and first in it: leased again
    assert page.body("lease") != lease_before
    page.wait_saved()
    rows = mask_rows(campaign, DOG)
    assert len(rows) == 3 and len({row["client_id"] for row in rows}) == 3
    page.shot("04-leased-again")
