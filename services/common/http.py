"""ASGI middleware every service puts in front of its routes: bounded JSON bodies."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.problems import PROBLEM_JSON, problem_body

MAX_BODY_BYTES = 64 * 1024
# A batch route (a path ending in /batch) takes up to 1,000 items in one body.
MAX_BATCH_BODY_BYTES = 1024 * 1024
# The dashboard's pages post HTML forms, not JSON (services/common/ui).
UI_FORMS_PREFIX = "/ui/"


def is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def is_ui_form(scope: Scope, content_type: str) -> bool:
    """A form posted by a dashboard page (under /ui/), which checks its own CSRF token."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/x-www-form-urlencoded" and str(
        scope.get("path", "")
    ).startswith(UI_FORMS_PREFIX)


class JSONBodyGuard:
    """Read each request body before the app does, refusing one that is too large (413) or
    not JSON (415).

    The body is counted as it arrives, so a chunked request without Content-Length is held
    to the same limit; the app then reads the buffered copy. A batch route's body may be
    larger.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_batch_body_bytes: int = MAX_BATCH_BODY_BYTES,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_batch_body_bytes = max_batch_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        if str(scope.get("path", "")).endswith("/batch"):
            limit = self.max_batch_body_bytes
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await self._problem(
                    scope,
                    send,
                    413,
                    "payload_too_large",
                    f"request bodies are limited to {limit} bytes",
                )
                return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        content_type = headers.get("content-type", "")
        if body and not is_json(content_type) and not is_ui_form(scope, content_type):
            # FastAPI would not parse it as JSON (a CSRF guard); say so plainly.
            await self._problem(
                scope,
                send,
                415,
                "unsupported_media_type",
                "send the request body as JSON, with Content-Type: application/json",
            )
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _problem(scope: Scope, send: Send, status: int, code: str, detail: str) -> None:
        payload = problem_body(status, code, detail, scope.get("path", ""))
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(data)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})
