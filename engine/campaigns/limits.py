"""What one request may cost the campaign server, and the ASGI middleware that enforces it.

Every request is answered in bounded time and memory whatever its content: a connection
that has not sent its request headers within `header_timeout_s` is closed; a body over
`max_body_bytes` is refused (413) before anything is parsed, one that takes longer than
`body_timeout_s` to arrive gets a 408; each token (or, without one, each address) may make
`requests_per_s` requests a second with bursts of `burst` and hold `heavy_per_token` heavy
requests (mask submissions, image and embedding files, decoders, statistics) at once,
`heavy_total` on the whole server: over these the answer is a 429 with `Retry-After`.
`serve.limits.*` in configs/campaign_serve.yaml sets them. The cross-origin isolation headers
that let the page run the decoder multithreaded (SharedArrayBuffer needs COOP + COEP) are
added to every response here too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]

UNLIMITED_PATHS = ("/api/health",)
HEAVY = (
    ("POST", re.compile(r"^/api/masks$")),
    ("GET", re.compile(r"^/api/images/[^/]+/(image|embedding)$")),
    ("GET", re.compile(r"^/api/models/[^/]+/[^/]+$")),
    ("GET", re.compile(r"^/api/stats$")),
)
MAX_TRACKED_KEYS = 10_000


@dataclass(frozen=True)
class ServeLimits:
    """The server's limits (see the module docstring); `max_connections`: open connections
    before new requests get a 503 (uvicorn's limit_concurrency)."""

    max_body_bytes: int = 16 * 1024 * 1024  # an uncompressed RLE of a 3000 x 3000 mask fits
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    requests_per_s: float = 50.0
    burst: int = 200
    heavy_per_token: int = 8
    heavy_total: int = 32
    max_connections: int = 1000

    def __post_init__(self) -> None:
        counts = ("max_body_bytes", "burst", "heavy_per_token", "heavy_total", "max_connections")
        for name in counts:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"limits.{name} must be an integer >= 1, got {value!r}")
        for name in ("header_timeout_s", "body_timeout_s", "requests_per_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"limits.{name} must be a number > 0, got {value!r}")


# Responses sent by the middleware -----------------------------------------------------------


async def refuse(send: Send, status: int, detail: str, retry_after_s: int | None = None) -> None:
    """A {"detail": ...} refusal sent straight from the middleware."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """The whole request body read (at most `max_bytes`, within `timeout_s`) before the
    application sees it: 413 over the size (by Content-Length when given), 408 too slow."""

    def __init__(self, app: Any, *, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await refuse(send, 413, f"request body over {self.max_bytes} bytes")
            return
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout_s)
        except asyncio.TimeoutError:
            await refuse(send, 408, f"the request body took longer than {self.timeout_s:g} s")
            return
        if body is None:
            await refuse(send, 413, f"request body over {self.max_bytes} bytes")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # type: ignore[no-any-return]
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive: Any) -> bytes | None:
        """The body, or None once it passes max_bytes."""
        chunks, size = [], 0
        while True:
            message: Message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


class TokenBuckets:
    """A token bucket per key: `rate` requests a second, up to `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, at: float) -> float:
        """Take one request for `key`: 0 when allowed, else the seconds until it would be."""
        tokens, last = self.buckets.get(key, (float(self.burst), at))
        tokens = min(float(self.burst), tokens + (at - last) * self.rate)
        if tokens < 1:
            self.buckets[key] = (tokens, at)
            return (1 - tokens) / self.rate
        if len(self.buckets) >= MAX_TRACKED_KEYS and key not in self.buckets:
            self._forget_full(at)
        self.buckets[key] = (tokens - 1, at)
        return 0.0

    def _forget_full(self, at: float) -> None:
        """Drop the buckets that have refilled (they hold no state worth keeping)."""
        for key, (tokens, last) in list(self.buckets.items()):
            if tokens + (at - last) * self.rate >= self.burst:
                del self.buckets[key]


class RequestLimits:
    """Per-token request rate and concurrent heavy requests (per token and in all): 429
    with Retry-After over them. /api/health and the page's files are not limited."""

    def __init__(self, app: Any, *, limits: ServeLimits) -> None:
        self.app, self.limits = app, limits
        self.buckets = TokenBuckets(limits.requests_per_s, limits.burst)
        self.heavy: dict[str, int] = {}
        self.heavy_now = 0

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or not path.startswith("/api/") or path in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        key = caller_key(scope)
        wait = self.buckets.take(key, time.monotonic())
        if wait > 0:
            rate = f"{self.limits.requests_per_s:g} requests a second"
            await refuse(send, 429, f"too many requests (over {rate})", math.ceil(wait))
            return
        if not is_heavy(str(scope.get("method")), path):
            await self.app(scope, receive, send)
            return
        held = self.heavy.get(key, 0)
        if held >= self.limits.heavy_per_token or self.heavy_now >= self.limits.heavy_total:
            await refuse(send, 429, "too many heavy requests at once; try again", 1)
            return
        self.heavy[key], self.heavy_now = held + 1, self.heavy_now + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.heavy_now -= 1
            self.heavy[key] -= 1
            if not self.heavy[key]:
                del self.heavy[key]


def caller_key(scope: Scope) -> str:
    """Who a request counts against: its bearer token (hashed), else its address."""
    authorization = dict(scope.get("headers") or []).get(b"authorization")
    if authorization:
        return "token:" + hashlib.sha256(authorization).hexdigest()
    client = scope.get("client") or ("?", 0)
    return f"address:{client[0]}"


def is_heavy(method: str, path: str) -> bool:
    return any(method == verb and pattern.match(path) for verb, pattern in HEAVY)


ISOLATION = [
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-embedder-policy", b"require-corp"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class IsolationHeaders:
    """Cross-origin isolation on every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *ISOLATION]}
            await send(message)

        await self.app(scope, receive, with_headers)


def header_deadline_protocol(timeout_s: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's headers: a connection that
    has not sent a whole request head `timeout_s` after it opened (or after its previous
    answer) is closed, so slow or idle clients cannot hold connections open."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            self._arm()  # for the next request's head (a pipelined one disarms it at once)
            super().on_response_complete()

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:
                self._disarm()

        def _arm(self) -> None:
            self._disarm()
            self.deadline = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _expired(self) -> None:
            self.deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline
