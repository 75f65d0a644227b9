"""Django on a throw-away data folder and SQLite file, for the benchmarks that
need no other process (preview.py, dashboard.py). Removed again at exit."""

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def setup_django() -> Path:
    data = Path(tempfile.mkdtemp(prefix="flotilla-bench-"))
    if not os.environ.get("BENCH_KEEP"):
        atexit.register(shutil.rmtree, data, ignore_errors=True)
    os.environ["FLOTILLA_DATA_DIR"] = str(data)
    os.environ["DATABASE_URL"] = f"sqlite:///{data}/bench.sqlite3"
    os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings_test"
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return data


@contextlib.contextmanager
def web_server(log_path: Path | None = None):
    """The web server (as webapp.supervisor starts it) on this bench's database and a free
    loopback port, with a Redis (a private one if none answers); yields (port, process)."""
    import urllib.request

    from django.conf import settings

    from webapp.supervisor import ensure_redis, free_port, server_argv

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings_test"}
    private_redis = ensure_redis(env)
    port = free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    server = subprocess.Popen(server_argv("127.0.0.1", port, access_log=False), env=env, cwd=settings.BASE_DIR,
                              stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the web server did not start")
                time.sleep(0.1)
        yield port, server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
        if private_redis:
            private_redis.stop()
