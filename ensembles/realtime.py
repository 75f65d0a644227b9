"""Server -> browser pushes. One fragment, three transports: the partials rendered
here are the same the run page includes and the htmx views return.

Who watches which run is kept in Redis (a sorted set of channel names per run),
so that nothing is rendered for a run nobody has open."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import threading
import time
import weakref
from datetime import datetime
from datetime import timezone as dt_timezone

import redis
import redis.asyncio
from channels.layers import get_channel_layer
from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse

from . import selectors

log = logging.getLogger("flotilla.realtime")
MAX_ROWS_PER_PUSH = 200  # beyond this, the page reloads its table instead
# An open run socket renews its mark every WATCHER_HEARTBEAT seconds, so that one
# whose server died without saying goodbye stops counting after WATCHER_EXPIRY
# (until then, the monitor would render pushes for nobody).
WATCHER_HEARTBEAT = 60.0
WATCHER_EXPIRY = 3 * WATCHER_HEARTBEAT


def run_group(run_id: int) -> str:
    return f"run.{run_id}"


def _watchers_key(run_id: int) -> str:
    return f"{settings.EVENT_STREAM}:watchers:{run_group(run_id)}"


# One asyncio client per running event loop (its connections belong to that loop), kept
# for the loop's life: a socket's watch, heartbeat and unwatch open no connection of their own.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = weakref.WeakKeyDictionary()


def _async_client() -> redis.asyncio.Redis:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    return client


async def watch(run_id: int, channel_name: str) -> None:
    """Mark the socket as watching the run (again: its heartbeat calls this)."""
    async with _async_client().pipeline(transaction=False) as pipe:
        key = _watchers_key(run_id)
        await pipe.zadd(key, {channel_name: time.time()}).expire(key, math.ceil(WATCHER_EXPIRY)).execute()


async def keep_watching(run_id: int, channel_name: str) -> None:
    """The socket's heartbeat, until cancelled."""
    while True:
        await asyncio.sleep(WATCHER_HEARTBEAT)
        try:
            await watch(run_id, channel_name)
        except redis.RedisError as error:  # the next beat tries again
            log.warning("could not renew the watcher of run %s: %s", run_id, error)


async def unwatch(run_id: int, channel_name: str) -> None:
    await _async_client().zrem(_watchers_key(run_id), channel_name)


class _PushLoop:
    """An event loop in a daemon thread, for this process's pushes. The channel layer
    keeps its Redis connections per loop: async_to_sync would make a new loop, and
    so new connections, for every push."""

    def __init__(self):
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="flotilla-push", daemon=True).start()

    def group_send(self, group: str, message: dict) -> None:
        asyncio.run_coroutine_threadsafe(get_channel_layer().group_send(group, message), self.loop).result(timeout=5)


_push_loop: _PushLoop | None = None
_push_loop_lock = threading.Lock()


def _group_send(group: str, message: dict) -> None:
    global _push_loop
    with _push_loop_lock:
        if _push_loop is None or _push_loop.pid != os.getpid():  # a forked process needs its own thread
            _push_loop = _PushLoop()
    _push_loop.group_send(group, message)


@functools.cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)


def watched(run_id: int) -> bool:
    key = _watchers_key(run_id)
    pipe = _client().pipeline(transaction=False)
    _, count = pipe.zremrangebyscore(key, 0, time.time() - WATCHER_EXPIRY).zcard(key).execute()
    return count > 0


def run_mark() -> str:
    """When a page's picture of a run was taken (epoch seconds): a page that reconnects
    sends back the mark of the last message it got, and gets only what changed since."""
    return f"{time.time():.6f}"


def run_update_html(run_id: int, member_ids: list[int], *, reload: bool = False) -> str:
    """One websocket message: counts and progress, plus the changed rows (or an order
    to reload the table), and its mark. Rows travel inside a <template>, where an HTML
    parser keeps <tr> elements; static/js/app.js hands such messages to htmx's own swap."""
    context = {"oob": True, "mark": run_mark(), **selectors.run_summary(run_id)}  # the mark first: nothing is missed
    live = None
    if not reload and member_ids and len(member_ids) <= MAX_ROWS_PER_PUSH:
        live = selectors.member_rows(context["run"], member_ids)
        reload = live.new_columns  # a result the pages' tables have no column for yet: their head changes
    if reload or len(member_ids) > MAX_ROWS_PER_PUSH:
        context["reload_url"] = reverse("ensembles:run_members", args=[run_id])
    elif live:
        context["rows"] = live.rows
    return render_to_string("ensembles/partials/run_update.html", context)


# A page's mark and the database's update times come from two clocks of this machine
# (web server, monitor): rows changed this shortly before a mark are sent again.
MARK_MARGIN = 1.0


def run_catch_up_html(run_id: int, since: float | None) -> str:
    """What a page whose last message was marked ``since`` lacks: the counts and the rows
    that changed since (a small fragment, whatever the run's size), or, without a mark
    or past MAX_ROWS_PER_PUSH changed rows, an order to reload its table."""
    if since is None:
        return run_update_html(run_id, [], reload=True)
    after = datetime.fromtimestamp(since - MARK_MARGIN, tz=dt_timezone.utc)
    changed = selectors.member_ids_changed_since(run_id, after, limit=MAX_ROWS_PER_PUSH + 1)
    return run_update_html(run_id, changed, reload=len(changed) > MAX_ROWS_PER_PUSH)


def run_changed(run_id: int, member_ids: list[int], *, reload: bool = False) -> None:
    """Push one update to every browser watching the run (best effort: the page
    shows the truth again on reconnect). Nothing is rendered if nobody watches.
    ``reload``: the run has new rows (a re-run): the table reloads itself."""
    try:
        if not watched(run_id):
            return
        html = run_update_html(run_id, member_ids, reload=reload)
        _group_send(run_group(run_id), {"type": "run.update", "html": html})
    except Exception as error:  # Redis down, a page closing: never fail the caller for a push
        log.warning("could not push run %s: %s", run_id, error)
