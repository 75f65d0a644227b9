"""Celery and Channels start and work against a real Redis."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from channels.layers import get_channel_layer

from ensembles.tasks import ping
from webapp.supervisor import PrivateRedis, redis_answers

pytestmark = pytest.mark.integration


def test_a_real_celery_worker_runs_the_health_task(celery_worker_process):
    assert ping.delay().get(timeout=30) == "pong"
    assert celery_worker_process.popen.poll() is None


def test_the_redis_channel_layer_delivers_group_messages():
    async def round_trip():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("health.test", channel)
        await layer.group_send("health.test", {"type": "health.pong", "echo": 42})
        message = await asyncio.wait_for(layer.receive(channel), timeout=5)
        await layer.group_discard("health.test", channel)
        return message

    # Its own thread: Playwright's browser tests may keep an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        message = pool.submit(asyncio.run, round_trip()).result(timeout=10)
    assert message == {"type": "health.pong", "echo": 42}


def test_a_private_redis_server_starts_and_stops_on_a_free_port():
    private = PrivateRedis()
    try:
        assert redis_answers(private.url)
        assert private.url != "redis://127.0.0.1:6379/0"
    finally:
        private.stop()
    assert not redis_answers(private.url)
