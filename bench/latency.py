"""Member exit -> websocket message at a browser, through the whole stack.

uvicorn + a Celery worker + the monitor run as real processes. A logged-in
websocket client (session cookie from django.test.Client.force_login, Origin
http://127.0.0.1:<port>) subscribes to ws://127.0.0.1:<port>/ws/runs/<id>/.
The run has 50 members (concurrency 50), member i sleeping 0.2 + 0.05*i s, so
that exits are spread. run_launch is called with its on_commit enqueue held
back until the socket is open, then the task is enqueued as run_launch would.
BENCH_TRIALS runs (default 3) are made one after another, and the percentiles
pool all their members (one run's 50 exits make a p95 that swings by 10 ms).

Per member: its exit time is "ended" in the runner's journal (written by the
local runner right after the process exits); its arrival time is when the first
websocket message arrives holding its row (id="member-<pk>") with a terminal
data-status. The monitor's database write (MemberRun.updated) splits the
latency into exit->db and db->websocket.
Prints name=value lines; the last is the headline exit_to_ws_p95_ms.
"""

import asyncio
import json
import os
import re
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import Stack  # noqa: E402

from launchers.local import Journals  # noqa: E402
from webapp.supervisor import free_port  # noqa: E402

MEMBERS = int(os.environ.get("BENCH_MEMBERS", "50"))
TRIALS = int(os.environ.get("BENCH_TRIALS", "3"))  # runs one after another; the percentiles pool their members
TIMEOUT = 120.0
ROW = re.compile(r'<tr id="member-(\d+)"(.*?)</tr>', re.S)
STATUS = re.compile(r'data-status="(\w+)"')
TERMINAL = {"Completed", "Failed", "Cancelled", "Lost"}


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))]


class SocketClient(threading.Thread):
    """A websocket client in its own thread (own event loop) recording (arrival epoch, text)."""

    def __init__(self, url: str, origin: str, cookie: str):
        super().__init__(daemon=True)
        self.url, self.origin, self.cookie = url, origin, cookie
        self.messages: list[tuple[float, str]] = []
        self.opened = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        try:
            asyncio.run(self.main())
        except BaseException as error:  # reported by the main thread
            self.error = error
            self.opened.set()

    async def main(self):
        from websockets.asyncio.client import connect

        async with connect(self.url, origin=self.origin, additional_headers={"Cookie": self.cookie}, open_timeout=10) as socket:
            self.opened.set()
            while not self.stop.is_set():
                try:
                    text = await asyncio.wait_for(socket.recv(), timeout=0.1)
                except TimeoutError:
                    continue
                self.messages.append((time.time(), text))


def one_trial(stack, user, port: int, session: str, trial: int) -> dict:
    """Launch one run while a client watches it; the latencies of its members."""
    from ensembles import services
    from ensembles.models import TERMINAL_STATUSES, MemberRun

    experiment = services.experiment_create(owner=user, name=f"bench-latency-{trial}")
    services.ensemble_save(
        experiment=experiment,
        spec={
            "name": "ens",
            "params": [{"name": "i", "values": f"range(0, {MEMBERS})"}],
            "params_as_args": ["i"],
            "run_settings": {"exe": sys.executable,
                             "exe_args": ["-c", "import sys, time; time.sleep(0.2 + 0.05 * int(sys.argv[-1]))"]},
        },
    )
    held = []
    enqueue = services._enqueue
    services._enqueue = lambda *args, **options: held.append(args)  # hold the submit until the socket is open
    try:
        run = services.run_launch(user=user, experiment=experiment, concurrency=MEMBERS)
    finally:
        services._enqueue = enqueue
    assert held, "run_launch enqueued nothing"

    origin = f"http://127.0.0.1:{port}"
    client = SocketClient(f"ws://127.0.0.1:{port}/ws/runs/{run.pk}/", origin, f"sessionid={session}")
    client.start()
    try:
        client.opened.wait(15)
        if client.error or not client.opened.is_set():
            raise RuntimeError(f"the websocket did not open: {client.error!r}")
        deadline = time.monotonic() + 10
        while not client.messages and time.monotonic() < deadline:  # the state sent on connect
            time.sleep(0.01)
        connect_messages = len(client.messages)
        for args in held:
            enqueue(*args)

        unfinished = MemberRun.objects.filter(run_id=run.pk).exclude(status__in=TERMINAL_STATUSES)
        start = time.monotonic()
        while unfinished.exists():
            stack.check_alive()
            if time.monotonic() - start > TIMEOUT:
                raise RuntimeError(f"{unfinished.count()} members unfinished after {TIMEOUT} s")
            time.sleep(0.05)

        members = list(MemberRun.objects.filter(run_id=run.pk).select_related("run"))
        wanted = {str(m.pk) for m in members}

        def arrivals():
            seen = {}
            for arrived, text in client.messages:
                for pk, body in ROW.findall(text):
                    status = STATUS.search(body)
                    if pk in wanted and pk not in seen and status and status.group(1) in TERMINAL:
                        seen[pk] = arrived
            return seen

        deadline = time.monotonic() + 5  # the last pushes may still be on their way
        while len(arrivals()) < len(wanted) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.stop.set()
        client.join(5)
    seen = arrivals()

    recorded = Journals.read(Path(run.work_dir))
    to_ws, to_db, db_to_ws = [], [], []
    for member in members:
        ended = recorded[str(member.pk)][1].ended
        if str(member.pk) in seen:
            to_ws.append((seen[str(member.pk)] - ended) * 1000)
            db_to_ws.append((seen[str(member.pk)] - member.updated.timestamp()) * 1000)
        to_db.append((member.updated.timestamp() - ended) * 1000)
    if os.environ.get("BENCH_DUMP"):  # raw timings, for digging into a slow figure
        with open(f"{os.environ['BENCH_DUMP']}.{trial}", "w") as out:
            json.dump({
                "members": [{"pk": m.pk, "updated": m.updated.timestamp(), "arrived": seen.get(str(m.pk)),
                             "recorded": recorded[str(m.pk)][1].to_dict()} for m in members],
                "messages": [(arrived, [pk for pk, _ in ROW.findall(text)], len(text)) for arrived, text in client.messages],
            }, out, indent=1)
    return {
        "completed": sum(m.status == "Completed" for m in members),
        "messages": len(client.messages),
        "connect_messages": connect_messages,
        "missing": len(wanted) - len(seen),
        "to_ws": to_ws, "to_db": to_db, "db_to_ws": db_to_ws,
        "p95": percentile(to_ws, 0.95) if to_ws else float("nan"),
    }


def main():
    stack = Stack("latency")
    try:
        from django.contrib.auth import get_user_model
        from django.test import Client

        user = get_user_model().objects.create_user(f"bench-{os.getpid()}", password="bench-password-1")
        browser = Client(HTTP_HOST="127.0.0.1")
        browser.force_login(user)
        session = browser.cookies["sessionid"].value

        port = free_port()
        stack.start_server(port)
        stack.start_worker()
        stack.start_monitor()
        deadline = time.monotonic() + 60
        while True:
            stack.check_alive()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the web server did not answer /healthz") from None
                time.sleep(0.1)
        stack.wait_worker()
        stack.wait_monitor()

        trials = [one_trial(stack, user, port, session, trial) for trial in range(TRIALS)]
        pooled = {key: [value for t in trials for value in t[key]] for key in ("to_ws", "to_db", "db_to_ws")}

        print(f"members={MEMBERS}")
        print(f"trials={TRIALS}")
        print(f"completed={sum(t['completed'] for t in trials)}")
        print(f"database={stack.database}")
        print(f"ws_messages={sum(t['messages'] for t in trials)}")
        print(f"ws_messages_on_connect={sum(t['connect_messages'] for t in trials)}")
        print(f"missing={sum(t['missing'] for t in trials)}")
        print("exit_to_ws_p95_ms_per_trial=" + ",".join(f"{t['p95']:.1f}" for t in trials))
        print(f"exit_to_db_p50_ms={percentile(pooled['to_db'], 0.5):.1f}")
        print(f"exit_to_db_p95_ms={percentile(pooled['to_db'], 0.95):.1f}")
        to_ws = pooled["to_ws"]
        if not to_ws:
            raise RuntimeError("no member's terminal row arrived over the websocket")
        print(f"db_to_ws_p50_ms={percentile(pooled['db_to_ws'], 0.5):.1f}")
        print(f"db_to_ws_p95_ms={percentile(pooled['db_to_ws'], 0.95):.1f}")
        print(f"exit_to_ws_min_ms={min(to_ws):.1f}")
        print(f"exit_to_ws_max_ms={max(to_ws):.1f}")
        print(f"samples={len(to_ws)}")
        print(f"exit_to_ws_p50_ms={percentile(to_ws, 0.5):.1f}")
        print(f"exit_to_ws_p95_ms={percentile(to_ws, 0.95):.1f}")
    finally:
        stack.close()


if __name__ == "__main__":
    main()
