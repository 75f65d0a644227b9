"""Redis for fault tests: a private one that a test may stop and start again (never the
machine's), and this process's Celery app pointed at it for a while (the web server,
worker and monitor get theirs from REDIS_URL in their environment)."""

import os
import secrets
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.conftest import wait_for
from webapp.supervisor import free_port, redis_answers, redis_server_binary


def _use(app, broker_url: str, result_backend: str) -> None:
    from kombu import pools

    if app._pool is not None:
        app._pool.force_close_all()
    pools.reset()  # kombu's registry of producer pools, by connection, would hand back the closed ones
    app.conf.broker_url, app.conf.result_backend = broker_url, result_backend
    # Connections, producers and the result store are kept per app (or thread): start afresh.
    app._pool = None
    app.amqp._producer_pool = None
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


@contextmanager
def celery_redis(url: str):
    """Celery's broker and result store at ``url`` inside the block."""
    from webapp.celery import app

    before = app.conf.broker_url, app.conf.result_backend
    _use(app, url, url)
    try:
        yield
    finally:
        _use(app, *before)


class RestartableRedis:
    """A redis-server on a free loopback port, with a password, that a test may stop and
    start again on the same port. It keeps nothing on disk: started again, it is empty,
    like a Redis restarted without persistence."""

    def __init__(self):
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="flotilla-faults-redis-"))
        password = secrets.token_urlsafe(24)
        self.url = f"redis://:{password}@127.0.0.1:{self.port}/0"
        config = self.folder / "redis.conf"
        with open(os.open(config, os.O_CREAT | os.O_WRONLY, 0o600), "w") as out:
            out.write(f"requirepass {password}\n")
        self.argv = [redis_server_binary(), str(config), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")]
        self.process = None
        self.start()

    def start(self):
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL)
        wait_for(lambda: self.process.poll() is not None or redis_answers(self.url, timeout=0.2), timeout=10, message="redis up")
        assert self.process.poll() is None, (self.folder / "redis.log").read_text()

    def stop(self):
        self.process.terminate()
        self.process.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)

    def close(self):
        if self.process.poll() is None:
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
