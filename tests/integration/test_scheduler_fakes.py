"""The PBS and LSF launchers against fake qsub / qstat / qselect / qdel and bsub / bjobs /
bkill programs (fake_schedulers.py: they keep their jobs in a JSON file, print what the
real ones print, and really run the job scripts): one contract, both schedulers."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from launchers.base import JobSpec, JobState, LauncherError
from launchers.lsf import LSFLauncher
from launchers.pbs import PBSLauncher
from tests.integration import fake_schedulers

pytestmark = pytest.mark.integration

WRITES_RESULTS = "import json; json.dump({'loss': 0.5}, open('out.json', 'w'))"
TRICKY = ["two words", "it's", 'say "hi"', "$HOME and `id`", "back\\slash", "# no comment", "50%", "new\nline", ""]
SCHEDULERS = {
    "pbs": {"launcher": PBSLauncher, "submit": "qsub", "status": "qstat", "cancel": "qdel", "cancel_signal": 15,
            "hold": {"h": None}, "held": "held: Job held by user", "ghost": "999999.fakepbs"},
    "lsf": {"launcher": LSFLauncher, "submit": "bsub", "status": "bjobs", "cancel": "bkill", "cancel_signal": 2,
            "hold": {"H": None},
            "held": "held (suspended while pending): The job was suspended by the user while pending",
            "ghost": "999999"},
}


def wait_for(condition, timeout=15.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


class FakeCluster:
    def __init__(self, scheduler: str, root: Path):
        self.scheduler = scheduler
        self.facts = SCHEDULERS[scheduler]
        self.bin = root / "bin"
        self.state = root / "scheduler"
        self.bin.mkdir()
        self.state.mkdir()
        for program in fake_schedulers.PROGRAMS:
            path = self.bin / program
            path.write_text(f"#!{sys.executable} -IS\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                            f"import fake_schedulers\nfake_schedulers.main({program!r}, sys.argv[1:])\n")
            path.chmod(0o755)

    def launcher(self, work_dir: Path):
        path = f"{self.bin}{os.pathsep}{os.environ['PATH']}"  # the fake programs first
        return self.facts["launcher"](work_dir=work_dir, env={"FAKE_SCHEDULER_DIR": str(self.state)},
                                      base_env={"PATH": path, "HOME": os.environ.get("HOME", "/")})

    def calls(self) -> list[str]:
        log = self.state / "calls.log"
        return [json.loads(line)["program"] for line in log.read_text().splitlines()] if log.exists() else []

    def jobs(self) -> dict:
        with fake_schedulers.jobs_state() as state:
            return state["jobs"]

    def forget(self) -> None:
        """As after PBS's job history or LSF's CLEAN_PERIOD: the scheduler knows none of its jobs."""
        with fake_schedulers.jobs_state() as state:
            state["jobs"].clear()

    def kill_all(self) -> None:
        for job in self.jobs().values():
            if job["pgid"] and job["state"] not in fake_schedulers.FINISHED:
                try:
                    os.killpg(job["pgid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture(params=sorted(SCHEDULERS))
def cluster(request, tmp_path, monkeypatch):
    fake = FakeCluster(request.param, tmp_path)
    monkeypatch.setenv("FAKE_SCHEDULER_DIR", str(fake.state))  # for reading its state from the test
    yield fake
    fake.kill_all()


def member(root: Path, key: str, argv: list[str], **fields) -> JobSpec:
    name = fields.pop("name", f"sweep_{key}")
    cwd = root / fields.pop("folder", name)
    cwd.mkdir(parents=True, exist_ok=True)
    return JobSpec(key=key, name=name, argv=argv, cwd=str(cwd), stdout=f"{name}.out", stderr=f"{name}.err", **fields)


def poll(cluster, launcher, keys, *, until):
    """Statuses until ``until(statuses)`` holds, checking that each poll is one status command."""
    def once():
        before = len(cluster.calls())
        found = launcher.status(keys)
        assert cluster.calls()[before:] == [cluster.facts["status"]]
        return found if until(found) else None

    return wait_for(once, what=f"states of {keys}")


def test_members_complete_fail_and_are_cancelled(cluster, tmp_path):
    launcher = cluster.launcher(tmp_path / "work")
    jobs = [
        member(tmp_path, "ok", ["/bin/sh", "-c", "echo done"]),
        member(tmp_path, "bad", ["/bin/sh", "-c", "echo oops >&2; exit 3"]),
        member(tmp_path, "long", ["/bin/sleep", "300"]),
    ]
    launcher.submit(jobs, group="run-1")
    assert cluster.calls() == [cluster.facts["submit"]] * 3
    found = poll(cluster, launcher, ["ok", "bad", "long"], until=lambda s: s["ok"].state.terminal
                 and s["bad"].state.terminal and s["long"].state == JobState.RUNNING)
    assert (found["ok"].state, found["ok"].returncode) == (JobState.COMPLETED, 0)
    assert (found["bad"].state, found["bad"].returncode) == (JobState.FAILED, 3)
    assert found["ok"].started <= found["ok"].ended  # from the status file, to the tenth of a second
    assert Path(jobs[0].cwd, "sweep_ok.out").read_text() == "done\n"
    assert Path(jobs[1].cwd, "sweep_bad.err").read_text() == "oops\n"

    launcher.cancel([jobs[2]], group="run-1")
    assert cluster.calls()[-1] == cluster.facts["cancel"]
    cancelled = poll(cluster, launcher, ["long"], until=lambda s: s["long"].state.terminal)["long"]
    assert (cancelled.state, cancelled.signal) == (JobState.CANCELLED, cluster.facts["cancel_signal"])
    launcher.cancel([jobs[2]], group="run-1")  # again: the scheduler says it has ended, which is no error


def test_values_with_spaces_quotes_and_dollars_reach_the_member_and_the_scheduler_intact(cluster, tmp_path):
    launcher = cluster.launcher(tmp_path / "work")
    printer = "import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), os.environ['MSG']]))"
    account = "it's \"q\" $HOME #x"
    job = member(tmp_path, "quotes", [sys.executable, "-c", printer, *TRICKY], name="it's a \"job\" $HOME",
                 folder="it's 50% $odd", env={"MSG": "it's $HOME `id`"}, resources={"time": "5", "account": account})
    launcher.submit([job], group="g")
    done = poll(cluster, launcher, ["quotes"], until=lambda s: s["quotes"].state.terminal)["quotes"]
    assert done.state == JobState.COMPLETED, Path(job.cwd, f"{job.name}.err").read_text()
    assert json.loads(Path(job.cwd, f"{job.name}.out").read_text()) == [TRICKY, job.cwd, "it's $HOME `id`"]
    seen = cluster.jobs()[done.job_id]
    if cluster.scheduler == "pbs":
        assert (seen["name"], seen["account"], seen["resources"]) == ("it_s_a__job___HOME", account,
                                                                      {"walltime": "00:05:00"})
    else:
        assert (seen["name"], seen["options"]["P"], seen["options"]["W"]) == (job.name, account, "5")


def test_a_job_nobody_knows_is_lost_and_known_ids_still_answer(cluster, tmp_path):
    work = tmp_path / "work"
    launcher = cluster.launcher(work)
    job = member(tmp_path, "real", ["/bin/sleep", "300"])
    launcher.submit([job], group="g")
    with open(launcher.journal_path, "a") as journal:  # a job id the scheduler never had, and no status file
        journal.write(json.dumps({"key": "ghost", "job_id": cluster.facts["ghost"], "cwd": str(tmp_path),
                                  "status_file": str(tmp_path / "ghost.status"), "results_file": ""}) + "\n")
    found = poll(cluster, launcher, ["real", "ghost"], until=lambda s: True)
    assert found["real"].state in (JobState.QUEUED, JobState.RUNNING)
    assert found["ghost"].state == JobState.LOST
    assert f"no longer knows job {cluster.facts['ghost']}" in found["ghost"].error
    assert launcher.status(["ghost"])["ghost"].state == JobState.LOST  # asked alone: the command exits non-zero
    launcher.cancel([job], group="g")


def test_a_retried_submit_does_not_submit_twice(cluster, tmp_path):
    work = tmp_path / "work"
    job = member(tmp_path, "once", ["/bin/sleep", "300"])
    first = cluster.launcher(work)
    first.submit([job], group="g")
    first.submit([job], group="g")  # the journal knows it
    assert cluster.calls().count(cluster.facts["submit"]) == 1
    lines = first.journal_path.read_text().splitlines()
    job_id = json.loads(lines[1])["job_id"]
    first.journal_path.write_text(lines[0] + "\n")  # the submitter died after submitting, before recording the id

    retry = cluster.launcher(work)
    assert retry.unstarted([job]) == []  # found by the key the job carries
    retry.submit([job], group="g")
    assert cluster.calls().count(cluster.facts["submit"]) == 1
    assert retry.status(["once"])["once"].job_id == job_id
    retry.cancel([job], group="g")


def test_results_are_known_after_the_scheduler_forgets_the_job(cluster, tmp_path):
    work = tmp_path / "work"
    launcher = cluster.launcher(work)
    jobs = [member(tmp_path, "three", ["/bin/sh", "-c", "exit 3"]),
            member(tmp_path, "zero", [sys.executable, "-c", WRITES_RESULTS],
                   results_file="out.json")]
    launcher.submit(jobs, group="g")
    ended = poll(cluster, launcher, ["three", "zero"], until=lambda s: all(v.state.terminal for v in s.values()))
    assert ended["zero"].results == {"loss": 0.5}

    cluster.forget()
    after = poll(cluster, cluster.launcher(work), ["three", "zero"], until=lambda s: True)
    assert (after["three"].state, after["three"].returncode) == (JobState.FAILED, 3)
    assert (after["zero"].state, after["zero"].results) == (JobState.COMPLETED, {"loss": 0.5})
    assert after["three"].started == pytest.approx(ended["three"].started)


def test_a_held_job_waits_with_its_reason_and_is_cancelled_before_it_runs(cluster, tmp_path):
    launcher = cluster.launcher(tmp_path / "work")
    job = member(tmp_path, "held", ["/bin/sh", "-c", "echo ran"], resources={"batch_args": cluster.facts["hold"]})
    launcher.submit([job], group="g")
    queued = poll(cluster, launcher, ["held"], until=lambda s: True)["held"]
    assert (queued.state, queued.reason) == (JobState.QUEUED, cluster.facts["held"])
    launcher.cancel([job], group="g")
    cancelled = poll(cluster, launcher, ["held"], until=lambda s: s["held"].state.terminal)["held"]
    assert (cancelled.state, cancelled.started) == (JobState.CANCELLED, None)
    assert not Path(job.cwd, "sweep_held.out").exists()


def test_a_refused_submission_reports_the_schedulers_words_and_fails_nothing(cluster, tmp_path):
    launcher = cluster.launcher(tmp_path / "work")
    refused = {"pbs": {"Y": "1"}, "lsf": {"W": "soon"}}[cluster.scheduler]  # an option qsub lacks; a bad run limit
    job = member(tmp_path, "refused", ["/bin/true"], resources={"batch_args": refused})
    with pytest.raises(LauncherError, match=r"(option -Y not recognized|Bad RUNLIMIT specification)"):
        launcher.submit([job], group="g")
    assert launcher.status(["refused"])["refused"].state == JobState.QUEUED  # left for a retry
    assert launcher.unstarted([job]) == [job]
