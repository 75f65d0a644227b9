"""Faults of the task queue, with real processes: a private Redis that these tests stop
and start again (never the machine's), and a Celery worker and the monitor on it."""

import os
import sys
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.conf import settings

from ensembles import services
from ensembles.management.commands.monitor import RECONCILE_INTERVAL
from ensembles.models import MemberRun, MemberStatus, Run, SubmitState
from tests.brokers import RestartableRedis, celery_redis
from tests.conftest import monitor_process, wait_for, worker_process

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
GRACE = 2  # FLOTILLA_SUBMIT_GRACE_SECONDS of this module's monitor
FAST = 2.0  # seconds a launch may take while Redis is down


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
    }
    logs = tmp_path_factory.mktemp("faults")
    try:
        with (worker_process(env, logs / "worker.log") as worker, monitor_process(env, logs / "monitor.log") as monitor,
              celery_redis(private.url)):
            from webapp.celery import app

            wait_for(lambda: app.control.ping(timeout=0.5), timeout=60, message="the private worker answers")
            monitor.wait_until_ready()
            yield SimpleNamespace(redis=private, worker=worker, monitor=monitor)
    finally:
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
