"""Figures of the security review's findings, measured on the real components.

- parent_env_secrets: server secrets a member finds in its parent's (the runner's)
  environment and command line (goal 0);
- orphans_after_cancel, orphans_after_exit: processes still alive after a member that
  left children behind (one ignoring SIGTERM, one in a session of its own, one in
  the background) was cancelled / ended (goal 0);
- world_readable_files: files and folders of a data folder (database, upload, a run's
  members and journals) that another account could read (goal 0);
- preview_slow_s: CPU seconds of one preview of range(2^66, 2^66 + 49152000, 0.001) (goal <= 1);
- anon_post_peak_mb: the web server's memory growth while an anonymous client sends a
  300 MB multipart POST to /login/, and anon_post_413_s: how soon it is refused (goal <= 100 MB);
- cross_origin_ws_accepted: websockets to a logged-in user's run opened from another
  port, scheme or host (goal 0; a same-origin socket is opened as a control).

Prints name=value lines; a throw-away data folder and SQLite file are used.
"""

import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

from _django import setup_django, web_server  # noqa: E402

os.environ.setdefault("LOG_LEVEL", "WARNING")

DATA = setup_django()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.files.uploadedfile import SimpleUploadedFile  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import reverse  # noqa: E402

from ensembles import services  # noqa: E402
from ensembles.models import MemberRun  # noqa: E402
from launchers.base import JobSpec  # noqa: E402
from launchers.local import LocalLauncher  # noqa: E402

PY = sys.executable


def wait(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise SystemExit("timed out")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def launcher_figures() -> dict:
    work = DATA / "launcher"
    secrets = {"SECRET_KEY": "bench-secret-key", "DATABASE_URL": "postgres://u:db-password@h/db"}
    saved = {name: os.environ.get(name) for name in secrets}
    os.environ.update(secrets)  # as in a Celery worker, the runner's caller
    try:
        launcher = LocalLauncher(work_dir=work / "run", grace=1.0)
        return _launcher_figures(launcher, work, secrets)
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def _launcher_figures(launcher, work, secrets) -> dict:

    def job(key, script):
        folder = work / key
        folder.mkdir(parents=True, exist_ok=True)
        return JobSpec(key=key, name=key, argv=[PY, "-c", script], cwd=str(folder),
                       stdout=str(folder / "out"), stderr=str(folder / "err"))

    peek = job("peek", "import os; p = os.getppid(); print(open(f'/proc/{p}/environ').read(), open(f'/proc/{p}/cmdline').read())")
    leaver = ("import subprocess, sys, time; kids = [subprocess.Popen(['sh', '-c', 'trap \"\" TERM; sleep 60']), "
              "subprocess.Popen(['sleep', '60'], start_new_session=True), subprocess.Popen(['sleep', '60'])]; "
              "print(' '.join(str(k.pid) for k in kids), flush=True); time.sleep(float(sys.argv[1]))")
    cancelled, ended = job("cancelled", leaver), job("ended", leaver)
    cancelled.argv.append("60")
    ended.argv.append("0.5")
    launcher.submit([peek, cancelled, ended], group="bench", concurrency=3)
    pids = {}
    for spec in (cancelled, ended):
        out = Path(spec.stdout)
        pids[spec.key] = [int(p) for p in wait(lambda: out.exists() and out.read_text().split())]
    launcher.cancel([cancelled], group="bench")
    wait(lambda: all(s.state.terminal for s in launcher.status(["peek", "cancelled", "ended"]).values()))
    seen = Path(peek.stdout).read_text()
    found = sum(1 for name, value in secrets.items() for text in (name, value) if text in seen)
    return {
        "parent_env_secrets": found,
        "orphans_after_cancel": sum(alive(pid) for pid in pids["cancelled"]),
        "orphans_after_exit": sum(alive(pid) for pid in pids["ended"]),
    }


def world_readable_files(user) -> int:
    experiment = services.experiment_create(owner=user, name="modes")
    ensemble = services.ensemble_save(experiment=experiment, spec={
        "name": "m", "params": [{"name": "n", "values": "1, 2"}],
        "run_settings": {"exe": PY, "exe_args": ["-c", "open('result.txt', 'w').write(open('input.cfg').read())"]},
    })
    services.file_attach_upload(owner=ensemble, uploaded_file=SimpleUploadedFile("input.cfg", b"n = ;n;\n"),
                                action="configure", user=user)
    run = services.run_launch(user=user, experiment=experiment)
    services.run_submit(run_id=run.pk)  # in this process: no worker needed
    members = [str(pk) for pk in MemberRun.objects.filter(run=run).values_list("pk", flat=True)]
    from ensembles.launching import launcher_for

    launcher = launcher_for(run)
    wait(lambda: all(s.state.terminal for s in launcher.status(members).values()))
    readable = 0
    for folder, names, files in os.walk(DATA):
        for path in [folder, *(os.path.join(folder, name) for name in files)]:
            if os.lstat(path).st_mode & 0o077:
                readable += 1
    return readable


def preview_slow_s(user) -> float:
    experiment = services.experiment_create(owner=user, name="preview")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    data = {
        "name": "sweep", "perm_strategy": "all_perm", "n_models": "", "seed": "", "replicas": "1", "exe": "/bin/true",
        "exe_args": "", "tag": ";", "params-TOTAL_FORMS": "1", "params-INITIAL_FORMS": "0", "params-MIN_NUM_FORMS": "0",
        "params-MAX_NUM_FORMS": "1000", "params-0-name": "x",
        "params-0-values": "range(73786976294838206464, 73786976294887358464, 0.001)",
    }
    start = time.process_time()
    response = client.post(reverse("ensembles:ensemble_preview_new", args=[experiment.pk]), data)
    assert response.status_code == 200, response.status_code
    return time.process_time() - start


def _rss_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def server_figures(user, run_pk: int) -> dict:
    with web_server(DATA / "server.log") as (port, server):
        before = _rss_kb(server.pid, "VmRSS")
        started = time.monotonic()
        sock = socket.create_connection(("127.0.0.1", port))
        size = 300 * 1024 * 1024
        sock.sendall(f"POST /login/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode())
        sock.settimeout(10)
        chunk, sent, reply = b"x" * 65536, 0, b""
        try:
            while sent < size:
                sock.sendall(chunk)
                sent += len(chunk)
                sock.setblocking(False)
                try:
                    reply += sock.recv(4096)
                except BlockingIOError:
                    pass
                sock.setblocking(True)
                if reply:
                    break
        except OSError:
            pass
        refused_after = time.monotonic() - started
        sock.close()
        peak = _rss_kb(server.pid, "VmHWM")
        cookie = _session_cookie(user)
        accepted = asyncio.run(_cross_origin(port, run_pk, cookie))
        return {
            "anon_post_status": reply.split(b"\r\n", 1)[0].decode(errors="replace") or "none",
            "anon_post_413_s": round(refused_after, 3),
            "anon_post_sent_mb": round(sent / 2**20, 1),
            "anon_post_peak_mb": round(max(0, peak - before) / 1024, 1),
            **accepted,
        }


def _session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def _cross_origin(port: int, run_pk: int, cookie: str) -> dict:
    import websockets

    async def opens(origin: str) -> bool:
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/runs/{run_pk}/", origin=origin,
                                          additional_headers={"Cookie": f"sessionid={cookie}"}, open_timeout=5) as ws:
                await ws.send(json.dumps({"action": "catch_up", "since": None}))
                await asyncio.wait_for(ws.recv(), 5)  # the run's state: the socket was accepted
                return True
        except Exception as error:
            print(f"# {origin}: {type(error).__name__}: {error}", file=sys.stderr)
            return False

    foreign = [f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}", f"http://localhost.evil:{port}", "null"]
    return {
        "same_origin_ws_accepted": int(await opens(f"http://127.0.0.1:{port}")),
        "cross_origin_ws_accepted": sum([await opens(origin) for origin in foreign]),
    }


def main():
    user = get_user_model().objects.create_user("alice", password="bench-password-1")
    figures = launcher_figures()
    figures["world_readable_files"] = world_readable_files(user)
    figures["preview_slow_s"] = round(preview_slow_s(user), 3)
    from ensembles.models import Run

    figures.update(server_figures(user, Run.objects.first().pk))
    for name, value in figures.items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
