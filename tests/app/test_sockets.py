"""Websockets: authentication, origin and permission checked in connect(); the run
socket sends the true state on connect; the log tail follows a file by offset."""

import asyncio
import json
from pathlib import Path
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test import Client

from ensembles import services
from launchers.base import JobState, JobStatus

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def in_memory_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture
def run(alice, experiment, ensemble):
    # Committed at once here (transactional tests): keep the submit task from reaching a worker.
    with mock.patch("ensembles.services._enqueue"):
        return services.run_launch(user=alice, experiment=experiment)


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def connect(path, cookie=None, origin="http://127.0.0.1:8000", host="127.0.0.1:8000", scheme="ws", headers=()):
    """A communicator through the whole ASGI stack (origin check, session auth, routing)."""
    from webapp.asgi import application

    headers = [(b"host", host.encode()), *((name.encode(), value.encode()) for name, value in headers)]
    if origin:
        headers.append((b"origin", origin.encode()))
    if cookie is not None:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))

    async def with_scheme(scope, receive, send):  # the server's scope says ws or wss
        return await application({**scope, "scheme": scheme}, receive, send)

    return WebsocketCommunicator(with_scheme, path, headers=headers)


async def _open(communicator):
    connected, code = await communicator.connect(timeout=5)
    return connected, code


def _catch_up(run, cookie, since):
    async def scenario():
        communicator = connect(f"/ws/runs/{run.pk}/", cookie)
        connected, _ = await _open(communicator)
        await communicator.send_to(text_data=json.dumps({"action": "catch_up", "since": since}))
        first = await communicator.receive_from(timeout=5)
        await communicator.disconnect()
        return connected, first

    return async_to_sync(scenario)()


def test_a_page_without_a_mark_gets_the_runs_true_state_and_reloads_its_table(run, alice):
    connected, first = _catch_up(run, session_cookie(alice), None)
    assert connected
    assert 'id="run-counts"' in first and 'data-status="New" data-count="6"' in first
    assert 'hx-trigger="load"' in first  # the table reloads itself
    assert 'id="run-mark" data-mark="' in first


def test_a_page_that_reconnects_gets_only_what_changed_since_its_mark(run, alice):
    """One small fragment: the counts, and the rows that changed since the page's last message."""
    from ensembles import realtime

    from datetime import timedelta

    from django.utils import timezone

    run.members.update(updated=timezone.now() - timedelta(minutes=5))  # the page was opened after the launch
    cookie = session_cookie(alice)
    mark = float(realtime.run_mark())
    _, nothing_new = _catch_up(run, cookie, mark)
    assert 'id="run-counts"' in nothing_new and "<template>" not in nothing_new and 'hx-trigger="load"' not in nothing_new

    changed = run.members.order_by("position")[2]
    services.member_runs_apply({changed.pk: JobStatus(JobState.RUNNING, job_id="42", started=1000.0)})
    _, caught_up = _catch_up(run, cookie, mark)
    assert f'id="member-{changed.pk}"' in caught_up and caught_up.count("<tr") == 1
    assert 'hx-trigger="load"' not in caught_up


@pytest.mark.parametrize("who", ["bob", "charlie", "anonymous"])
def test_others_and_anonymous_users_are_refused(request, run, who):
    cookie = None if who == "anonymous" else session_cookie(request.getfixturevalue(who))
    member = run.members.first()

    async def scenario(path):
        communicator = connect(path, cookie)
        connected, code = await _open(communicator)
        return connected, code

    for path in [f"/ws/runs/{run.pk}/", f"/ws/member-runs/{member.pk}/log/out/"]:
        connected, code = async_to_sync(scenario)(path)
        assert not connected and code == 4403, path


def test_a_foreign_origin_is_refused(run, alice):
    cookie = session_cookie(alice)

    async def scenario():
        communicator = connect(f"/ws/runs/{run.pk}/", cookie, origin="http://evil.example")
        return await _open(communicator)

    connected, _ = async_to_sync(scenario)()
    assert not connected


@pytest.mark.parametrize(
    "origin, host, scheme, headers, accepted",
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "ws", (), True),  # the page's own origin, port included
        ("http://127.0.0.1:9999", "127.0.0.1:8000", "ws", (), False),  # another port: another site
        ("http://127.0.0.1", "127.0.0.1:8000", "ws", (), False),  # the default port is another port too
        ("https://127.0.0.1:8000", "127.0.0.1:8000", "ws", (), False),  # another scheme
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "wss", (), False),
        ("https://127.0.0.1:8000", "127.0.0.1:8000", "wss", (), True),
        ("http://localhost:8000", "127.0.0.1:8000", "ws", (), False),  # another host name, though allowed
        (None, "127.0.0.1:8000", "ws", (), False),  # no Origin: not a browser's page of ours
        ("null", "127.0.0.1:8000", "ws", (), False),  # a sandboxed or file: page
        ("http://evil.example:8000", "evil.example:8000", "ws", (), False),  # Host not in ALLOWED_HOSTS
        # Behind the HTTPS proxy the proxy's header says the scheme, not the socket's own.
        ("https://127.0.0.1:8000", "127.0.0.1:8000", "ws", (("x-forwarded-proto", "https"),), "proxy"),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "ws", (("x-forwarded-proto", "https"),), "refused behind proxy"),
    ],
)
def test_a_socket_opens_only_from_the_pages_own_scheme_host_and_port(run, alice, settings, origin, host, scheme, headers, accepted):
    if accepted in ("proxy", "refused behind proxy"):
        settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
        accepted = accepted == "proxy"
    cookie = session_cookie(alice)

    async def scenario():
        communicator = connect(f"/ws/runs/{run.pk}/", cookie, origin=origin, host=host, scheme=scheme, headers=headers)
        connected, _ = await _open(communicator)
        await communicator.disconnect()
        return connected

    assert async_to_sync(scenario)() is accepted


@pytest.mark.parametrize("trusted", ["https://flotilla.example.org", "https://*.example.org"])
def test_an_origin_in_csrf_trusted_origins_is_accepted(run, alice, settings, trusted):
    settings.CSRF_TRUSTED_ORIGINS = [trusted]
    cookie = session_cookie(alice)

    async def scenario(origin):
        communicator = connect(f"/ws/runs/{run.pk}/", cookie, origin=origin)
        connected, _ = await _open(communicator)
        await communicator.disconnect()
        return connected

    assert async_to_sync(scenario)("https://flotilla.example.org")
    assert not async_to_sync(scenario)("http://flotilla.example.org")  # the scheme is part of it
    assert not async_to_sync(scenario)("https://flotilla.example.org:8443")  # and so is the port


def _member_log(run, content: bytes):
    member = run.members.first()
    folder = Path(member.cwd)
    folder.mkdir(parents=True)
    log = folder / f"{member.name}.out"
    log.write_bytes(content)
    return member, log


def test_the_log_tail_sends_the_last_64_kb_then_follows(run, alice):
    member, log = _member_log(run, b"a" * 100_000 + b"<end of old>\n")
    cookie = session_cookie(alice)

    async def scenario():
        communicator = connect(f"/ws/member-runs/{member.pk}/log/out/", cookie)
        assert (await _open(communicator))[0]
        await communicator.send_to(text_data='{"action": "start", "offset": null}')
        first = await communicator.receive_from(timeout=5)
        await communicator.send_to(text_data='{"action": "ack"}')
        with open(log, "ab") as out:
            out.write("new line é\n".encode())
        second = await communicator.receive_from(timeout=5)
        await communicator.send_to(text_data='{"action": "ack"}')
        await communicator.send_to(text_data='{"action": "pause"}')
        await asyncio.sleep(0.1)
        with open(log, "ab") as out:
            out.write(b"while paused\n")
        paused = await communicator.receive_nothing(timeout=0.6)
        await communicator.send_to(text_data='{"action": "resume"}')
        third = await communicator.receive_from(timeout=5)
        await communicator.disconnect()
        return first, second, paused, third

    first, second, paused, third = async_to_sync(scenario)()
    assert first.startswith('<pre id="log-out" hx-swap-oob="beforeend">')
    assert first.count("a") >= 65_000 - 200 and "&lt;end of old&gt;" in first and first.count("a") < 66_000
    assert first.endswith(f'<span id="log-out-offset" data-offset="{100_013}" hx-swap-oob="true"></span>')
    assert "new line é" in second
    assert paused
    assert "while paused" in third


def test_a_log_tail_waits_for_the_browser_to_start_it_and_resumes_from_its_offset(run, alice):
    """After a reconnect the page says how far it got: it gets only what follows, every byte once."""
    member, log = _member_log(run, b"line 1\nline 2\n")
    cookie = session_cookie(alice)

    async def scenario():
        communicator = connect(f"/ws/member-runs/{member.pk}/log/out/", cookie)
        assert (await _open(communicator))[0]
        before_start = await communicator.receive_nothing(timeout=0.5)
        with open(log, "ab") as out:
            out.write(b"line 3\n")
        await communicator.send_to(text_data='{"action": "start", "offset": 7}')  # it had shown "line 1\n"
        resumed = await communicator.receive_from(timeout=5)
        await communicator.disconnect()
        return before_start, resumed

    before_start, resumed = async_to_sync(scenario)()
    assert before_start
    assert resumed.startswith('<pre id="log-out" hx-swap-oob="beforeend">line 2\nline 3\n</pre>')


def test_a_log_tail_sends_no_faster_than_the_browser_acknowledges(run, alice):
    """A client that stops reading gets at most two messages in flight, however much the member writes."""
    member, log = _member_log(run, b"")
    cookie = session_cookie(alice)

    async def scenario():
        communicator = connect(f"/ws/member-runs/{member.pk}/log/out/", cookie)
        assert (await _open(communicator))[0]
        with open(log, "ab") as out:
            out.write(b"y\n" * 1_500_000)  # 3 MB
        await communicator.send_to(text_data='{"action": "start", "offset": 0}')
        received = [await communicator.receive_from(timeout=5), await communicator.receive_from(timeout=5)]
        stalled = await communicator.receive_nothing(timeout=1.0)
        await communicator.send_to(text_data='{"action": "ack"}')
        received.append(await communicator.receive_from(timeout=5))
        await communicator.disconnect()
        return received, stalled

    received, stalled = async_to_sync(scenario)()
    assert stalled  # two unacknowledged messages: nothing more until the browser catches up
    assert all(len(message) < 300 * 1024 for message in received)
    assert len(received) == 3


def test_a_log_stream_other_than_out_or_err_is_refused(run, alice):
    member = run.members.first()
    cookie = session_cookie(alice)

    async def scenario(path):
        return await _open(connect(path, cookie))

    assert async_to_sync(scenario)(f"/ws/member-runs/{member.pk}/log/passwd/") == (False, 4403)
    assert async_to_sync(scenario)(f"/ws/member-runs/{member.pk}/log/../../etc/") == (False, 4404)


def test_a_run_counts_as_watched_while_a_socket_is_open(run, alice):
    from ensembles import realtime

    cookie = session_cookie(alice)

    async def scenario():
        communicator = connect(f"/ws/runs/{run.pk}/", cookie)
        await _open(communicator)
        await communicator.send_to(text_data='{"action": "catch_up", "since": null}')
        await communicator.receive_from(timeout=5)
        during = realtime.watched(run.pk)
        await communicator.disconnect()
        return during

    assert realtime.watched(run.pk) is False
    assert async_to_sync(scenario)() is True
    assert realtime.watched(run.pk) is False


def test_an_open_socket_keeps_its_run_watched_and_one_whose_server_died_stops_counting(run, alice, monkeypatch):
    from ensembles import realtime

    monkeypatch.setattr(realtime, "WATCHER_HEARTBEAT", 0.05)
    monkeypatch.setattr(realtime, "WATCHER_EXPIRY", 0.3)
    async_to_sync(realtime.watch)(run.pk, "socket-of-a-dead-server")  # no heartbeat, no goodbye
    cookie = session_cookie(alice)

    async def scenario():
        communicator = connect(f"/ws/runs/{run.pk}/", cookie)
        await _open(communicator)
        await communicator.send_to(text_data='{"action": "catch_up", "since": null}')
        await communicator.receive_from(timeout=5)
        await asyncio.sleep(4 * realtime.WATCHER_EXPIRY)  # the point: time passes, and only the open socket beats
        during = realtime.watched(run.pk), realtime._client().zrange(realtime._watchers_key(run.pk), 0, -1)
        await communicator.disconnect()
        return during

    watched, watchers = async_to_sync(scenario)()
    assert watched is True and len(watchers) == 1 and b"socket-of-a-dead-server" not in watchers
    assert realtime.watched(run.pk) is False


def test_pushes_are_rendered_only_for_watched_runs(run):
    from ensembles import realtime

    with mock.patch("ensembles.realtime._group_send") as send:
        realtime.run_changed(run.pk, [])
        assert not send.called  # nobody watches: nothing rendered, nothing sent
        async_to_sync(realtime.watch)(run.pk, "a-channel")
        try:
            realtime.run_changed(run.pk, [])
        finally:
            async_to_sync(realtime.unwatch)(run.pk, "a-channel")
    (group, message), _ = send.call_args
    assert group == realtime.run_group(run.pk) and 'id="run-counts"' in message["html"]
