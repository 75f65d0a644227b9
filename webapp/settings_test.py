"""Settings for the test suite: the normal settings with test-only defaults."""

import os

from .env import BASE_DIR

os.environ.setdefault("SECRET_KEY", "tests-only-not-a-secret")
os.environ.setdefault("FLOTILLA_DATA_DIR", str(BASE_DIR / "var" / "test-data"))
# Tests never share a task queue or an event stream with a Flotilla running on the same Redis.
os.environ.setdefault("FLOTILLA_TASK_QUEUE", "flotilla-tests")
os.environ.setdefault("FLOTILLA_EVENT_STREAM", "flotilla:test-events")

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
