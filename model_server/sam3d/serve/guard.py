"""The checks every request passes before the application reads a byte of its body (pure ASGI
middleware): Host allow-list, cross-origin refusal, the API key with 401s rate-limited per client
address, and body size limits (declared and actual)."""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from .errors import (APIError, HostNotAllowed, OriginNotAllowed, PayloadTooLarge, TooManyAuthFailures,
                     Unauthorized, send_error)

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = ("/v1/health",)  # answered without an API key
UPLOAD_PATH = "/v1/sessions"
REMEMBERED_ADDRESSES = 4096  # client addresses whose recent 401s are kept


@dataclass(frozen=True)
class GuardSettings:
    api_key: str | None
    allowed_hosts: tuple[str, ...]  # "*" allows any Host header
    cors_origins: tuple[str, ...]
    max_upload_bytes: int
    max_json_bytes: int
    auth_failures_per_minute: int


class AuthFailures:
    """Recent 401s per client address (sliding one-minute window, bounded memory)."""

    def __init__(self, limit: int, window_s: float = 60.0, clock=time.monotonic) -> None:
        self.limit, self.window_s, self._clock = int(limit), float(window_s), clock
        self._failures: OrderedDict[str, deque] = OrderedDict()
        self._lock = threading.Lock()

    def blocked(self, address: str) -> bool:
        with self._lock:
            times = self._failures.get(address)
            if times is None:
                return False
            while times and self._clock() - times[0] > self.window_s:
                times.popleft()
            return len(times) >= self.limit

    def add(self, address: str) -> None:
        with self._lock:
            times = self._failures.setdefault(address, deque())
            self._failures.move_to_end(address)
            times.append(self._clock())
            while len(times) > self.limit:
                times.popleft()
            while len(self._failures) > REMEMBERED_ADDRESSES:
                self._failures.popitem(last=False)


def host_name(host_header: str) -> str:
    """'name:port' / '[::1]:port' -> the name, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """ASGI middleware answering refused requests itself, before the app reads the body."""

    def __init__(self, app, settings: GuardSettings) -> None:
        self.app = app
        self.settings = settings
        self.failures = AuthFailures(settings.auth_failures_per_minute)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            limit = self._check(scope)
        except APIError as error:
            return await send_error(scope, send, error)
        await self.app(scope, _limited(receive, limit), send)

    def _check(self, scope) -> int:
        """Raise the first refusal; return the body limit of this request."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        settings = self.settings
        if "*" not in settings.allowed_hosts and host_name(headers.get("host", "")) not in settings.allowed_hosts:
            raise HostNotAllowed(f"this server does not serve the host name {headers.get('host', '')[:100]!r}")
        origin = headers.get("origin")
        same_origin = origin is not None and origin.split("://", 1)[-1] == headers.get("host")
        if origin is not None and not same_origin and origin not in settings.cors_origins:
            raise OriginNotAllowed(f"requests from the web origin {origin[:100]!r} are refused")
        path = scope["path"]
        if settings.api_key is not None and path not in OPEN_PATHS and path.startswith("/v1/"):
            self._authorise(headers.get("authorization", ""), (scope.get("client") or ("?",))[0])
        limit = settings.max_upload_bytes if path == UPLOAD_PATH else settings.max_json_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"the body is {declared} bytes; this server accepts at most {limit} here")
        return limit

    def _authorise(self, authorization: str, address: str) -> None:
        if self.failures.blocked(address):
            raise TooManyAuthFailures(f"{self.failures.limit} requests without the right API key from "
                                      f"{address} within a minute")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token and hmac.compare_digest(token.strip().encode(),
                                                                       self.settings.api_key.encode()):
            return
        self.failures.add(address)
        raise Unauthorized("this server needs an API key" if not authorization else "wrong API key")


def _limited(receive, limit: int):
    """``receive`` that raises PayloadTooLarge once more than ``limit`` body bytes arrived (bodies
    sent without a Content-Length, or longer than declared)."""
    received = 0

    async def wrapped():
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise PayloadTooLarge(f"the body exceeds {limit} bytes, the most this server accepts here")
        return message

    return wrapped
