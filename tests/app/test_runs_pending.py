"""Runs whose submission never started: a launch while the task queue (Redis) is down,
a submit task lost with the worker that took it, and stopping such a run.

The database commits for real here (transactional tests), as in production: the
submit task is sent on commit, inside run_launch."""

import os
import socket
import time
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from ensembles import services, tasks
from ensembles.models import MemberRun, MemberStatus, Run, StatusEvent, SubmitState
from tests.brokers import celery_redis
from webapp.supervisor import free_port

pytestmark = pytest.mark.django_db(transaction=True)
FAST = 2.0  # seconds: how long a send to a broker that is down may take, at most


@pytest.fixture
def queue_down():
    """Nothing listens where Celery sends (Redis stopped)."""
    with celery_redis(f"redis://127.0.0.1:{free_port()}/0"):
        yield


@pytest.fixture
def queue_hung():
    """Something accepts connections where Celery sends, and never answers (a Redis that hangs)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        with celery_redis(f"redis://127.0.0.1:{listener.getsockname()[1]}/0"):
            yield


def spy_on_submit(monkeypatch) -> list:
    """The run_submit tasks sent from now on (no worker here)."""
    calls = []
    monkeypatch.setattr(tasks.run_submit, "delay", lambda *args: calls.append(args))
    return calls


@pytest.fixture
def sent(monkeypatch):
    return spy_on_submit(monkeypatch)


def launch(client, experiment):
    started = time.monotonic()
    response = client.post(reverse("ensembles:run_launch", args=[experiment.pk]), follow=True)
    return response, time.monotonic() - started


def statuses(run):
    return set(MemberRun.objects.filter(run=run, latest=True).values_list("status", flat=True))


def test_a_launch_while_the_task_queue_is_down_answers_at_once_and_the_run_waits(alice_client, experiment, ensemble, queue_down):
    response, elapsed = launch(alice_client, experiment)
    run = Run.objects.get()
    assert elapsed < FAST
    assert response.redirect_chain[-1][0] == reverse("ensembles:run_detail", args=[run.pk])
    assert services.QUEUE_UNREACHABLE in response.content.decode()
    assert run.submit_state == SubmitState.PENDING and run.waiting_for_queue
    assert statuses(run) == {MemberStatus.NEW} and run.members.count() == 6


def test_a_launch_while_the_task_queue_hangs_answers_within_two_seconds(alice_client, experiment, ensemble, queue_hung):
    response, elapsed = launch(alice_client, experiment)
    assert elapsed < FAST + 1  # one retry, each given a second to answer
    assert services.QUEUE_UNREACHABLE in response.content.decode()
    assert Run.objects.get().waiting_for_queue


def test_the_repair_pass_sends_a_submission_again_once_the_queue_is_back(alice, experiment, ensemble, monkeypatch):
    with celery_redis(f"redis://127.0.0.1:{free_port()}/0"):
        run = services.run_launch(user=alice, experiment=experiment)
        assert run.waiting_for_queue
        started = time.monotonic()
        services.runs_reconcile()  # still down: it tries, fails fast, and the run keeps waiting
        assert time.monotonic() - started < FAST
        run.refresh_from_db()
        assert run.waiting_for_queue

    sent = spy_on_submit(monkeypatch)  # the queue is back
    services.runs_reconcile()
    assert sent == [(run.pk,)]
    run.refresh_from_db()
    assert run.submit_state == SubmitState.PENDING and not run.waiting_for_queue
    services.runs_reconcile()  # sent less than a grace period ago: not again
    assert sent == [(run.pk,)]


def test_a_submission_nobody_claimed_within_the_grace_period_is_sent_again_once(alice, experiment, ensemble, sent, settings):
    """A worker took the task and died before claiming it: Redis would redeliver it in an hour."""
    run = services.run_launch(user=alice, experiment=experiment)
    assert sent == [(run.pk,)]
    services.runs_reconcile()
    assert sent == [(run.pk,)]  # within the grace period
    Run.objects.filter(pk=run.pk).update(enqueued_at=timezone.now() - timedelta(seconds=settings.SUBMIT_GRACE_SECONDS + 1))
    services.runs_reconcile()
    services.runs_reconcile()
    assert sent == [(run.pk,), (run.pk,)]
    # once a worker has claimed it (this process stands for it), nothing is sent any more
    Run.objects.filter(pk=run.pk).update(
        submit_state=SubmitState.SUBMITTING, claimed_at=timezone.now(), claimed_by=f"{socket.gethostname()}:{os.getpid()}",
        enqueued_at=timezone.now() - timedelta(hours=1),
    )
    services.runs_reconcile()
    assert len(sent) == 2


def test_stopping_a_run_that_never_started_cancels_it_at_once_and_allows_a_relaunch(alice_client, experiment, ensemble, queue_down):
    launch(alice_client, experiment)
    run = Run.objects.get()
    started = time.monotonic()
    response = alice_client.post(reverse("ensembles:run_cancel", args=[run.pk]))
    assert response.status_code == 200 and time.monotonic() - started < FAST
    assert "none of its members started" in response.content.decode()
    run.refresh_from_db()
    assert run.submit_state == SubmitState.CANCELLED and run.finished
    assert statuses(run) == {MemberStatus.CANCELLED}
    assert StatusEvent.objects.filter(run=run, status=MemberStatus.CANCELLED).count() == 6

    assert services.run_submit(run_id=run.pk) is False  # the submit task, arriving late, does nothing
    assert statuses(run) == {MemberStatus.CANCELLED}

    response, _ = launch(alice_client, experiment)
    assert "still active" not in response.content.decode()
    assert list(Run.objects.order_by("number").values_list("number", flat=True)) == [1, 2]


def test_stopping_a_submitted_run_while_the_queue_is_down_says_so(alice_client, alice, experiment, ensemble, sent):
    run = services.run_launch(user=alice, experiment=experiment)
    Run.objects.filter(pk=run.pk).update(submit_state=SubmitState.SUBMITTED)
    with celery_redis(f"redis://127.0.0.1:{free_port()}/0"):
        response = alice_client.post(reverse("ensembles:run_cancel", args=[run.pk]))
    assert response.status_code == 200
    assert "task queue is not reachable" in response.content.decode()
    assert Run.objects.get(pk=run.pk).finished is None
