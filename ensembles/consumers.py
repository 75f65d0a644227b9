"""Websocket consumers. Authentication and permission are checked in connect();
a socket for another user's run or member is closed before it is accepted."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import os
import time

import redis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.http import Http404
from django.utils.html import escape

from launchers.base import LauncherError

from . import launching, realtime, selectors

TAIL_BYTES = 64 * 1024  # sent on open
CHUNK_BYTES = 256 * 1024  # at most per message while following
FOLLOW_INTERVAL = 0.25
CLOSE_FORBIDDEN = 4403
CLOSE_TRY_AGAIN_LATER = 1013  # the page's ws extension reconnects after it (and 1006, 1011, 1012)

log = logging.getLogger("flotilla.realtime")


@database_sync_to_async
def _visible_run(user, pk):
    try:
        return selectors.run_get(user, pk)
    except Http404:
        return None


@database_sync_to_async
def _visible_member(user, pk):
    try:
        return selectors.member_run_get(user, pk)
    except Http404:
        return None


class RunConsumer(AsyncWebsocketConsumer):
    """Live updates of one run: counts and changed rows, pushed by the monitor, and on
    each (re)connect what the page missed."""

    async def __call__(self, scope, receive, send):
        """Without Redis (the channel layer and the watchers live there) the socket closes,
        "try again later": the page reconnects by itself and catches up once Redis is back."""
        try:
            await super().__call__(scope, receive, send)
        except redis.RedisError as error:
            log.warning("closing a run socket: Redis is unreachable (%s)", error)
            await self.disconnect(CLOSE_TRY_AGAIN_LATER)
            with contextlib.suppress(OSError):  # the page went meanwhile
                await self.close(code=CLOSE_TRY_AGAIN_LATER)

    async def connect(self):
        user = self.scope["user"]
        run = await _visible_run(user, self.scope["url_route"]["kwargs"]["pk"]) if user.is_authenticated else None
        if run is None:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.run_id = run.pk
        self.group = realtime.run_group(run.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await realtime.watch(run.pk, self.channel_name)
        self.heartbeat = asyncio.create_task(realtime.keep_watching(run.pk, self.channel_name))
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        """The page says when its picture of the run was taken (``{"action": "catch_up",
        "since": <mark>}``, on every (re)connect): it gets what changed since, in one message."""
        try:
            message = json.loads(text_data or "{}")
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("action") != "catch_up":
            return
        since = message.get("since")
        since = float(since) if isinstance(since, (int, float)) and not isinstance(since, bool) else None
        await self.send(text_data=await database_sync_to_async(realtime.run_catch_up_html)(self.run_id, since))

    async def disconnect(self, code):
        if hasattr(self, "heartbeat"):
            self.heartbeat.cancel()
        if hasattr(self, "group"):
            try:
                await self.channel_layer.group_discard(self.group, self.channel_name)
                await realtime.unwatch(self.run_id, self.channel_name)
            except redis.RedisError as error:  # the marks expire by themselves
                log.warning("run socket closed without leaving its group: Redis is unreachable (%s)", error)

    async def run_update(self, event):
        await self.send(text_data=event["html"])


class LogTailConsumer(AsyncWebsocketConsumer):
    """Tails a member's stdout or stderr by byte offset, as fast as the browser takes it.

    The browser starts the tail (``{"action": "start", "offset": N}``: from byte N
    after a reconnect, the last 64 KB without one) and acknowledges each message
    (``{"action": "ack"}``): at most MAX_UNACKED messages are ever in flight, so a
    client that does not read costs the server nothing more. Each message ends
    with the offset it reached, which the browser sends back when it reconnects:
    every byte is shown once, in order. The file is opened by the member's side
    (as its Unix account when members run as their owners) and read through its
    descriptor."""

    MAX_UNACKED = 2
    OPEN_RETRY = 1.0  # seconds between attempts to open an output that does not exist yet
    channel_layer_alias = None  # a tail needs no channel layer, and so lives through a Redis restart

    async def connect(self):
        user = self.scope["user"]
        kwargs = self.scope["url_route"]["kwargs"]
        member = await _visible_member(user, kwargs["pk"]) if user.is_authenticated else None
        if member is None or kwargs["stream"] not in ("out", "err"):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.path = member.stdout if kwargs["stream"] == "out" else member.stderr
        self.side = await database_sync_to_async(lambda: launching.member_side(member.run))()
        self.target = f"log-{kwargs['stream']}"
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.fd = None
        self.next_open = 0.0
        self.offset = None  # until the browser starts the tail
        self.paused = False
        self.unacked = 0
        self.wake = asyncio.Event()
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "follower"):
            self.follower.cancel()
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
            self.fd = None

    async def receive(self, text_data=None, bytes_data=None):
        try:
            message = json.loads(text_data or "{}")
            action = message.get("action")
        except (ValueError, AttributeError):
            return
        if action == "start" and self.offset is None:
            offset = message.get("offset")
            self.offset = offset if isinstance(offset, int) and offset >= 0 else -1  # -1: the last 64 KB
            self.follower = asyncio.create_task(self.follow())
        elif action == "ack":
            self.unacked = max(0, self.unacked - 1)
        elif action in ("pause", "resume"):
            self.paused = action == "pause"
        self.wake.set()

    def read_more(self) -> bytes:
        if self.fd is None:
            if time.monotonic() < self.next_open:
                return b""
            self.next_open = time.monotonic() + self.OPEN_RETRY
            try:
                self.fd = self.side.open_files([self.path])[0]
            except LauncherError:
                return b""
            if self.fd is None:
                return b""
        size = os.fstat(self.fd).st_size
        if self.offset < 0:
            self.offset = max(0, size - TAIL_BYTES)
        if size < self.offset:  # truncated: start again
            self.offset = 0
        if size == self.offset:
            return b""
        data = os.pread(self.fd, CHUNK_BYTES, self.offset)
        self.offset += len(data)
        return data

    async def follow(self):
        while True:
            if self.paused or self.unacked >= self.MAX_UNACKED:
                self.wake.clear()
                await self.wake.wait()
                continue
            data = await asyncio.to_thread(self.read_more)
            if data:
                text = escape(self.decoder.decode(data))
                self.unacked += 1
                await self.send(text_data=f'<pre id="{self.target}" hx-swap-oob="beforeend">{text}</pre>'
                                          f'<span id="{self.target}-offset" data-offset="{self.offset}" hx-swap-oob="true"></span>')
            else:
                await asyncio.sleep(FOLLOW_INTERVAL)


class NotFoundConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.close(code=4404)
