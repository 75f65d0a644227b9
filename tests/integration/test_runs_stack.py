"""The whole back end with real processes: services enqueue, a real Celery worker
submits, real runners start members, the real monitor writes statuses back."""

import os
import signal
import sys
from pathlib import Path

import pytest

from ensembles import services
from ensembles.launching import launcher_for
from ensembles.models import MemberRun, MemberStatus, Run, TERMINAL_STATUSES
from launchers.base import JobState
from tests.conftest import wait_for, worker_process

pytestmark = pytest.mark.integration
PY = sys.executable
EXIT_SCRIPT = "import os, sys; c = int(sys.argv[1].split('=')[1]); os.kill(os.getpid(), 9) if c == 9 else sys.exit(c)"


def launch(user, experiment, ensemble_spec, **options):
    services.ensemble_save(experiment=experiment, spec=ensemble_spec)
    return services.run_launch(user=user, experiment=experiment, **options)


def members_of(run):
    return list(MemberRun.objects.filter(run=run, latest=True).order_by("position"))


def all_terminal(run):
    members = members_of(run)
    return members and all(m.status in TERMINAL_STATUSES for m in members) and members


@pytest.fixture
def experiment(alice):
    return services.experiment_create(owner=alice, name=f"it-{os.getpid()}-{id(alice)}")


def test_success_failure_and_signal_end_in_the_right_states(stack, alice, experiment):
    run = launch(alice, experiment, {
        "name": "codes",
        "params": [{"name": "code", "values": "0, 3, 9"}],
        "params_as_args": ["code"],
        "run_settings": {"exe": PY, "exe_args": ["-c", EXIT_SCRIPT]},
    })
    members = wait_for(lambda: all_terminal(run), message="all members terminal")
    outcome = [(m.name, m.status, m.returncode, m.signal) for m in members]
    assert outcome == [
        ("codes_0", "Completed", 0, None),
        ("codes_1", "Failed", 3, None),
        ("codes_2", "Failed", None, signal.SIGKILL),
    ]
    assert all(m.started and m.ended and m.job_id for m in members)
    assert Path(members[0].cwd, "flotilla_params.json").exists()
    wait_for(lambda: Run.objects.get(pk=run.pk).finished, message="run finished")


def test_cancel_stops_running_members_and_queued_ones_never_start(stack, alice, experiment):
    run = launch(alice, experiment, {
        "name": "sleepy",
        "params": [{"name": "i", "values": "range(0, 3)"}],
        "run_settings": {"exe": PY, "exe_args": ["-c", "import time; print('up', flush=True); time.sleep(60)"]},
    }, concurrency=1)
    wait_for(lambda: MemberRun.objects.filter(run=run, status=MemberStatus.RUNNING).exists(), message="one running")
    services.run_cancel(run_id=run.pk)
    members = wait_for(lambda: all_terminal(run), timeout=20, message="all cancelled")
    assert [m.status for m in members] == ["Cancelled"] * 3
    assert members[0].signal == signal.SIGTERM
    never_started = members[2]  # maybe prepared ahead (its folder and empty output files), never started
    assert never_started.started is None and not never_started.job_id
    assert not Path(never_started.stdout).exists() or Path(never_started.stdout).read_text() == ""


def test_rerun_failed_makes_new_attempts_linked_to_the_old(stack, alice, experiment):
    run = launch(alice, experiment, {
        "name": "flaky",
        "params": [{"name": "code", "values": "0, 4"}],
        "params_as_args": ["code"],
        "run_settings": {"exe": PY, "exe_args": ["-c", EXIT_SCRIPT]},
    })
    wait_for(lambda: all_terminal(run) and Run.objects.get(pk=run.pk).finished, message="first attempt done")
    assert services.run_rerun_failed(run_id=run.pk) == 1
    members = wait_for(lambda: all_terminal(run) and Run.objects.get(pk=run.pk).finished and all_terminal(run))
    retried = members[1]
    assert (retried.attempt, retried.status, retried.returncode) == (2, "Failed", 4)
    assert retried.previous.status == "Failed" and not retried.previous.latest
    assert Path(retried.previous.stdout).parent.name.startswith("flaky_1.run1.1-")  # the old attempt's folder is kept
    assert members[0].attempt == 1


def test_every_run_and_attempt_keeps_its_own_files(stack, alice, experiment):
    """Run 2 of an ensemble leaves run 1's outputs and results as they were (re-run attempts
    keep theirs too: test_rerun_failed_makes_new_attempts_linked_to_the_old)."""
    script = ("import json, os, sys; print(os.environ['TAG']); "
              "json.dump({'value': float(sys.argv[-1])}, open('results.json', 'w'))")
    ensemble = services.ensemble_save(experiment=experiment, spec={
        "name": "kept", "params": [{"name": "v", "values": "1, 2"}], "params_as_args": ["v"],
        "run_settings": {"exe": PY, "exe_args": ["-c", script], "env_vars": {"TAG": "first"}}, "results_file": "results.json",
    })
    first = services.run_launch(user=alice, experiment=experiment)
    wait_for(lambda: all_terminal(first) and Run.objects.get(pk=first.pk).finished, message="run 1 done")
    services.ensemble_save(experiment=experiment, ensemble=ensemble, spec={
        "name": "kept", "params": [{"name": "v", "values": "1, 2"}], "params_as_args": ["v"],
        "run_settings": {"exe": PY, "exe_args": ["-c", script], "env_vars": {"TAG": "second"}}, "results_file": "results.json",
    })
    second = services.run_launch(user=alice, experiment=experiment)
    wait_for(lambda: all_terminal(second) and Run.objects.get(pk=second.pk).finished, message="run 2 done")
    for run, tag in ((first, "first"), (second, "second")):
        for member in members_of(run):
            assert member.status == "Completed", member.error
            assert Path(member.stdout).read_text() == f"{tag}\n"
            assert member.results == {"value": float(member.params["v"])}
    assert members_of(first)[0].cwd != members_of(second)[0].cwd


def test_the_concurrency_limit_is_held(stack, alice, experiment):
    run = launch(alice, experiment, {
        "name": "limited",
        "params": [{"name": "i", "values": "range(0, 6)"}],
        "run_settings": {"exe": PY, "exe_args": ["-c", "import time; time.sleep(0.4)"]},
    }, concurrency=2)
    members = wait_for(lambda: all_terminal(run), message="all done")
    spans = [(m.started, m.ended) for m in members]
    most = max(sum(s <= start < e for s, e in spans) for start, _ in spans)
    assert most == 2


def test_a_monitor_killed_mid_run_catches_up_within_5_seconds(stack, stack_env, alice, experiment):
    run = launch(alice, experiment, {
        "name": "steady",
        "params": [{"name": "i", "values": "range(0, 8)"}],
        "run_settings": {"exe": PY, "exe_args": ["-c", "import time; time.sleep(0.5)"]},
    }, concurrency=4)
    wait_for(lambda: MemberRun.objects.filter(run=run, status=MemberStatus.RUNNING).exists(), message="running")
    stack["monitor"].kill()
    # members keep running and exiting while nobody watches
    wait_for(lambda: all(
        status.state == JobState.COMPLETED
        for status in launcher_for(run).status([str(m.pk) for m in members_of(run)]).values()
    ), message="all exited, as the runner recorded")
    stack["monitor"].start()
    members = wait_for(lambda: all_terminal(run), timeout=5, message="DB caught up after restart")
    assert [m.status for m in members] == ["Completed"] * 8


def test_a_worker_killed_while_submitting_1000_members_loses_none_and_runs_none_twice(
    stack, stack_env, alice, experiment, tmp_path
):
    ledger = tmp_path / "ran.log"
    run = launch(alice, experiment, {
        "name": "many",
        "params": [{"name": "i", "values": "range(0, 1000)"}],
        "run_settings": {"exe": "/bin/sh", "exe_args": ["-c", f'echo "$SSKEYOUT" >> {ledger}']},
    })
    wait_for(lambda: Run.objects.get(pk=run.pk).submit_state == "submitting", interval=0.005, message="submitting")
    stack["worker"].kill()
    stack["worker"].popen = worker_process(stack_env).start().popen  # a restarted worker
    members = wait_for(lambda: all_terminal(run), timeout=90, message="all 1000 members terminal")
    assert len(members) == 1000
    assert {m.status for m in members} == {"Completed"}
    lines = ledger.read_text().split()
    assert len(lines) == 1000 and len(set(lines)) == 1000  # every member ran exactly once


def test_reconcile_resubmits_members_whose_runner_died_before_starting_them_with_their_files(db, alice, monkeypatch):
    """A runner that died before its first line leaves Queued members nobody runs:
    the monitor's reconcile submits them again, and they still get their directories."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from launchers.local import LocalLauncher

    experiment = services.experiment_create(owner=alice, name="orphans")
    ensemble = services.ensemble_save(experiment=experiment, spec={
        "name": "orph",
        "params": [{"name": "n", "values": "1, 2"}],
        "run_settings": {"exe": PY, "exe_args": ["-c", "print(open('input.cfg').read())"]},
    })
    services.file_attach_upload(owner=ensemble, uploaded_file=SimpleUploadedFile("input.cfg", b"n = ;n;\n"),
                                action="configure", user=alice)
    run = services.run_launch(user=alice, experiment=experiment)  # in the test's transaction: nothing is enqueued
    with monkeypatch.context() as patched:
        patched.setattr(LocalLauncher, "submit", lambda self, jobs, **options: None)  # the runner dies at once
        assert services.run_submit(run_id=run.pk)
    assert [m.status for m in members_of(run)] == ["Queued", "Queued"]

    services.runs_reconcile()
    launcher = launcher_for(run)
    keys = [str(m.pk) for m in members_of(run)]
    wait_for(lambda: all(s.state.terminal for s in launcher.status(keys).values()), message="orphans ran")
    assert [s.state for s in launcher.status(keys).values()] == [JobState.COMPLETED] * 2
    assert [Path(m.stdout).read_text() for m in members_of(run)] == ["n = 1\n\n", "n = 2\n\n"]
    wait_for(lambda: not launcher.runner_alive())
