"""A bound on HTTP request bodies, applied before anything buffers them.

Django's ASGIHandler reads the whole body (into a SpooledTemporaryFile: memory up
to FILE_UPLOAD_MAX_MEMORY_SIZE, disk past it) before any middleware or view runs,
so a per-file check in a view comes too late to stop a huge upload from being
read. This pure-ASGI middleware sits in front of it:

- a Content-Length over the limit is answered 413 at once, before a byte of the
  body is read (uvicorn sends ``100 Continue`` only when the app first reads, so a
  client that asked for it never sends the body);
- a body without Content-Length (chunked) is counted as the app reads it, and
  answered 413 as soon as the count passes the limit; the app is then told the
  client went away (``http.disconnect``), which Django treats as an aborted request.

The 413 closes the connection: the rest of the body is never read. The server must
apply flow control (uvicorn does: it stops reading the socket while the app is not
consuming the body), or the body would pile up in memory below this middleware.
"""

from __future__ import annotations

from django.conf import settings

# The limit is on uploaded files (settings.MAX_UPLOAD_BYTES); a multipart body
# carries a little more: part headers, boundaries and the form's other fields.
MULTIPART_MARGIN = 1024 * 1024


def max_body_bytes() -> int:
    return settings.MAX_UPLOAD_BYTES + MULTIPART_MARGIN


def declared_length(headers) -> int | None:
    """The request's Content-Length, or None without one (the server has already
    refused a malformed or contradictory one)."""
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def refuse(send, limit: int) -> None:
    body = f"Request body too large: at most {limit:,} bytes.\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),  # the server does not read the rest of the body
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestBodyLimit:
    """Answer 413 to a request whose body exceeds ``max_body_bytes()``; see the module docstring."""

    def __init__(self, app, limit: int | None = None):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit if self.limit is not None else max_body_bytes()
        length = declared_length(scope.get("headers", ()))
        if length is not None and length > limit:
            return await refuse(send, limit)

        received = 0
        started = False  # the app's response has begun: too late for a 413
        refused = False

        async def counting_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        await refuse(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return  # the app answering a body it was told was abandoned
            started = True
            await send(message)

        return await self.app(scope, counting_receive, guarded_send)
