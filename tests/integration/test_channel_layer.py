"""The channel layer as configured: a consumer's receive, cancelled at any moment
(a socket closing, a consumer stopping), ends at once instead of dying 5 s later
with a TimeoutError that takes its live socket down."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from channels_redis.core import RedisChannelLayer
from django.conf import settings


async def cancel_receives(delays):
    """Cancel a receive after each delay: -> the slowest time a cancel took to end it."""
    layer = RedisChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])
    slowest = 0.0
    try:
        for delay in delays:
            channel = await layer.new_channel()
            receive = asyncio.ensure_future(layer.receive(channel))
            await asyncio.sleep(delay)
            started = time.monotonic()
            receive.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(receive), 3)
            except asyncio.CancelledError:
                pass
            except (asyncio.TimeoutError, Exception):
                return float("inf")
            slowest = max(slowest, time.monotonic() - started)
    finally:
        await layer.close_pools()
    return slowest


def test_a_cancelled_receive_ends_at_once_whenever_it_is_cancelled():
    delays = [step / 4000 for step in range(24)] * 5  # 0 to 6 ms after it started: its first commands
    with ThreadPoolExecutor(1) as pool:  # a loop of its own (the browser tests keep one in this thread)
        slowest = pool.submit(asyncio.run, cancel_receives(delays)).result()
    assert slowest < 1.0
