"""Shared fixtures: the personas alice, bob (same role, different owner) and charlie (staff)."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from django.conf import settings

from ensembles import services

PASSWORD = "correct-horse-battery"


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's own data folder (webapp/settings_test.py), not one the environment chose."""
    data = Path(settings.DATA_DIR)
    if data.name == f"session-{os.getpid()}" and data.parent.name == "test-data":
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password=PASSWORD)


@pytest.fixture
def charlie(django_user_model):
    """Staff: uses the Django admin, but in the app sees only his own experiments."""
    return django_user_model.objects.create_user("charlie", password=PASSWORD, is_staff=True)


def _client_for(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice_client(alice):
    return _client_for(alice)


@pytest.fixture
def bob_client(bob):
    return _client_for(bob)


@pytest.fixture
def charlie_client(charlie):
    return _client_for(charlie)


@pytest.fixture
def experiment(alice):
    return services.experiment_create(owner=alice, name="heat", description="Heat diffusion")


@pytest.fixture
def ensemble(experiment):
    return services.ensemble_save(
        experiment=experiment,
        spec={
            "name": "sweep",
            "params": [{"name": "alpha", "values": "1, 2"}, {"name": "beta", "values": '"x", "y", "z"'}],
            "params_as_args": ["alpha"],
            "run_settings": {"exe": "/bin/echo", "exe_args": ["run"]},
        },
    )


@pytest.fixture(scope="session")
def test_database_url(django_db_setup) -> str:
    """A DATABASE_URL for child processes (daphne, Celery, the monitor) to use the test database."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


# --- the back end as real processes (integration and browser tests) ------------

SERVER_LOG_ERRORS = ("Traceback", "Exception inside application")


@contextlib.contextmanager
def web_server(database_url: str, *, log_prefix: str, drop_env=()):
    """The web server (uvicorn, as webapp.supervisor starts it) on a free loopback port
    and the given database; yields (base URL, port, process). Its log goes to a file (a
    pipe nobody reads would fill and stall it), and must be free of tracebacks at the end."""
    from webapp.supervisor import free_port, server_argv

    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings_test", "DATABASE_URL": database_url}
    for name in drop_env:
        env.pop(name, None)
    log = tempfile.NamedTemporaryFile(prefix=f"flotilla-{log_prefix}-server-", suffix=".log", delete=False)
    process = subprocess.Popen(server_argv("127.0.0.1", port, access_log=False), env=env, cwd=settings.BASE_DIR,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError(f"the server did not start: {open(log.name, errors='replace').read()[-2000:]}")
                time.sleep(0.1)
        yield url, port, process
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        output = open(log.name, errors="replace").read()
        os.unlink(log.name)
    errors = [marker for marker in SERVER_LOG_ERRORS if marker in output]
    assert not errors, f"the server logged {errors}:\n{output[-5000:]}"


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


def _executable_by_others(path: str) -> bool:
    """Whether any account may run ``path``: every folder on its way searchable, the file executable, by others."""
    real = Path(os.path.realpath(path))
    if not os.stat(real).st_mode & 0o001:
        return False
    return all(os.stat(folder).st_mode & 0o001 for folder in real.parents)


@pytest.fixture(scope="session")
def member_agent():
    """The member-side agent where every Unix account can run it (FLOTILLA_RUN_AS=user):
    a copy of its code in a folder of its own (this checkout may sit in a private home),
    on an interpreter the accounts may execute. Set for this process and the stack's."""
    from launchers.accounts import install_agent

    folder = Path(tempfile.mkdtemp(prefix="flotilla-agent-"))
    folder.chmod(0o755)
    python = next((p for p in (sys.executable, "/usr/bin/python3") if os.path.exists(p) and _executable_by_others(p)), None)
    agent = {"FLOTILLA_AGENT_DIR": str(install_agent(folder)), "FLOTILLA_AGENT_PYTHON": python or sys.executable}
    settings.AGENT_DIR, settings.AGENT_PYTHON = Path(agent["FLOTILLA_AGENT_DIR"]), agent["FLOTILLA_AGENT_PYTHON"]
    yield agent
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def stack_env(django_db_setup, test_database_url, member_agent):
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
        **member_agent,
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
