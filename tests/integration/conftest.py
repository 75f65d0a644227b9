"""Integration fixtures: real processes (Celery worker, status monitor, member runners)
against the real Redis at REDIS_URL and the test database."""

import os
import signal
import subprocess
import sys
import time

import pytest
import redis
from django.conf import settings

from webapp.supervisor import redis_answers


@pytest.fixture(scope="session", autouse=True)
def require_redis():
    if not redis_answers(settings.REDIS_URL):
        pytest.fail(f"integration tests need Redis at {settings.REDIS_URL} (run them with `make test`)")


def wait_for(condition, timeout=30.0, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{message} not met within {timeout}s")


class Process:
    """A long-running child (worker or monitor) that a test may kill -9 and restart."""

    def __init__(self, argv, env):
        self.argv, self.env = argv, env
        self.popen = None

    def start(self):
        self.popen = subprocess.Popen(self.argv, env=self.env, cwd=settings.BASE_DIR)
        return self

    def kill(self):
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self):
        if self.popen and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def stack_env(django_db_setup, test_database_url):
    """The environment worker and monitor share with this test process (same DB, queue, stream)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(settings.EVENT_STREAM, settings.CELERY_TASK_DEFAULT_QUEUE)
    yield {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "webapp.settings_test",
        "DATABASE_URL": test_database_url,
        "FLOTILLA_DATA_DIR": str(settings.DATA_DIR),
        "FLOTILLA_TASK_QUEUE": settings.CELERY_TASK_DEFAULT_QUEUE,
        "FLOTILLA_EVENT_STREAM": settings.EVENT_STREAM,
        "FLOTILLA_CANCEL_GRACE_SECONDS": "2",
    }
    client.delete(settings.EVENT_STREAM, settings.CELERY_TASK_DEFAULT_QUEUE)


def worker_process(env):
    return Process(
        [sys.executable, "-m", "celery", "-A", "webapp", "worker", "--pool", "solo", "--loglevel", "WARNING",
         "--without-gossip", "--without-mingle", "--hostname", f"tests-{os.getpid()}-{time.monotonic_ns()}@%h"],
        env,
    )


def monitor_process(env):
    return Process([sys.executable, str(settings.BASE_DIR / "manage.py"), "monitor"], env)


@pytest.fixture(scope="session")
def celery_worker_process(stack_env):
    process = worker_process(stack_env).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def monitor(stack_env):
    process = monitor_process(stack_env).start()
    yield process
    process.stop()


@pytest.fixture
def stack(celery_worker_process, monitor, transactional_db):
    """A whole Flotilla back end; tests see each other's data only through the database."""
    from ensembles.tasks import ping

    assert ping.delay().get(timeout=30) == "pong"
    return {"worker": celery_worker_process, "monitor": monitor}
