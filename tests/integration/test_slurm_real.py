"""The Slurm launcher against a real private Slurm (tests/integration/conftest_slurm.py):
members as batch jobs, their states from one squeue call, results after Slurm forgets
the job, quoting end to end, a time limit, two clusters at once, and the cluster
script's restarts."""

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from launchers.base import JobSpec, JobState
from launchers.slurm import JOURNAL_FILE, SlurmLauncher, parse_exit_code, parse_scontrol_job
from launchers.slurm_cluster import SlurmCluster
from tests.integration.conftest_slurm import private_slurm

pytestmark = pytest.mark.integration

TRICKY = ["two words", "it's", 'say "hi"', "$HOME and `id`", "back\\slash", "# no comment", "50%", "new\nline"]


def wait_for(condition, timeout=30.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return result


@pytest.fixture
def folders():
    """Member folders any account can use (pytest's own tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="flotilla-slurm-test-"))
    root.chmod(0o777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def make_launcher(cluster, work_dir, **options) -> SlurmLauncher:
    return SlurmLauncher(work_dir=work_dir, env=cluster.env, **options)


def member(folders: Path, key: str, argv: list[str], **fields) -> JobSpec:
    name = fields.pop("name", f"sweep_{key}")
    cwd = folders / fields.pop("folder", name)
    cwd.mkdir(exist_ok=True)
    cwd.chmod(0o777)
    return JobSpec(key=key, name=name, argv=argv, cwd=str(cwd), stdout=f"{name}.out", stderr=f"{name}.err", **fields)


def states(launcher, keys, *, until, timeout=30.0):
    """Poll until ``until(statuses)`` holds; returns the statuses."""
    def poll():
        found = launcher.status(keys)
        return found if until(found) else None

    return wait_for(poll, timeout, f"states of {keys}")


def counting_commands(launcher):
    calls = []
    run = launcher.run_command

    def counted(argv, **kwargs):
        calls.append(argv[0])
        return run(argv, **kwargs)

    launcher.run_command = counted
    return calls


def test_members_complete_fail_and_are_cancelled(slurm_cluster, folders, tmp_path):
    launcher = make_launcher(slurm_cluster, tmp_path / "work")
    jobs = [
        member(folders, "ok", ["/bin/sh", "-c", "echo done"]),
        member(folders, "bad", ["/bin/sh", "-c", "echo oops >&2; exit 3"]),
        member(folders, "long", ["/bin/sleep", "300"]),
    ]
    launcher.submit(jobs, group="run-1")
    calls = counting_commands(launcher)
    found = states(launcher, ["ok", "bad", "long"], until=lambda s: s["ok"].state.terminal and s["bad"].state.terminal
                   and s["long"].state == JobState.RUNNING)
    assert calls.count("squeue") == len(calls)  # nothing but squeue while Slurm knows the jobs
    assert (found["ok"].state, found["ok"].returncode) == (JobState.COMPLETED, 0)
    assert (found["bad"].state, found["bad"].returncode) == (JobState.FAILED, 3)
    assert found["ok"].started <= found["ok"].ended
    assert Path(jobs[0].cwd, "sweep_ok.out").read_text() == "done\n"
    assert Path(jobs[1].cwd, "sweep_bad.err").read_text() == "oops\n"
    scontrol = subprocess.run(["scontrol", "show", "job", found["bad"].job_id], env={**os.environ, **slurm_cluster.env},
                              capture_output=True, text=True, check=True).stdout
    assert parse_exit_code(parse_scontrol_job(scontrol)["ExitCode"]) == (3, 0)

    calls.clear()
    status = launcher.status(["ok", "bad", "long"])
    assert calls == ["squeue"]  # finished jobs' details come from their status files, not from more commands
    assert status["long"].state == JobState.RUNNING

    launcher.cancel([jobs[2]], group="run-1")
    cancelled = states(launcher, ["long"], until=lambda s: s["long"].state.terminal)["long"]
    assert (cancelled.state, cancelled.signal) == (JobState.CANCELLED, 15)


def test_a_resubmit_after_a_crash_between_sbatch_and_the_journal_submits_nothing(slurm_cluster, folders, tmp_path):
    work = tmp_path / "work"
    job = member(folders, "once", ["/bin/sleep", "300"])
    make_launcher(slurm_cluster, work).submit([job], group="g")
    journal = work / JOURNAL_FILE
    lines = journal.read_text().splitlines()
    job_id = json.loads(lines[1])["job_id"]
    journal.write_text(lines[0] + "\n")  # the submitter died after sbatch, before recording the job id

    retry = make_launcher(slurm_cluster, work)
    assert retry.unstarted([job]) == []
    calls = counting_commands(retry)
    retry.submit([job], group="g")
    assert "sbatch" not in calls
    assert retry.status(["once"])["once"].job_id == job_id
    retry.cancel([job], group="g")


def test_results_are_known_after_slurm_forgets_the_job(slurm_cluster, folders, tmp_path):
    work = tmp_path / "work"
    launcher = make_launcher(slurm_cluster, work)
    jobs = [member(folders, "three", ["/bin/sh", "-c", "exit 3"]),
            member(folders, "zero", [sys.executable, "-c", "import json; json.dump({'loss': 0.5}, open('out.json', 'w'))"],
                   results_file="out.json")]
    launcher.submit(jobs, group="g")
    ended = states(launcher, ["three", "zero"], until=lambda s: all(v.state.terminal for v in s.values()))
    assert ended["zero"].results == {"loss": 0.5}

    forgetful = make_launcher(slurm_cluster, work)
    forgetful.queue = lambda job_ids: {}  # as after MinJobAge: squeue knows none of them
    calls = counting_commands(forgetful)
    after = forgetful.status(["three", "zero"])
    assert calls == []  # the status files answer
    assert (after["three"].state, after["three"].returncode) == (JobState.FAILED, 3)
    assert (after["zero"].state, after["zero"].results) == (JobState.COMPLETED, {"loss": 0.5})
    assert after["three"].started == pytest.approx(ended["three"].started)


def test_a_job_nobody_knows_is_lost_and_known_ids_still_answer(slurm_cluster, folders, tmp_path):
    work = tmp_path / "work"
    launcher = make_launcher(slurm_cluster, work)
    job = member(folders, "real", ["/bin/sleep", "300"])
    launcher.submit([job], group="g")
    with open(work / JOURNAL_FILE, "a") as journal:  # a job id the scheduler never had, and no status file
        journal.write(json.dumps({"key": "ghost", "job_id": "999999", "cwd": str(folders),
                                  "status_file": str(folders / "ghost.status"), "results_file": ""}) + "\n")
    found = launcher.status(["real", "ghost"])
    assert found["real"].state in (JobState.QUEUED, JobState.RUNNING)
    assert found["ghost"].state == JobState.LOST and "no longer knows job 999999" in found["ghost"].error
    assert launcher.status(["ghost"])["ghost"].state == JobState.LOST  # asked alone: squeue exits 1
    launcher.cancel([job], group="g")


def test_values_with_spaces_quotes_and_dollars_reach_the_member_intact(slurm_cluster, folders, tmp_path):
    launcher = make_launcher(slurm_cluster, tmp_path / "work")
    printer = "import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), os.environ['MSG']]))"
    job = member(folders, "quotes", [sys.executable, "-c", printer, *TRICKY], name="it's a \"job\" $HOME",
                 folder="it's 50% $odd", env={"MSG": "it's $HOME `id`"},
                 resources={"time": "5", "batch_args": {"mail-type": "END", "--mail-user": "it's \"q\" $HOME #x"}})
    launcher.submit([job], group="g")
    done = states(launcher, ["quotes"], until=lambda s: s["quotes"].state.terminal)["quotes"]
    output = Path(job.cwd, f"{job.name}.out").read_text()
    assert done.state == JobState.COMPLETED, Path(job.cwd, f"{job.name}.err").read_text()
    assert json.loads(output) == [TRICKY, job.cwd, "it's $HOME `id`"]
    shown = subprocess.run(["scontrol", "show", "job", done.job_id], env={**os.environ, **slurm_cluster.env},
                           capture_output=True, text=True, check=True).stdout
    assert "MailUser=it's \"q\" $HOME #x MailType=END" in shown
    assert "JobName=it's a \"job\" $HOME\n" in shown


def test_a_time_limit_ends_the_member_as_failed_with_time_limit(slurm_cluster, folders, tmp_path):
    launcher = make_launcher(slurm_cluster, tmp_path / "work")
    job = member(folders, "slow", ["/bin/sleep", "300"], resources={"time": "1"})
    launcher.submit([job], group="g")
    running = states(launcher, ["slow"], until=lambda s: s["slow"].state == JobState.RUNNING)["slow"]
    # Slurm counts limits in minutes and checks them every 30 s: as its operator, move the
    # job's end to now, and the next check ends it with TIMEOUT (in at most ~30 s, not 60-90).
    subprocess.run(["scontrol", "update", f"jobid={running.job_id}", "EndTime=now"],
                   env={**os.environ, **slurm_cluster.env}, check=True, capture_output=True)
    ended = states(launcher, ["slow"], until=lambda s: s["slow"].state.terminal, timeout=60)["slow"]
    assert (ended.state, ended.error) == (JobState.FAILED, "time limit")


def test_two_clusters_at_once(slurm_cluster, folders, tmp_path):
    with private_slurm(name="second") as second:
        assert second.name != slurm_cluster.name and set(second.ports).isdisjoint(slurm_cluster.ports)
        first_launcher = make_launcher(slurm_cluster, tmp_path / "one")
        second_launcher = make_launcher(second, tmp_path / "two")
        first_launcher.submit([member(folders, "a", ["/bin/sh", "-c", "echo one"])], group="g")
        second_launcher.submit([member(folders, "b", ["/bin/sh", "-c", "echo two"])], group="g")
        assert states(first_launcher, ["a"], until=lambda s: s["a"].state.terminal)["a"].state == JobState.COMPLETED
        assert states(second_launcher, ["b"], until=lambda s: s["b"].state.terminal)["b"].state == JobState.COMPLETED
        comments = second.command(["squeue", "-h", "-t", "all", "-o", "%k"]).stdout.split()
        assert comments == ["flotilla:b"]  # the first cluster's job is not on the second


def test_a_cluster_restarts_with_its_state_and_copes_with_stale_pid_files():
    with private_slurm() as cluster:
        job_id = int(cluster.command(["sbatch", "--parsable", "--output=/dev/null", "--wrap", "true"]).stdout)
        cluster.stop()
        assert not any(cluster.pid(daemon) for daemon in ("munged", "slurmctld", "slurmd"))
        cluster.pid_file("slurmctld").write_text(f"{os.getpid()}\n")  # a pid file naming another program
        cluster.start()
        assert int(cluster.command(["sbatch", "--parsable", "--output=/dev/null", "--wrap", "true"]).stdout) > job_id  # job ids continue

        pids = {daemon: cluster.pid(daemon) for daemon in ("slurmd", "slurmctld", "munged")}
        for pid in pids.values():  # kill -9: every pid file is stale
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(cluster.pid(daemon) for daemon in pids), what="the daemons to die")
        SlurmCluster(cluster.directory).start()
        assert cluster.running()


def test_jobs_run_as_the_account_that_submits_them(slurm_cluster, folders, tmp_path):
    if os.geteuid() != 0 or not shutil.which("sudo"):
        pytest.skip("needs root and sudo")
    account = "nobody"
    launcher = make_launcher(slurm_cluster, tmp_path / "work", command_prefix=["sudo", "-n", "-u", account, "--"])
    job = member(folders, "as-nobody", ["id", "-u"])  # (this venv's Python is in root's home)
    launcher.submit([job], group="g")
    done = states(launcher, ["as-nobody"], until=lambda s: s["as-nobody"].state.terminal)["as-nobody"]
    assert done.state == JobState.COMPLETED, Path(job.cwd, "sweep_as-nobody.err").read_text()
    assert Path(job.cwd, "sweep_as-nobody.out").read_text().strip() == str(pwd.getpwnam(account).pw_uid)
    owner = subprocess.run(["squeue", "-h", "-t", "all", "-j", done.job_id, "-o", "%u"], capture_output=True, text=True,
                           env={**os.environ, **slurm_cluster.env}).stdout.strip()
    assert owner == account
