"""ASGI middleware of the web app: a request-body size limit and defensive response headers.

The body limit works before any parsing: a declared ``Content-Length`` above the limit is answered at once;
a body without one (chunked) is counted while the app reads it, and once past the limit reading stops and
whatever the app was about to answer is replaced by the 413 (FastAPI turns a failed body read into its own
400, which would hide the reason).
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A page that runs only its own files: no inline script, nothing from another origin (the "no CDN" rule,
# enforced by the browser). data: and blob: images are the overlays and the user's own upload preview.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                 b"base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class BodyTooLarge(Exception):
    """Raised inside the app's ``receive`` once the body passes the limit (stops multipart parsing)."""


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LimitsMiddleware:
    """``LimitsMiddleware(app, max_body_bytes)``: 413 for larger bodies; security headers on every answer."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    def _too_large(self, size: int | None) -> str:
        got = f"{size} bytes" if size is not None else "more"
        return (f"upload too large: {got}, the limit is {self.max_body_bytes} bytes "
                f"({self.max_body_bytes / 2**20:g} MiB, generalad serve --max-upload-mb)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _send_json(send, 413, self._too_large(declared))
            return
        state = {"received": 0, "over": False, "answered": False}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body_bytes:
                    state["over"] = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:  # swallow the app's own answer to the broken read: ours replaces it
                if not state["answered"]:
                    state["answered"] = True
                    await _send_json(send, 413, self._too_large(None))
                return
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            pass
        if state["over"] and not state["answered"]:
            await _send_json(send, 413, self._too_large(None))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
