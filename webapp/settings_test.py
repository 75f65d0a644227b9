"""Settings for the test suite: the normal settings with test-only defaults."""

import os

from .env import BASE_DIR

os.environ.setdefault("SECRET_KEY", "tests-only-not-a-secret")
# A folder of its own per test session (removed at its end, see tests/conftest.py): no
# member folder, journal or upload left by an earlier session can make a test pass.
os.environ.setdefault("FLOTILLA_DATA_DIR", str(BASE_DIR / "var" / "test-data" / f"session-{os.getpid()}"))
# A test session never shares a task queue or an event stream with a Flotilla, or another
# test session, on the same Redis; child processes inherit these through the environment.
os.environ.setdefault("FLOTILLA_TASK_QUEUE", f"flotilla-tests-{os.getpid()}")
os.environ.setdefault("FLOTILLA_EVENT_STREAM", f"flotilla:test-events:{os.getpid()}")
os.environ.setdefault("FLOTILLA_CHANNEL_PREFIX", f"flotilla-tests-{os.getpid()}")

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
