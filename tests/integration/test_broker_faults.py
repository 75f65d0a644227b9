"""Faults of the task queue, with real processes: a private Redis that these tests stop
and start again (never the machine's), and a Celery worker and the monitor on it."""

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from django.conf import settings

from ensembles import services
from ensembles.management.commands.monitor import RECONCILE_INTERVAL
from ensembles.models import MemberRun, MemberStatus, Run, SubmitState
from tests.brokers import celery_redis
from tests.conftest import Process, monitor_process, wait_for, worker_process
from webapp.supervisor import free_port, redis_answers, redis_server_binary

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
GRACE = 2  # FLOTILLA_SUBMIT_GRACE_SECONDS of this module's monitor
FAST = 2.0  # seconds a launch may take while Redis is down


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


class LoggedProcess(Process):
    """A Process whose output goes to a file the test can read."""

    def __init__(self, process: Process, log: Path):
        super().__init__(process.argv, process.env)
        self.log = log

    def start(self):
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.argv, env=self.env, cwd=settings.BASE_DIR, stdout=out, stderr=subprocess.STDOUT)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def shared_stack_paused(celery_worker_process, monitor):
    """The session's worker and monitor (on the machine's Redis) would repair these
    tests' runs as well, and so hide what this module's stack does: they pause meanwhile."""
    for process in (celery_worker_process, monitor):
        process.stop()
    yield
    for process in (celery_worker_process, monitor):
        process.start()


@pytest.fixture(scope="module")
def faults(stack_env, shared_stack_paused, tmp_path_factory):
    """A worker and the monitor on a private Redis.

    They use a queue of their own; this process sends to its usual one, which nobody
    consumes there: a task sent from here is as good as one a worker took and was
    killed with before it claimed the run (Redis would deliver it again only after its
    visibility timeout, an hour). Only the monitor's repair pass, which sends to the
    worker's queue, gets such a run submitted."""
    private = RestartableRedis()
    env = {
        **stack_env,
        "REDIS_URL": private.url,
        "FLOTILLA_TASK_QUEUE": f"{settings.CELERY_TASK_DEFAULT_QUEUE}-faults",
        "FLOTILLA_SUBMIT_GRACE_SECONDS": str(GRACE),
        "PYTHONUNBUFFERED": "1",
    }
    logs = tmp_path_factory.mktemp("faults")
    worker = LoggedProcess(worker_process(env), logs / "worker.log").start()
    monitor = LoggedProcess(monitor_process(env), logs / "monitor.log").start()
    try:
        with celery_redis(private.url):
            from webapp.celery import app

            wait_for(lambda: app.control.ping(timeout=0.5), timeout=60, message="the private worker answers")
            wait_for(lambda: "monitor: reading" in monitor.output(), timeout=60, message="the private monitor reads")
            yield SimpleNamespace(redis=private, worker=worker, monitor=monitor)
    finally:
        for process in (worker, monitor):
            process.stop()
        private.close()


@pytest.fixture
def experiment(alice):
    return services.experiment_create(owner=alice, name=f"faults-{os.getpid()}-{id(alice)}")


def add_ensemble(experiment, name):
    services.ensemble_save(experiment=experiment, spec={
        "name": name,
        "params": [{"name": "i", "values": "range(0, 3)"}],
        "params_as_args": ["i"],
        "run_settings": {"exe": sys.executable, "exe_args": ["-c", "import sys; print(sys.argv[1:])"]},
    })


def completed(run):
    members = list(MemberRun.objects.filter(run=run, latest=True))
    return members and all(m.status == MemberStatus.COMPLETED for m in members) and Run.objects.get(pk=run.pk).finished


def test_a_launch_while_redis_is_down_answers_at_once_and_the_run_completes_once_it_is_back(faults, alice, experiment):
    add_ensemble(experiment, "outage")
    retries_before = faults.monitor.output().count("retrying")
    faults.redis.stop()
    started = time.monotonic()
    run = services.run_launch(user=alice, experiment=experiment)
    assert time.monotonic() - started < FAST
    assert run.waiting_for_queue
    # the monitor lost Redis too: it says so and keeps trying
    wait_for(lambda: faults.monitor.output().count("retrying") > retries_before, timeout=15, message="the monitor retries")
    assert faults.monitor.popen.poll() is None and faults.worker.popen.poll() is None

    faults.redis.start()  # empty: no stream, no consumer group, no queued task
    wait_for(lambda: completed(run), timeout=60, message="the run completed once Redis was back")
    run.refresh_from_db()
    assert run.claimed_by.endswith(f":{faults.worker.popen.pid}")  # this module's worker, not the session's


def test_a_submit_task_lost_with_its_worker_is_sent_again_after_the_grace_period(faults, alice, experiment):
    add_ensemble(experiment, "lost")
    run = services.run_launch(user=alice, experiment=experiment)
    assert faults.redis.client().llen(settings.CELERY_TASK_DEFAULT_QUEUE) == 1  # sent, and taken by nobody
    wait_for(lambda: Run.objects.get(pk=run.pk).submit_state == SubmitState.SUBMITTED,
             timeout=GRACE + RECONCILE_INTERVAL + 5, message="submitted by the repair pass")
    run.refresh_from_db()
    assert run.claimed_at - run.created >= timedelta(seconds=GRACE)  # not sent again before the grace period
    assert run.claimed_by.endswith(f":{faults.worker.popen.pid}")
    wait_for(lambda: completed(run), timeout=30, message="the run completed")
