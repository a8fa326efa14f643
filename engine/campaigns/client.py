"""An HTTP client of the campaign API, as the browser app uses it, for scripted annotators:
requests are retried on connection errors (a restarted server) with the same client ids,
so a retried submission never makes a second mask, and after the server's Retry-After when
it answers 429 (over the token's request rate)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

RETRY_FOR_S = 120.0


class ApiError(RuntimeError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


class CampaignClient:
    def __init__(self, url: str, token: str, *, timeout_s: float = 60.0) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; connection failures are retried for RETRY_FOR_S seconds."""
        deadline = time.monotonic() + RETRY_FOR_S
        delay = 0.2
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if response.status_code == 429 and time.monotonic() < deadline:
                time.sleep(_retry_after_s(response))
                continue
            if response.status_code >= 400 and response.status_code != 409:
                raise ApiError(response.status_code, _detail(response))
            return response

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.request(method, path, **kwargs)
        if response.status_code == 409:
            raise ApiError(409, _detail(response))
        result: dict[str, Any] = response.json()
        return result

    def lease(self, poll_s: float = 1.0) -> dict[str, Any] | None:
        """The next lease; waits while images are still being prepared (stage-2 images
        waiting for their prefill); None when the queue is empty."""
        while True:
            answer = self.json("POST", "/api/lease")
            if answer["lease"] is not None or not answer.get("waiting"):
                lease: dict[str, Any] | None = answer["lease"]
                return lease
            time.sleep(poll_s)

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.json("POST", "/api/masks", json={"client_id": new_client_id(), **body})


def new_client_id() -> str:
    return uuid.uuid4().hex


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return response.text[:200]


def _retry_after_s(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "1")), 0.1), 30.0)
    except ValueError:
        return 1.0
