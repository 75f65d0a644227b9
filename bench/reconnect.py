"""Bytes a browser gets from a run page's live connection.

- reconnect_bytes: a page of a finished 10^4-member run reconnects (a server restart,
  a network blip): what the server sends it, and what that message makes the page fetch
  (goal <= 20 KB). reconnect_without_mark_bytes: the same for a page that sends no mark
  (the table reload and the plots it triggers), for comparison;
- idle_bytes_60s: data a watching page receives over 60 idle seconds (goal <= 2 KB;
  uvicorn's pings, a few bytes every 20 s, are not counted).

BENCH_MEMBERS (10000) and BENCH_IDLE_SECONDS (60) change the sizes. Prints name=value lines.
"""

import asyncio
import json
import os
import time
import urllib.request

from _django import setup_django, web_server  # noqa: E402

os.environ.setdefault("LOG_LEVEL", "WARNING")
setup_django()

from django.contrib.auth import get_user_model  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from ensembles import realtime, services  # noqa: E402
from ensembles.models import MemberRun, Run  # noqa: E402

MEMBERS = int(os.environ.get("BENCH_MEMBERS", "10000"))
IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))


def finished_run(user) -> Run:
    experiment = services.experiment_create(owner=user, name="reconnect")
    services.ensemble_save(experiment=experiment, spec={
        "name": "big", "params": [{"name": "i", "values": f"range(0, {MEMBERS})"}], "run_settings": {"exe": "/bin/true"},
    })
    enqueue = services._enqueue
    services._enqueue = lambda *args, **options: None  # no worker: the run is finished by hand below
    try:
        run = services.run_launch(user=user, experiment=experiment)
    finally:
        services._enqueue = enqueue
    ended = timezone.now() - timezone.timedelta(minutes=10)
    MemberRun.objects.filter(run=run).update(status="Completed", returncode=0, started=ended, ended=ended, updated=ended)
    Run.objects.filter(pk=run.pk).update(submit_state="submitted", finished=ended)
    return run


async def page_socket(port: int, run_pk: int, cookie: str, since) -> tuple[int, str, int]:
    """Bytes of the catch-up message, the message, and data bytes over the idle spell."""
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/runs/{run_pk}/", origin=f"http://127.0.0.1:{port}",
                                  additional_headers={"Cookie": f"sessionid={cookie}"}, max_size=None) as ws:
        await ws.send(json.dumps({"action": "catch_up", "since": since}))
        message = await asyncio.wait_for(ws.recv(), 10)
        idle = 0
        if since is not None and IDLE_SECONDS:
            deadline = time.monotonic() + IDLE_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                try:
                    idle += len((await asyncio.wait_for(ws.recv(), left)).encode())
                except asyncio.TimeoutError:
                    break
        return len(message.encode()), message, idle


def fetched_by(message: str, port: int, run_pk: int, cookie: str) -> int:
    """What the page fetches because of the message: the table (a reload) and then the plots."""
    if 'id="members-reload"' not in message:
        return 0
    total = 0
    for path in (f"/runs/{run_pk}/members", f"/runs/{run_pk}/plots"):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Cookie": f"sessionid={cookie}", "HX-Request": "true"})
        with urllib.request.urlopen(request, timeout=30) as response:
            total += len(response.read())
    return total


def main():
    user = get_user_model().objects.create_user("alice", password="bench-password-1")
    run = finished_run(user)
    client = Client()
    client.force_login(user)
    cookie = client.cookies["sessionid"].value
    with web_server() as (port, _):
        mark = float(realtime.run_mark())  # the page's last message came after the run ended
        old_bytes, old_message, _ = asyncio.run(page_socket(port, run.pk, cookie, None))
        old_total = old_bytes + fetched_by(old_message, port, run.pk, cookie)
        new_bytes, new_message, idle = asyncio.run(page_socket(port, run.pk, cookie, mark))
        new_total = new_bytes + fetched_by(new_message, port, run.pk, cookie)
    print(f"members={MEMBERS}")
    print(f"reconnect_without_mark_bytes={old_total}")
    print(f"idle_seconds={IDLE_SECONDS:g}")
    print(f"idle_bytes_60s={idle}")
    print(f"reconnect_bytes={new_total}")


if __name__ == "__main__":
    main()
