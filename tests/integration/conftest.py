"""Integration tests run real processes (Celery worker, status monitor, member runners)
against the real Redis at REDIS_URL and the test database; the fixtures for them are in
tests/conftest.py, shared with the browser tests."""

import pytest
from django.conf import settings

from tests.integration.conftest_slurm import slurm_cluster  # noqa: F401  (a private Slurm, for the tests that use it)
from webapp.supervisor import redis_answers


@pytest.fixture(scope="session", autouse=True)
def require_redis():
    if not redis_answers(settings.REDIS_URL):
        pytest.fail(f"integration tests need Redis at {settings.REDIS_URL} (run them with `make test`)")


