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
from tests.logs import LogFile

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
    return services.experiment_create(owner=alice, name="heat", description="Heat diffusion", cluster=local_cluster())


def local_cluster():
    """This machine's processes (the row the migrations create, gone after a flushed test)."""
    from ensembles.models import Cluster

    return Cluster.objects.get_or_create(name="local", defaults={"scheduler": "local"})[0]


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

_log_folder: Path | None = None


@pytest.fixture(scope="session", autouse=True)
def process_log_folder(tmp_path_factory) -> Path:
    """Where this session's back-end processes write their output (kept after the session)."""
    global _log_folder
    _log_folder = tmp_path_factory.mktemp("process-logs")
    return _log_folder


def session_log(name: str) -> Path:
    return _log_folder / f"{name}.log"


def wait_for(condition, timeout=30.0, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{message} not met within {timeout}s")


class Process:
    """A long-running child (web server, worker, monitor) that a test may kill -9 and start
    again. Its output goes to a log file, appended to on each start (a pipe nobody reads
    would fill and stall it), that must stay free of tracebacks (process_logs)."""

    def __init__(self, argv, env, log: Path, *, banner: str):
        self.argv, self.env = argv, env
        self.log = LogFile(log)
        self.banner = banner  # what it logs once started
        self.name = self.log.path.stem
        self.popen = None
        self.started_at = 0  # the log's size at the last start

    def start(self):
        self.started_at = self.log.size()
        with open(self.log.path, "ab") as out:  # unbuffered: tests read the log while it runs
            self.popen = subprocess.Popen(self.argv, env={**self.env, "PYTHONUNBUFFERED": "1"}, cwd=settings.BASE_DIR,
                                          stdout=out, stderr=subprocess.STDOUT)
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

    def output(self) -> str:
        """Everything it logged, over all its starts."""
        return self.log.path.read_text(errors="replace")

    def since_start(self) -> str:
        with open(self.log.path, "rb") as log:
            log.seek(self.started_at)
            return log.read().decode(errors="replace")

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Wait until it logs its banner after its last start: proof that its log is written."""
        def logged():
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.since_start()[-3000:]}")
            return self.banner in self.since_start()

        wait_for(logged, timeout=timeout, interval=0.1, message=f"{self.banner!r} in {self.log.path}")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
        errors = self.log.errors(self.name, "since the last check, up to its stop")
        assert not errors, errors


class WebServer(Process):
    """The web server (uvicorn, as webapp.supervisor starts it) on a loopback port chosen
    once: started again, it binds the same port, so open pages reconnect to the same URL."""

    def __init__(self, env, log: Path):
        from webapp.supervisor import free_port, server_argv

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(server_argv("127.0.0.1", self.port, access_log=False), env, log,
                         banner=f"Uvicorn running on {self.url}")

    def start(self):
        """Start it and wait until it answers."""
        super().start()

        def answers():
            if self.popen.poll() is not None:
                raise RuntimeError(f"the web server did not start:\n{self.since_start()[-3000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1)
                return True
            except OSError:
                return False

        try:
            wait_for(answers, timeout=60, interval=0.1, message=f"the web server answers at {self.url}")
            self.wait_until_ready(timeout=10)
        except BaseException:
            self.kill()
            raise
        return self


def web_env(database_url: str, *, drop_env=()) -> dict:
    """The web server's environment: this process's, on the given database."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings_test", "DATABASE_URL": database_url}
    for name in drop_env:
        env.pop(name, None)
    return env


@contextlib.contextmanager
def web_server(database_url: str, *, log_prefix: str, drop_env=()):
    """The web server on a free loopback port and the given database; yields (base URL,
    port, process). A traceback in its log fails the caller when it stops."""
    with WebServer(web_env(database_url, drop_env=drop_env), session_log(f"{log_prefix}-server")) as server:
        yield server.url, server.port, server.popen


# Session fixtures that run a back-end process: a test that uses one fails if the process
# logs a traceback while the test runs (its fixtures' set-up and tear-down included).
PROCESS_FIXTURES = ("celery_worker_process", "monitor", "asgi_server")


class ProcessLogs:
    """The logs of the back-end processes one test uses (process_logs)."""

    def __init__(self):
        self.watched: list[tuple[Process, str]] = []  # and what each logged before the test

    def watch(self, process: Process) -> None:
        """Check ``process``'s log from now to the end of the test."""
        self.watched.append((process, process.log.errors(process.name, "before this test, since the last check")))

    def report(self) -> str:
        reports = [before for _, before in self.watched]
        reports += [process.log.errors(process.name, "during this test") for process, _ in self.watched]
        return "\n\n".join(report for report in reports if report)


@pytest.fixture(autouse=True)
def process_logs(request):
    """Fails, at its tear-down, a test during which a back-end process it used logged a
    traceback, with the lines in the message."""
    logs = ProcessLogs()
    for name in PROCESS_FIXTURES:
        if name in request.fixturenames:
            logs.watch(request.getfixturevalue(name))
    yield logs
    report = logs.report()
    if report:
        pytest.fail(report, pytrace=False)


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


def worker_process(env, log: Path | None = None):
    queue = env.get("FLOTILLA_TASK_QUEUE", settings.CELERY_TASK_DEFAULT_QUEUE)
    return Process(
        [sys.executable, "-m", "celery", "-A", "webapp", "worker", "--pool", "solo", "--loglevel", "WARNING",
         "--without-gossip", "--without-mingle", "--hostname", f"tests-{os.getpid()}-{time.monotonic_ns()}@%h"],
        env, log or session_log("worker"), banner=f".> {queue} exchange=",  # the banner's list of queues
    )


def monitor_process(env, log: Path | None = None):
    stream = env.get("FLOTILLA_EVENT_STREAM", settings.EVENT_STREAM)
    return Process([sys.executable, str(settings.BASE_DIR / "manage.py"), "monitor"], env, log or session_log("monitor"),
                   banner=f"monitor: reading {stream} ")


@pytest.fixture(scope="session")
def celery_worker_process(stack_env):
    with worker_process(stack_env) as process:
        process.wait_until_ready()
        yield process


@pytest.fixture(scope="session")
def monitor(stack_env):
    with monitor_process(stack_env) as process:
        process.wait_until_ready()
        yield process


@pytest.fixture(scope="module")
def shared_stack_paused(celery_worker_process, monitor):
    """For a module that runs a stack of its own (on a private Redis, for fault tests): the
    session's worker and monitor would repair its runs as well, and so hide what its own
    stack does. They pause meanwhile."""
    for process in (celery_worker_process, monitor):
        process.stop()
    yield
    for process in (celery_worker_process, monitor):
        process.start()


@pytest.fixture
def stack(celery_worker_process, monitor, transactional_db):
    """A whole Flotilla back end; tests see each other's data only through the database."""
    from ensembles.tasks import ping

    assert ping.delay().get(timeout=30) == "pong"
    return {"worker": celery_worker_process, "monitor": monitor}
