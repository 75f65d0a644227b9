"""Shared set-up for the benchmarks that run the whole stack (launch.py, latency.py).

- a throw-away FLOTILLA_DATA_DIR under var/; DATABASE_URL: a temp SQLite file, unless the
  environment already points at PostgreSQL (then that database is used);
- Redis: the server at REDIS_URL if it answers, else a PrivateRedis. On a shared
  server the bench claims an empty logical database (15, 14, ... 1) so that no
  other Flotilla instance on the same server (its Celery worker on the default
  queue, its monitor, its channel layer) sees the bench's tasks and pushes;
- a fresh event stream name (FLOTILLA_EVENT_STREAM) and Celery queue (FLOTILLA_TASK_QUEUE);
- child processes (Celery worker, monitor, web server) get this process's environment,
  each in its own process group, and are stopped in ``Stack.close``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from webapp.supervisor import DEFAULT_REDIS_URL, PrivateRedis, redis_answers  # noqa: E402

CLAIM_KEY = "flotilla:bench:claim"


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def _claim_redis_db(url: str) -> tuple[str, int | None]:
    """An empty logical database on the server at ``url``, marked as ours."""
    import redis

    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return url, None
    current = int(parts.path.strip("/") or 0)
    for db in range(15, 0, -1):
        if db == current:
            continue
        candidate = _with_db(url, db)
        client = redis.Redis.from_url(candidate, socket_timeout=2)
        try:
            if client.set(CLAIM_KEY, str(os.getpid()), nx=True, ex=3600):
                if client.dbsize() == 1:
                    return candidate, db
                client.delete(CLAIM_KEY)
        except redis.RedisError:
            return url, None  # e.g. a server with a single database
        finally:
            client.close()
    return url, None


def _processes() -> dict[int, tuple[str, int, float]]:
    """Every process: pid -> (name, process group, user+system CPU seconds so far), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    processes = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                head, _, tail = handle.read().rpartition(")")
        except OSError:
            continue  # gone meanwhile
        fields = tail.split()
        processes[int(entry)] = (head.partition("(")[2], int(fields[2]), (int(fields[11]) + int(fields[12])) / tick)
    return processes


class Stack:
    def __init__(self, prefix: str):
        # Under var/, where Flotilla keeps its data by default (FLOTILLA_DATA_DIR).
        (BASE_DIR / "var").mkdir(exist_ok=True)
        self.data = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-", dir=BASE_DIR / "var"))
        self.logs = self.data / "logs"
        self.logs.mkdir()
        self.children: list[subprocess.Popen] = []
        self.private_redis: PrivateRedis | None = None
        self.claimed_db: int | None = None
        os.environ["FLOTILLA_DATA_DIR"] = str(self.data)
        current = os.environ.get("DATABASE_URL", "")
        if current.startswith(("postgres://", "postgresql://", "pgsql://")):
            self.database = "postgresql"
        else:
            os.environ["DATABASE_URL"] = f"sqlite:///{self.data}/bench.sqlite3"
            self.database = "sqlite"
        os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings_test"
        os.environ.setdefault("SECRET_KEY", "bench-only-not-a-secret")
        os.environ["FLOTILLA_EVENT_STREAM"] = f"flotilla:bench:{prefix}:{uuid.uuid4().hex[:8]}"
        os.environ["FLOTILLA_TASK_QUEUE"] = f"flotilla-bench-{prefix}-{uuid.uuid4().hex[:8]}"
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
        if redis_answers(url):
            url, self.claimed_db = _claim_redis_db(url)
        else:
            self.private_redis = PrivateRedis()
            url = self.private_redis.url
        os.environ["REDIS_URL"] = url
        try:
            import django

            django.setup()
            from django.core.management import call_command

            call_command("migrate", verbosity=0)
        except BaseException:
            self.close()
            raise

    # --- children -------------------------------------------------------------

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        process = subprocess.Popen(
            argv, env=dict(os.environ), cwd=BASE_DIR, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,  # its own group: prefork children are stopped with it
        )
        log.close()
        process.bench_name = name
        self.children.append(process)
        return process

    def start_worker(self) -> subprocess.Popen:
        return self.start(
            "worker",
            [sys.executable, "-m", "celery", "-A", "webapp", "worker", "--concurrency", "2", "--loglevel", "WARNING",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "--hostname", f"bench-{os.getpid()}@%h"],
        )

    def start_monitor(self) -> subprocess.Popen:
        profile = [str(BASE_DIR / "bench" / "_cpuprofile.py")] if os.environ.get("BENCH_PROFILE_MONITOR") else []
        return self.start("monitor", [sys.executable, *profile, str(BASE_DIR / "manage.py"), "monitor"])

    def start_server(self, port: int) -> subprocess.Popen:
        from webapp.supervisor import server_argv

        return self.start("web", server_argv("127.0.0.1", port, access_log=False))

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each child's process group, and by the Redis
        and PostgreSQL servers if they run on this machine (``postgres:<pid>``
        per server process: they come and go, so only a per-process difference
        means something)."""
        processes = _processes()
        result = {
            child.bench_name: sum(cpu for _, group, cpu in processes.values() if group == child.pid) for child in self.children
        }
        redis_pid = self.redis_pid()
        if redis_pid in processes:
            result["redis"] = processes[redis_pid][2]
        if self.database == "postgresql":
            result.update({f"postgres:{pid}": cpu for pid, (name, _, cpu) in processes.items() if name == "postgres"})
        return result

    def redis_pid(self) -> int | None:
        import redis

        client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2)
        try:
            return int(client.info("server")["process_id"])
        except (redis.RedisError, KeyError, ValueError):
            return None
        finally:
            client.close()

    def check_alive(self) -> None:
        for child in self.children:
            if child.poll() is not None:
                tail = (self.logs / f"{child.bench_name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{child.bench_name} exited with {child.returncode}:\n{tail}")

    def wait_worker(self, timeout: float = 60) -> None:
        from ensembles.tasks import ping

        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                if ping.delay().get(timeout=5) == "pong":
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Celery worker did not answer a ping")

    def wait_monitor(self, timeout: float = 60) -> None:
        import redis
        from django.conf import settings

        client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.check_alive()
                try:
                    if any(group["name"] == "monitor" for group in client.xinfo_groups(settings.EVENT_STREAM)):
                        return
                except redis.ResponseError:
                    pass  # no stream yet
                if time.monotonic() > deadline:
                    raise RuntimeError("the monitor did not create its consumer group")
                time.sleep(0.05)
        finally:
            client.close()

    # --- clean-up ---------------------------------------------------------------

    def _stop_runners(self) -> None:
        """Local runners the worker started (detached, own session) that are still alive."""
        for pid_file in (self.data / "runs").glob("*/runner-*.pid"):
            try:
                pid = int(pid_file.read_text())
                if os.getpgid(pid) == pid:  # still a runner (it leads its own group), not a reused pid
                    os.killpg(pid, signal.SIGKILL)  # its members are in their own groups; they end by themselves
            except (OSError, ValueError):
                continue

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                try:
                    os.killpg(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for child in self.children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.wait(5)
        self._stop_runners()
        try:
            import redis

            client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2)
            if self.claimed_db is not None and client.get(CLAIM_KEY) == str(os.getpid()).encode():
                client.flushdb()  # an empty database we claimed: only the bench's keys are in it
            else:
                client.delete(os.environ["FLOTILLA_EVENT_STREAM"])
            client.close()
        except Exception:
            pass
        if self.private_redis:
            self.private_redis.stop()
        import shutil

        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(self.data, ignore_errors=True)
        else:
            print(f"kept={self.data}", file=sys.stderr)
