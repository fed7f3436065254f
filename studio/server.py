"""What the studio adds to the server Gradio builds: a cap on request bodies.

Gradio's `max_file_size` caps multipart uploads only. An image can also arrive as a `data:` URL inside the JSON of
a queue join or a direct call (`/gradio_api/queue/join`, `/run/...`, `/api/...`, `/call/...`), which the server
reads into memory whole before any handler sees it. `BodyLimit` refuses such a body with 413 and a JSON `detail`
before the app reads it: at once when `Content-Length` says it is too big, and after at most `limit` bytes when it
comes chunked (no length is declared). Every route but Gradio's own multipart upload is capped, which also bounds
what the browser's private handlers can be sent: Gradio serves those (the token counter, Send to, ...) to anyone
through `/gradio_api/run/predict` with their `fn_index`, because the page itself calls them that way, so they
cannot be closed, only bounded.

It is installed the supported way, as a Starlette `Middleware` in the FastAPI app Gradio creates
(`launch(app_kwargs={"middleware": [...]})`), not by patching Gradio.
"""

from __future__ import annotations

import json

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MB = 1024 * 1024
# Room for the rest of a request (prompts up to `max_prompt_chars`, numbers, session ids) beside one image.
MARGIN_MB = 1
# Gradio's multipart upload route: it caps each file itself (`max_file_size`) and streams it to disk.
UPLOAD_ROUTE = "/gradio_api/upload"


def body_limit(max_upload_mb: int) -> Middleware:
    """The middleware `app.launch` installs: bodies up to the upload cap plus `MARGIN_MB`."""
    return Middleware(BodyLimit, limit=(max_upload_mb + MARGIN_MB) * MB, upload_mb=max_upload_mb)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413, however it is sent."""

    def __init__(self, app: ASGIApp, limit: int, upload_mb: int) -> None:
        self.app = app
        self.limit = limit
        self.upload_mb = upload_mb

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/").endswith(UPLOAD_ROUTE):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if b"transfer-encoding" not in headers:
            declared = _length(headers.get(b"content-length"))
            if declared is not None and declared > self.limit:
                await self._refuse(send, f"{declared / MB:.1f} MB")
                return
            # the server itself stops a body at its declared length; no length and no chunking means no body
            await self.app(scope, receive, send)
            return
        # chunked (a Content-Length beside it does not count): read at most `limit`, then hand the body on
        try:
            body = await self._read_chunked(receive)
        except _ClientLeft:
            return  # nobody to answer
        if body is None:
            await self._refuse(send, f"over {self.limit / MB:.0f} MB")
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_chunked(self, receive: Receive) -> bytes | None:
        """The whole body when it fits in `limit`, else None (having read no more than `limit` and one chunk)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientLeft
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, send: Send, size: str) -> None:
        detail = (
            f"The request is {size}; the studio takes at most {self.limit // MB} MB per request: images up to "
            f"{self.upload_mb} MB (STUDIO_MAX_UPLOAD_MB) plus {MARGIN_MB} MB for the other fields. Send a "
            "smaller image, as a file upload rather than a data: URL."
        )
        payload = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


class _ClientLeft(Exception):
    """The client disconnected before its body was complete."""


def _length(raw: bytes | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None  # the HTTP server refuses a malformed length before the app runs


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then the client's later messages (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
