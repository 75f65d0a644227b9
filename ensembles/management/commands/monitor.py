"""The status monitor: one long-running process next to daphne and the worker.

It consumes launcher events from a Redis stream through a consumer group (events
sent while it is down wait in the stream; unacknowledged ones are read again on
restart), writes status changes in bulk, and pushes coalesced updates to the
browsers (at most one per run every 100 ms). Every few seconds, and at start, it
reconciles unfinished members from the status files, which are the source of
truth, and resumes submissions whose worker died.
"""

import json
import logging
import os
import signal
import socket
import time

import redis
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from ensembles import realtime, services
from launchers.base import JobState, JobStatus

log = logging.getLogger("flotilla.monitor")
GROUP = "monitor"
PUSH_INTERVAL = 0.1
BATCH_LINGER_MS = 10
RECONCILE_INTERVAL = 5.0


def parse_event(fields: dict) -> tuple[int, JobStatus]:
    data = {key: json.loads(value) for key, value in fields.items() if key not in ("key", "group")}
    return int(fields["key"]), JobStatus.from_dict(data)


def latest_per_member(entries) -> dict[int, JobStatus]:
    """Of several events for one member in a batch, the most advanced one."""
    order = {JobState.QUEUED: 0, JobState.RUNNING: 1}
    statuses: dict[int, JobStatus] = {}
    for _, fields in entries:
        try:
            key, status = parse_event(fields)
        except (KeyError, ValueError):
            log.warning("ignoring a malformed event: %r", fields)
            continue
        previous = statuses.get(key)
        if previous is None or order.get(status.state, 2) >= order.get(previous.state, 2):
            statuses[key] = status
    return statuses


class Command(BaseCommand):
    help = "Consume launcher events, write member statuses in bulk and push live updates."

    def add_arguments(self, parser):
        parser.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}")

    def handle(self, *args, consumer, **options):
        self.stopping = False
        signal.signal(signal.SIGTERM, lambda *a: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *a: setattr(self, "stopping", True))
        self.client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True, socket_timeout=10)
        self.stream = settings.EVENT_STREAM
        self.consumer = consumer
        self.pending_pushes: dict[int, set[int]] = {}
        self.last_push: dict[int, float] = {}
        self.stdout.write(f"monitor: reading {self.stream} as {consumer}")
        last_reconcile = 0.0
        while not self.stopping:
            try:
                if time.monotonic() - last_reconcile >= RECONCILE_INTERVAL:
                    close_old_connections()
                    self.ensure_group()
                    self.claim_abandoned()
                    self.changed(services.runs_reconcile())
                    last_reconcile = time.monotonic()
                self.consume(block_ms=self.block_ms())
                self.push_due()
            except (redis.RedisError, OSError) as error:
                log.warning("monitor: %s; retrying", error)
                time.sleep(1)
                last_reconcile = 0.0
            except Exception:
                log.exception("monitor: unexpected error; retrying")
                close_old_connections()
                time.sleep(1)
        self.push_due(force=True)

    def ensure_group(self):
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def claim_abandoned(self):
        """Take over events a previous monitor read but never acknowledged."""
        self.client.xautoclaim(self.stream, GROUP, self.consumer, min_idle_time=0, start_id="0-0", count=10_000)
        while entries := self.read("0"):
            self.apply(entries)

    def read(self, last_id: str, block_ms: int | None = None):
        response = self.client.xreadgroup(GROUP, self.consumer, {self.stream: last_id}, count=2000, block=block_ms)
        return response[0][1] if response else []

    def consume(self, block_ms: int):
        entries = self.read(">", block_ms)
        if entries:
            # Events come in bursts (members start and end together): a few ms more
            # make one database write out of many.
            entries += self.read(">", BATCH_LINGER_MS)
            self.apply(entries)

    def apply(self, entries):
        self.changed(services.member_runs_apply(latest_per_member(entries)))
        self.client.xack(self.stream, GROUP, *[entry_id for entry_id, _ in entries])

    def changed(self, by_run: dict[int, list[int]]):
        for run_id, member_ids in by_run.items():
            self.pending_pushes.setdefault(run_id, set()).update(member_ids)

    def block_ms(self) -> int:
        """Wait for events at most until the next coalesced push is due."""
        if not self.pending_pushes:
            return 100
        now = time.monotonic()
        due = min(self.last_push.get(run_id, 0.0) + PUSH_INTERVAL for run_id in self.pending_pushes)
        return max(1, min(100, int((due - now) * 1000)))

    def push_due(self, force: bool = False):
        now = time.monotonic()
        for run_id in list(self.pending_pushes):
            if force or now - self.last_push.get(run_id, 0.0) >= PUSH_INTERVAL:
                realtime.run_changed(run_id, sorted(self.pending_pushes.pop(run_id)))
                self.last_push[run_id] = now
