"""The request-body limit as a pure ASGI middleware (the live server is tested in
tests/integration/test_http_limits.py)."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

from webapp.http_limits import MULTIPART_MARGIN, RequestBodyLimit, max_body_bytes

LIMIT = 1000


def drive(coroutine):
    """Run on a thread of its own: the browser tests keep an event loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def scope(headers=()):
    return {"type": "http", "method": "POST", "path": "/login/", "headers": list(headers)}


def run(app, scope, bodies):
    """Drive ``app`` with the request ``bodies`` (chunks, the last with more_body False):
    -> (messages the server was sent, messages the inner app received)."""
    incoming = [{"type": "http.request", "body": body, "more_body": i < len(bodies) - 1} for i, body in enumerate(bodies)]
    sent = []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    drive(app(scope, receive, send))
    return sent


class ReadingApp:
    """Reads the whole body, as Django's ASGIHandler does, then answers 200."""

    def __init__(self):
        self.called = False
        self.received = []

    async def __call__(self, scope, receive, send):
        self.called = True
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def test_a_declared_length_over_the_limit_is_refused_before_the_app_runs():
    app = ReadingApp()
    sent = run(RequestBodyLimit(app, LIMIT), scope([(b"content-length", b"1001")]), [b"x" * 1001])
    assert not app.called
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    assert b"at most 1,000 bytes" in sent[1]["body"]


def test_a_body_without_length_is_refused_as_soon_as_it_passes_the_limit():
    app = ReadingApp()
    sent = run(RequestBodyLimit(app, LIMIT), scope(), [b"x" * 600, b"x" * 600, b"x" * 600])
    assert [m["type"] for m in app.received] == ["http.request", "http.disconnect"]  # the third is never read
    assert [m.get("status") for m in sent] == [413, None]  # the app's own 200 is dropped


def test_a_body_within_the_limit_reaches_the_app():
    app = ReadingApp()
    sent = run(RequestBodyLimit(app, LIMIT), scope([(b"content-length", b"1000")]), [b"x" * 500, b"x" * 500])
    assert b"".join(m["body"] for m in app.received) == b"x" * 1000
    assert sent[0]["status"] == 200


def test_websockets_pass_untouched():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    drive(RequestBodyLimit(app, LIMIT)({"type": "websocket", "headers": []}, None, None))
    assert seen == ["websocket"]


def test_the_limit_is_the_upload_limit_plus_room_for_the_multipart_framing(settings):
    settings.MAX_UPLOAD_BYTES = 5 * 1024 * 1024
    assert max_body_bytes() == 5 * 1024 * 1024 + MULTIPART_MARGIN
