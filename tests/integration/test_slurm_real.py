"""The Slurm launcher against a real private Slurm (tests/integration/conftest_slurm.py):
members as batch jobs, their states from one squeue call, results after Slurm forgets
the job, quoting end to end, a time limit, two clusters at once, and the cluster
script's restarts; job arrays (throttle, split at MaxArraySize, 1000 tasks) and batch
ensembles (members side by side in one job, each with its own status and cancel)."""

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
from launchers.slurm import (
    JOURNAL_FILE, SlurmLauncher, parse_exit_code, parse_scontrol_job, read_status_file, status_file,
)
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


# --- job arrays and batch ensembles ------------------------------------------------------


def overlap(statuses) -> int:
    """The most members that ran at the same time, from their start and end times."""
    edges = sorted([(s.started, 1) for s in statuses] + [(s.ended, -1) for s in statuses], key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_an_array_runs_at_most_its_throttle_at_once_and_each_task_keeps_its_status(slurm_cluster, folders, tmp_path):
    launcher = make_launcher(slurm_cluster, tmp_path / "work")
    printer = "import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), os.environ['MSG']]))"
    jobs = [member(folders, f"t{i}", ["/bin/sh", "-c", f"{sys.executable} -c \"$0\" \"$@\"; sleep 1; exit {3 if i == 3 else 0}",
                                      printer, *TRICKY, str(i)], env={"MSG": f"it's $HOME {i}"}) for i in range(5)]
    calls = counting_commands(launcher)
    launcher.submit_array(jobs, group="g", concurrency=2, name="sweep array")
    assert calls == ["sbatch"]
    keys = [job.key for job in jobs]
    seen_running = []

    def until(found):
        seen_running.append(sum(status.state == JobState.RUNNING for status in found.values()))
        return all(status.state.terminal for status in found.values())

    ended = states(launcher, keys, until=until, timeout=60)
    assert max(seen_running) <= 2
    assert overlap(list(ended.values())) <= 2
    array_id = ended["t0"].job_id.split("_")[0]
    assert [ended[key].job_id for key in keys] == [f"{array_id}_{i}" for i in range(5)]
    assert {key: (status.state, status.returncode) for key, status in ended.items()} == {
        "t0": (JobState.COMPLETED, 0), "t1": (JobState.COMPLETED, 0), "t2": (JobState.COMPLETED, 0),
        "t3": (JobState.FAILED, 3), "t4": (JobState.COMPLETED, 0)}
    for i, job in enumerate(jobs):
        output = json.loads(Path(job.cwd, f"{job.name}.out").read_text())
        assert output == [[*TRICKY, str(i)], job.cwd, f"it's $HOME {i}"]
    shown = slurm_cluster.command(["scontrol", "show", "job", array_id]).stdout
    assert "ArrayTaskThrottle=2" in shown and "JobName=sweep array" in shown


def test_an_array_is_split_at_max_array_size(slurm_cluster, folders, tmp_path):
    launcher = make_launcher(slurm_cluster, tmp_path / "work", max_array_size=3)
    jobs = [member(folders, f"s{i}", ["/bin/sh", "-c", f"echo {i}"]) for i in range(5)]
    calls = counting_commands(launcher)
    launcher.submit_array(jobs, group="g")
    assert calls == ["sbatch", "sbatch"]
    ended = states(launcher, [job.key for job in jobs], until=lambda s: all(v.state.terminal for v in s.values()))
    assert {status.state for status in ended.values()} == {JobState.COMPLETED}
    first, second = ended["s0"].job_id.split("_")[0], ended["s3"].job_id.split("_")[0]
    assert [ended[f"s{i}"].job_id for i in range(5)] == [f"{first}_0", f"{first}_1", f"{first}_2",
                                                        f"{second}_0", f"{second}_1"]
    assert [Path(job.cwd, f"{job.name}.out").read_text() for job in jobs] == [f"{i}\n" for i in range(5)]


def test_a_1000_member_array_is_one_sbatch_and_one_squeue(slurm_cluster, folders, tmp_path):
    launcher = make_launcher(slurm_cluster, tmp_path / "work")
    jobs = [JobSpec(key=f"k{i}", name=f"big_{i}", argv=["/bin/sleep", "300"], cwd=str(folders))
            for i in range(1000)]
    calls = counting_commands(launcher)
    began = time.perf_counter()
    launcher.submit_array(jobs, group="g", concurrency=4, name="big")
    submitted = time.perf_counter() - began
    sbatch_calls = calls.count("sbatch")
    assert calls == ["sbatch"]
    keys = [job.key for job in jobs]
    calls.clear()
    began = time.perf_counter()
    found = launcher.status(keys)
    polled = time.perf_counter() - began
    assert calls == ["squeue"]
    assert {status.state for status in found.values()} <= {JobState.QUEUED, JobState.RUNNING}
    assert found["k999"].job_id.endswith("_999")
    print(f"\nsbatch_calls_1000={sbatch_calls} submit_1000_array_s={submitted:.3f} status_1000_tasks_s={polled:.3f}")

    launcher.cancel([jobs[500]], group="g")  # a pending task, cancelled alone: Slurm keeps no trace of it
    cancelled = states(launcher, ["k500", "k501"], until=lambda s: s["k500"].state.terminal)
    assert cancelled["k500"].state == JobState.CANCELLED and cancelled["k501"].state == JobState.QUEUED
    launcher.cancel(jobs, group="g")
    done = states(launcher, keys, until=lambda s: all(v.state.terminal for v in s.values()), timeout=60)
    assert {status.state for status in done.values()} == {JobState.CANCELLED}


def test_a_retried_array_or_batch_submission_finds_the_job_that_went_out(slurm_cluster, folders, tmp_path):
    work = tmp_path / "work"
    array = [member(folders, f"r{i}", ["/bin/sleep", "300"]) for i in range(3)]
    batch = [member(folders, f"q{i}", ["/bin/sleep", "300"]) for i in range(2)]
    first = make_launcher(slurm_cluster, work)
    first.submit_array(array, group="g", name="retry-array")
    first.submit_batch(batch, group="g", batch={"batch_args": {"ntasks": 2}}, name="retry-batch")
    before = first.status([job.key for job in array + batch])
    journal = work / JOURNAL_FILE
    kept = [line for line in journal.read_text().splitlines() if "submitting" in line]
    journal.write_text("".join(line + "\n" for line in kept))  # the submitter died after each sbatch

    retry = make_launcher(slurm_cluster, work)
    calls = counting_commands(retry)
    assert retry.unstarted(array + batch) == []
    retry.submit_array(array, group="g", name="retry-array")
    retry.submit_batch(batch, group="g", batch={"batch_args": {"ntasks": 2}}, name="retry-batch")
    assert "sbatch" not in calls
    after = retry.status([job.key for job in array + batch])
    assert {key: status.job_id for key, status in after.items()} == {key: status.job_id for key, status in before.items()}
    retry.cancel(array + batch, group="g")


def test_a_batch_ensemble_runs_its_members_side_by_side_in_one_job(slurm_cluster, folders, tmp_path):
    launcher = make_launcher(slurm_cluster, tmp_path / "work")
    printer = "import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), os.environ['MSG']]))"
    jobs = [
        member(folders, "b0", [sys.executable, "-c", f"{printer}; import time; time.sleep(2)", *TRICKY],
               folder="it's 50% $odd", env={"MSG": "it's $HOME `id`"}),
        member(folders, "b1", ["/bin/sh", "-c", "sleep 2; echo oops >&2; exit 3"]),
        member(folders, "b2", ["/bin/sh", "-c", "sleep 2; echo $SLURM_NTASKS $SLURM_STEP_ID"],
               resources={"run_args": {"ntasks": 1}}),
    ]
    calls = counting_commands(launcher)
    launcher.submit_batch(jobs, group="g", name="batch ens", batch={
        "nodes": 1, "time": "36:00:00", "batch_args": {"ntasks": 3, "mail-type": "END", "mail-user": "it's \"q\" $HOME #x"}})
    assert calls == ["sbatch"]
    keys = [job.key for job in jobs]
    running = states(launcher, keys, until=lambda s: all(v.state == JobState.RUNNING for v in s.values()))
    assert len({status.job_id for status in running.values()}) == 1  # one job, three members running in it
    ended = states(launcher, keys, until=lambda s: all(v.state.terminal for v in s.values()))
    assert {key: (status.state, status.returncode) for key, status in ended.items()} == {
        "b0": (JobState.COMPLETED, 0), "b1": (JobState.FAILED, 3), "b2": (JobState.COMPLETED, 0)}
    assert max(status.started for status in ended.values()) < min(status.ended for status in ended.values())
    assert json.loads(Path(jobs[0].cwd, "sweep_b0.out").read_text()) == [TRICKY, jobs[0].cwd, "it's $HOME `id`"]
    assert Path(jobs[1].cwd, "sweep_b1.err").read_text() == "oops\n"
    assert Path(jobs[2].cwd, "sweep_b2.out").read_text().split()[0] == "1"  # its own size, not the job's 3
    shown = slurm_cluster.command(["scontrol", "show", "job", running["b0"].job_id]).stdout
    assert "TimeLimit=1-12:00:00" in shown and "JobName=batch ens\n" in shown and "NumTasks=3" in shown
    assert "MailUser=it's \"q\" $HOME #x MailType=END" in shown


def test_cancel_of_one_member_of_a_batch_job_stops_its_step_only(slurm_cluster, folders, tmp_path):
    launcher = make_launcher(slurm_cluster, tmp_path / "work")
    jobs = [member(folders, "keep0", ["/bin/sh", "-c", "sleep 5; echo kept"]),
            member(folders, "victim", ["/bin/sleep", "300"]),
            member(folders, "keep1", ["/bin/sh", "-c", "sleep 5; echo kept"])]
    launcher.submit_batch(jobs, group="g", batch={"batch_args": {"ntasks": 3}})
    keys = [job.key for job in jobs]
    job_id = states(launcher, keys, until=lambda s: all(v.state == JobState.RUNNING for v in s.values()))["victim"].job_id
    step = read_status_file(status_file(jobs[1]), "victim")["step"]
    assert step.startswith(f"{job_id}.")
    scancels = []
    run = launcher.run_command
    launcher.run_command = lambda argv, **kwargs: (argv[0] == "scancel" and scancels.append(argv)) or run(argv, **kwargs)
    launcher.cancel([jobs[1]], group="g")
    assert scancels == [["scancel", step]]  # its step, not the job
    victim = states(launcher, ["victim"], until=lambda s: s["victim"].state.terminal)["victim"]
    assert victim.state == JobState.CANCELLED
    ended = states(launcher, keys, until=lambda s: all(v.state.terminal for v in s.values()))
    assert (ended["keep0"].state, ended["keep1"].state) == (JobState.COMPLETED, JobState.COMPLETED)
    assert Path(jobs[0].cwd, "sweep_keep0.out").read_text() == "kept\n"


def test_cancel_of_every_member_of_a_batch_job_cancels_the_job(slurm_cluster, folders, tmp_path):
    launcher = make_launcher(slurm_cluster, tmp_path / "work")
    jobs = [member(folders, f"all{i}", ["/bin/sleep", "300"]) for i in range(2)]
    launcher.submit_batch(jobs, group="g", batch={"batch_args": {"ntasks": 2}})
    keys = [job.key for job in jobs]
    job_id = states(launcher, keys, until=lambda s: all(v.state == JobState.RUNNING for v in s.values()))["all0"].job_id
    launcher.cancel(jobs, group="g")
    ended = states(launcher, keys, until=lambda s: all(v.state.terminal for v in s.values()))
    assert {status.state for status in ended.values()} == {JobState.CANCELLED}
    job_state = lambda: slurm_cluster.command(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"]).stdout.strip()  # noqa: E731
    wait_for(lambda: job_state() == "CANCELLED", what="the batch job to be cancelled")


def test_a_time_limit_ends_every_member_of_a_batch_job_as_failed_with_time_limit(slurm_cluster, folders, tmp_path):
    launcher = make_launcher(slurm_cluster, tmp_path / "work")
    jobs = [member(folders, f"slow{i}", ["/bin/sleep", "300"]) for i in range(2)]
    launcher.submit_batch(jobs, group="g", batch={"time": "1", "batch_args": {"ntasks": 2}})
    keys = [job.key for job in jobs]
    job_id = states(launcher, keys, until=lambda s: all(v.state == JobState.RUNNING for v in s.values()))["slow0"].job_id
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "EndTime=now"],  # as in the per-member test above
                   env={**os.environ, **slurm_cluster.env}, check=True, capture_output=True)
    ended = states(launcher, keys, until=lambda s: all(v.state.terminal for v in s.values()), timeout=60)
    assert {(status.state, status.error) for status in ended.values()} == {(JobState.FAILED, "time limit")}
