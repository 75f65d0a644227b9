"""Integration fixtures: a real Celery worker process against the real Redis at REDIS_URL."""

import os
import subprocess
import sys

import pytest
from django.conf import settings

from webapp.supervisor import redis_answers


@pytest.fixture(scope="session", autouse=True)
def require_redis():
    if not redis_answers(settings.REDIS_URL):
        pytest.fail(f"integration tests need Redis at {settings.REDIS_URL} (run them with `make test`)")


@pytest.fixture(scope="session")
def celery_worker_process():
    """A real worker (`celery -A webapp worker`), stopped at the end of the session."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings_test"}
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "webapp", "worker", "--pool", "solo", "--loglevel", "WARNING",
         "--without-gossip", "--without-mingle", "--hostname", f"tests-{os.getpid()}@%h"],
        env=env,
        cwd=settings.BASE_DIR,
    )
    yield process
    process.terminate()
    process.wait(20)
