"""Websockets while Redis is unreachable (restarted, say): a run socket closes with "try
again later", which the page's ws extension answers by reconnecting, and the server logs
a warning, not a traceback; a log tail needs no Redis at all."""

import asyncio
import logging
from pathlib import Path
from unittest import mock

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer

from ensembles import services
from tests.app.test_sockets import connect, session_cookie
from webapp import asgi  # noqa: F401  (its django.setup() configures logging: before caplog attaches, not during a test)
from webapp.supervisor import free_port

pytestmark = pytest.mark.django_db(transaction=True)
TRY_AGAIN_LATER = 1013


@pytest.fixture
def run(alice, experiment, ensemble):
    with mock.patch("ensembles.services._enqueue"):  # no worker here
        return services.run_launch(user=alice, experiment=experiment)


@pytest.fixture
def unreachable_redis(settings):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings.REDIS_URL = url
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [url]}}}


def test_a_run_socket_opened_while_redis_is_unreachable_is_told_to_try_again_later(run, alice, unreachable_redis, caplog):
    cookie = session_cookie(alice)

    async def scenario():
        return await connect(f"/ws/runs/{run.pk}/", cookie).connect(timeout=10)

    with caplog.at_level(logging.WARNING):
        assert async_to_sync(scenario)() == (False, TRY_AGAIN_LATER)
    assert "closing a run socket: Redis is unreachable" in caplog.text


def test_an_open_run_socket_whose_redis_goes_away_closes_try_again_later(run, alice, settings, caplog):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    cookie = session_cookie(alice)
    lost = asyncio.Event()

    async def receive(layer, channel):
        await lost.wait()
        raise redis.ConnectionError("Connection closed by server.")

    async def scenario():
        communicator = connect(f"/ws/runs/{run.pk}/", cookie)
        connected, _ = await communicator.connect(timeout=5)
        lost.set()
        return connected, await communicator.receive_output(timeout=5)

    with mock.patch.object(InMemoryChannelLayer, "receive", receive), caplog.at_level(logging.WARNING):
        connected, closed = async_to_sync(scenario)()
    assert connected and closed == {"type": "websocket.close", "code": TRY_AGAIN_LATER}
    assert "Traceback" not in caplog.text and "Redis is unreachable" in caplog.text


def test_a_log_tail_follows_while_redis_is_unreachable(run, alice, unreachable_redis):
    member = run.members.first()
    Path(member.cwd).mkdir(parents=True)
    Path(member.stdout).write_text("line 0\n")
    cookie = session_cookie(alice)

    async def scenario():
        communicator = connect(f"/ws/member-runs/{member.pk}/log/out/", cookie)
        connected, _ = await communicator.connect(timeout=5)
        await communicator.send_to(text_data='{"action": "start", "offset": null}')
        first = await communicator.receive_from(timeout=5)
        await communicator.send_to(text_data='{"action": "ack"}')
        with open(member.stdout, "a") as out:
            out.write("line 1\n")
        second = await communicator.receive_from(timeout=5)
        await communicator.disconnect()
        return connected, first, second

    connected, first, second = async_to_sync(scenario)()
    assert connected and "line 0" in first and "line 1" in second
