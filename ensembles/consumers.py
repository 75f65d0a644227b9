"""Websocket consumers. Authentication and permission are checked in connect();
a socket for another user's run or member is closed before it is accepted."""

from __future__ import annotations

import asyncio
import codecs
import json
import os

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.http import Http404
from django.utils.html import escape

from . import realtime, selectors

TAIL_BYTES = 64 * 1024  # sent on open
CHUNK_BYTES = 256 * 1024  # at most per message while following
FOLLOW_INTERVAL = 0.25
CLOSE_FORBIDDEN = 4403


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
    """Live updates of one run: counts and changed rows, pushed by the monitor."""

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
        # After a reconnect (a server restart, a network blip) the page may be stale:
        # send the truth now, and have the table reload itself.
        await self.send(text_data=await database_sync_to_async(realtime.run_update_html)(run.pk, [], reload=True))

    async def disconnect(self, code):
        if hasattr(self, "group"):
            self.heartbeat.cancel()
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await realtime.unwatch(self.run_id, self.channel_name)

    async def run_update(self, event):
        await self.send(text_data=event["html"])


class LogTailConsumer(AsyncWebsocketConsumer):
    """Tails a member's stdout or stderr: the last 64 KB on open, then follows by byte offset."""

    async def connect(self):
        user = self.scope["user"]
        kwargs = self.scope["url_route"]["kwargs"]
        member = await _visible_member(user, kwargs["pk"]) if user.is_authenticated else None
        if member is None or kwargs["stream"] not in ("out", "err"):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.path = member.stdout if kwargs["stream"] == "out" else member.stderr
        self.target = f"log-{kwargs['stream']}"
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.paused = False
        try:
            size = os.path.getsize(self.path)
        except OSError:
            size = 0
        self.offset = max(0, size - TAIL_BYTES)
        await self.accept()
        self.follower = asyncio.create_task(self.follow())

    async def disconnect(self, code):
        if hasattr(self, "follower"):
            self.follower.cancel()

    async def receive(self, text_data=None, bytes_data=None):
        try:
            action = json.loads(text_data or "{}").get("action")
        except ValueError:
            return
        if action in ("pause", "resume"):
            self.paused = action == "pause"

    def read_more(self) -> bytes:
        try:
            size = os.path.getsize(self.path)
            if size < self.offset:  # truncated or replaced: start again
                self.offset = 0
            if size == self.offset:
                return b""
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(CHUNK_BYTES)
        except OSError:
            return b""
        self.offset += len(data)
        return data

    async def follow(self):
        while True:
            data = b"" if self.paused else await asyncio.to_thread(self.read_more)
            if data:
                text = self.decoder.decode(data)
                await self.send(text_data=f'<pre id="{self.target}" hx-swap-oob="beforeend">{escape(text)}</pre>')
            else:
                await asyncio.sleep(FOLLOW_INTERVAL)


class NotFoundConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.close(code=4404)
