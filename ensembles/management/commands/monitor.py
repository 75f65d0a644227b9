"""The status monitor: one long-running process next to daphne and the worker.

It consumes launcher events from a Redis stream through a consumer group (events
sent while it is down wait in the stream; unacknowledged ones are read again on
restart), writes status changes in bulk, and pushes coalesced updates to the
browsers. An event after a quiet spell is written and pushed at once. In a
burst, a run that a browser watches is written and pushed every 80 ms (one
websocket message per run each time); when nobody watches, writes wait until a
runner sends its last entry (it pushes a wake-up the monitor blocks on), or at
most 500 ms: each wake-up costs the monitor ~1 ms of CPU while members run,
taken from them. Every few seconds, and at start, it reconciles unfinished
members from what the launchers recorded (the source of truth), resumes
submissions whose worker died, and sends again a submission no worker claimed
within FLOTILLA_SUBMIT_GRACE_SECONDS (the task queue was down at launch, or a
worker died holding the task). While Redis is down it logs the error and tries
again every second.
"""

import gc
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
from launchers.base import JobState, JobStatus, decode_event
from launchers.local import wake_key

log = logging.getLogger("flotilla.monitor")
GROUP = "monitor"
FLUSH_INTERVAL = 0.08  # in a burst, write and push at most this often: ~12 messages/s per browser
UNWATCHED_INTERVAL = 0.5  # nobody watches: write once the oldest unwritten event is this old, or a runner ends
RECONCILE_INTERVAL = 5.0
IDLE_BLOCK_MS = 1000  # also how long a stop request may wait


def latest_per_member(entries) -> dict[int, JobStatus]:
    """The most advanced status of each member in a batch of stream entries
    (each carries one or more journal lines: {"events": "<line>\\n<line>..."})."""
    order = {JobState.QUEUED: 0, JobState.RUNNING: 1}
    statuses: dict[int, JobStatus] = {}
    for _, fields in entries:
        for line in fields.get("events", "").splitlines():
            try:
                key, status = decode_event(line)
                key = int(key)
            except (KeyError, ValueError):
                log.warning("ignoring a malformed event: %r", line)
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
        self.wake_key = wake_key(self.stream)
        self.consumer = consumer
        self.unapplied: list = []  # stream entries read but not yet written (and so not acknowledged)
        self.pending_pushes: dict[int, set[int]] = {}
        self.last_flush = 0.0
        self.busy_since = 0.0  # when the oldest unwritten event was read
        self.watched: bool | None = None  # whether a browser watches a run with unwritten changes
        self.stdout.write(f"monitor: reading {self.stream} as {consumer}")
        gc.freeze()  # what is loaded by now lives as long as the monitor: collections skip it
        last_reconcile = 0.0
        while not self.stopping:
            try:
                if time.monotonic() - last_reconcile >= RECONCILE_INTERVAL:
                    close_old_connections()
                    self.ensure_group()
                    self.claim_abandoned()
                    self.changed(services.runs_reconcile())
                    last_reconcile = time.monotonic()
                if not self.busy():
                    # Quiet: wait for the next event (returns as it comes). Each wake-up costs ~1 ms
                    # of CPU on a cold cache, so an idle monitor wakes once a second.
                    self.take(self.read(">", block_ms=IDLE_BLOCK_MS))
                    if self.busy() and time.monotonic() - self.last_flush >= FLUSH_INTERVAL:
                        self.flush()
                elif self.watching():
                    # Let the window fill, then take everything that came in one read.
                    time.sleep(max(0.0, self.last_flush + FLUSH_INTERVAL - time.monotonic()))
                    self.take(self.read(">"))
                    self.flush()
                else:
                    wait = self.busy_since + UNWATCHED_INTERVAL - time.monotonic()
                    # (Redis would take a timeout under 1 ms for 0: wait forever.)
                    if wait >= 0.01 and not any(fields.get("last") for _, fields in self.unapplied):
                        self.client.blpop([self.wake_key], timeout=wait)  # a runner's end, or the deadline
                    self.take(self.read(">"))
                    self.flush()
            except (redis.RedisError, OSError) as error:
                log.warning("monitor: %s; retrying", error)
                time.sleep(1)
                last_reconcile = 0.0
            except Exception:
                log.exception("monitor: unexpected error; retrying")
                close_old_connections()
                time.sleep(1)
        self.flush()

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

    def busy(self) -> bool:
        return bool(self.unapplied or self.pending_pushes)

    def take(self, entries):
        if entries and not self.busy():
            self.busy_since = time.monotonic()
        self.unapplied += entries

    def watching(self) -> bool:
        """Whether a browser watches one of the runs with unwritten changes (asked once per flush)."""
        if self.watched is None:
            runs = set(self.pending_pushes)
            for _, fields in self.unapplied:
                if fields.get("group", "").isdigit():
                    runs.add(int(fields["group"]))
            self.watched = any(realtime.watched(run_id) for run_id in runs)
        return self.watched

    def flush(self):
        """Write what was read in one go, then push it to the browsers."""
        if not self.busy():
            return
        started = time.monotonic()  # windows are counted from flush to flush start, not end
        if self.unapplied:
            self.apply(self.unapplied)
            self.unapplied = []
        for run_id in list(self.pending_pushes):
            realtime.run_changed(run_id, sorted(self.pending_pushes.pop(run_id)))
        self.last_flush = started
        self.watched = None

    def apply(self, entries):
        self.changed(services.member_runs_apply(latest_per_member(entries)))
        self.client.xack(self.stream, GROUP, *[entry_id for entry_id, _ in entries])

    def changed(self, by_run: dict[int, list[int]]):
        if by_run and not self.busy():
            self.busy_since = time.monotonic()
        for run_id, member_ids in by_run.items():
            self.pending_pushes.setdefault(run_id, set()).update(member_ids)
