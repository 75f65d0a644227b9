"""The LSF launcher's pure builders and parsers, its state map, and its logic against an
in-process fake LSF (fake programs: tests/integration/test_scheduler_fakes.py)."""

import json
import os
import shlex
import subprocess
import sys
import time

import pytest

from launchers.base import JobSpec, JobState, LauncherError
from launchers.lsf import (
    BjobsJob, LSFLauncher, _timestamp, batch_directives, bjobs_argv, bsub_argv, job_status, lsf_job_name,
    lsf_walltime, parse_bjobs, parse_bjobs_errors, parse_bsub_id, parse_gone,
)
from launchers.scheduler import BatchOptionError
from launchers.slurm import read_status_file

TRICKY = ["two words", "it's", 'say "hi"', "$HOME and `id`", "back\\slash", "# not a comment", "span[hosts=1]",
          "it's \"both\" $x"]


def bsub_reads(line: str) -> list[str]:
    """The arguments bsub takes from one ``#BSUB`` line, as modelled here: a shell's word
    splitting and quotes, no expansion, an unquoted # ends the line."""
    assert line.startswith("#BSUB ")
    return shlex.split(line[len("#BSUB "):], comments=True)


# --- batch directives (#BSUB) ------------------------------------------------------------------


def test_batch_settings_become_directives_in_smartsims_order():
    assert batch_directives({"nodes": 2, "time": "1:30:00", "queue": "debug", "account": "proj",
                             "batch_args": {"alloc_flags": "smt4", "-R": "span[hosts=1]", "x": None}}) == [
        "#BSUB -W 1:30", "#BSUB -P proj", "#BSUB -alloc_flags smt4", "#BSUB -R 'span[hosts=1]'", "#BSUB -x",
        "#BSUB -q debug", "#BSUB -nnodes 2"]


def test_zero_is_a_value_and_false_leaves_the_option_out():
    assert batch_directives({"batch_args": {"sp": 0, "N": False, "B": True}}) == ["#BSUB -sp 0", "#BSUB -B"]


@pytest.mark.parametrize("value", TRICKY)
def test_directive_values_reach_bsub_intact(value):
    [line] = batch_directives({"batch_args": {"R": value}})
    assert bsub_reads(line) == ["-R", value]


@pytest.mark.parametrize("key", ["J", "-J", "Jd", "o", "oo", "e", "eo", "K", "I", "Is", "IX", "pack"])
def test_flotillas_own_bsub_options_cannot_be_given(key):
    with pytest.raises(BatchOptionError, match=r"^-[A-Za-z]+ cannot be given \(.*\): "):
        batch_directives({"batch_args": {key: "x"}})


@pytest.mark.parametrize("resources, flag", [
    ({"time": "5", "batch_args": {"W": "10"}}, "-W"), ({"account": "a", "batch_args": {"P": "b"}}, "-P"),
    ({"queue": "a", "batch_args": {"-q": "b"}}, "-q"), ({"nodes": 2, "batch_args": {"nnodes": 3}}, "-nnodes"),
])
def test_a_batch_setting_given_twice_is_refused(resources, flag):
    with pytest.raises(BatchOptionError, match=f"^{flag} is given twice"):
        batch_directives(resources)


@pytest.mark.parametrize("text, limit", [("30", "30"), ("0:20", "1"), ("59:01", "1:00"), ("1:30:00", "1:30"),
                                          ("2-00", "48:00"), ("1:00:01", "1:01")])
def test_walltimes_become_hours_and_minutes_rounded_up(text, limit):
    assert lsf_walltime(text) == limit


# --- bsub argv and the job script ----------------------------------------------------------


def test_bsub_argv_carries_flotillas_options_and_the_key():
    assert bsub_argv(job_name="m[0] it's", output="/w/a b/m.out.lsf", error="/w/a b/m.err.lsf", key="7") == [
        "bsub", "-J", "m_0_ it's", "-Jd", "flotilla:7", "-oo", "/w/a b/m.out.lsf", "-eo", "/w/a b/m.err.lsf"]
    assert lsf_job_name("a[1-3]") == "a_1-3_"


def test_bsub_argv_refuses_paths_lsf_would_rewrite_or_split():
    with pytest.raises(BatchOptionError, match="LSF would replace %J and %I"):
        bsub_argv(job_name="m", output="/w/%J/m.out", error="/w/e", key="1")
    with pytest.raises(BatchOptionError, match="single line"):
        bsub_argv(job_name="m", output="/w/a\nb", error="/w/e", key="1")


def _script(tmp_path, argv):
    launcher = LSFLauncher(work_dir=tmp_path / "work", base_env={})
    folder = tmp_path / "it's a $folder"
    folder.mkdir(exist_ok=True)
    job = JobSpec(key="7", name="m", argv=argv, cwd=str(folder), env={"MSG": "it's $HOME"}, resources={"time": "5"})
    return launcher.job_command(job), folder


def test_the_job_script_runs_the_member_and_records_the_lsf_job_id(tmp_path):
    (argv, script), folder = _script(tmp_path, [sys.executable, "-c", "import os; print(os.environ['MSG']); exit(3)"])
    assert script.startswith("#!/bin/sh\n#BSUB -W 5\n")
    assert argv[argv.index("-oo") + 1] == f"{folder}/m.out.lsf"
    result = subprocess.run(["sh"], input=script, capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "LSB_JOBID": "3867"}, timeout=30)
    assert result.returncode == 3
    assert (folder / "m.out").read_text() == "it's $HOME\n"
    record = read_status_file(str(folder / "m.out.status"), "7")
    assert (record["job_id"], record["returncode"], record["terminated"]) == ("3867", 3, False)


def test_a_member_that_bkill_interrupts_is_recorded_as_terminated(tmp_path):
    (_, script), folder = _script(tmp_path, ["sleep", "30"])
    status = str(folder / "m.out.status")
    job = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 10
    while "started" not in read_status_file(status, "7") and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # the member has been exec'd
    os.killpg(job.pid, 2)  # bkill's first signal, to every process of the job
    assert job.wait(timeout=10) == 130
    assert read_status_file(status, "7")["terminated"] is True


# --- parsers --------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["Job <3867> is submitted to queue <normal>.\n",
                                    "Job <3867> is submitted to default queue <normal>.\n",
                                    "Warning: project not set\nJob <3867> is submitted to queue <debug>.\n"])
def test_bsub_prints_the_job_id(output):
    assert parse_bsub_id(output) == "3867"


def test_bsub_output_without_a_job_id_is_an_error():
    with pytest.raises(LauncherError, match="no job id"):
        parse_bsub_id("Bad RUNLIMIT specification. Job not submitted.\n")


BJOBS_JSON = """{
  "COMMAND":"bjobs",
  "JOBS":4,
  "RECORDS":[
    {
      "JOBID":"3866",
      "STAT":"PEND",
      "EXIT_CODE":"",
      "EXIT_REASON":"",
      "PEND_REASON":"Job's requirements for reserving resource (slot) not satisfied;",
      "START_TIME":"",
      "FINISH_TIME":""
    },
    {
      "JOBID":"3867",
      "STAT":"EXIT",
      "EXIT_CODE":"3",
      "EXIT_REASON":"",
      "PEND_REASON":"",
      "START_TIME":"Dec  1 22:44",
      "FINISH_TIME":"Dec  1 22:45 L"
    },
    {
      "JOBID":"3868",
      "STAT":"DONE",
      "EXIT_CODE":"",
      "EXIT_REASON":"",
      "PEND_REASON":"",
      "START_TIME":"Dec  1 22:44",
      "FINISH_TIME":"Dec  1 22:46"
    },
    {
      "JOBID":"9",
      "ERROR":"Job <9> is not found"
    }
  ]
}"""


def test_bjobs_json_jobs_by_id_and_the_ids_it_does_not_know():
    jobs, missing = parse_bjobs(BJOBS_JSON)
    assert jobs["3866"] == BjobsJob("3866", "PEND", None, "",
                                    "Job's requirements for reserving resource (slot) not satisfied;")
    assert jobs["3867"] == BjobsJob("3867", "EXIT", 3, "", "", "Dec  1 22:44", "Dec  1 22:45 L")
    assert missing == ["9"]
    assert parse_bjobs("") == ({}, [])
    with pytest.raises(LauncherError, match="not JSON"):
        parse_bjobs("JOBID   USER    STAT\n")


def test_bjobs_and_bkill_errors_tell_gone_jobs_from_the_rest():
    assert parse_bjobs_errors("Job <9> is not found\nNo job found\nLSF is down; try later\n") == (
        ["9"], ["LSF is down; try later"])
    assert parse_gone("Job <3>: Job has already finished\nJob <4>: No matching job found\n"
                      "Job <5>: Operation not permitted\n") == (["3", "4"], ["Job <5>: Operation not permitted"])


def test_bjobs_times_without_a_year_are_this_years_or_last_years():
    now = time.mktime(time.strptime("2027-01-02 10:00", "%Y-%m-%d %H:%M"))
    assert _timestamp("Jan  2 09:15", now) == time.mktime(time.strptime("2027-01-02 09:15", "%Y-%m-%d %H:%M"))
    assert _timestamp("Dec 31 23:59 L", now) == time.mktime(time.strptime("2026-12-31 23:59", "%Y-%m-%d %H:%M"))
    assert _timestamp("Dec 31 23:59:30 2025", now) == time.mktime(time.strptime("2025-12-31 23:59:30",
                                                                                "%Y-%m-%d %H:%M:%S"))
    assert _timestamp("", now) is None and _timestamp("-", now) is None


def test_the_status_command_asks_for_every_field_it_reads():
    assert bjobs_argv(["1", "2"]) == ["bjobs", "-a", "-json", "-o",
                                      "jobid stat exit_code exit_reason pend_reason start_time finish_time", "1", "2"]


# --- the state map ------------------------------------------------------------------------------


@pytest.mark.parametrize("state, pend_reason, reason", [
    ("PEND", "Job's requirements for reserving resource (slot) not satisfied;",
     "Job's requirements for reserving resource (slot) not satisfied"),
    ("PEND", "", None),
    ("PSUSP", "The job was suspended by the user while pending;",
     "held (suspended while pending): The job was suspended by the user while pending"),
])
def test_pending_jobs_are_queued_with_their_reason(state, pend_reason, reason):
    status = job_status(BjobsJob("1", state, pend_reason=pend_reason))
    assert (status.state, status.job_id, status.reason) == (JobState.QUEUED, "1", reason)


@pytest.mark.parametrize("state, note", [("RUN", None), ("USUSP", "suspended by its owner or an administrator"),
                                         ("SSUSP", "suspended by LSF"), ("UNKWN", "LSF lost contact with its host")])
def test_running_jobs_have_their_start_time(state, note):
    status = job_status(BjobsJob("1", state, start="Dec  1 22:44"))
    assert (status.state, status.reason) == (JobState.RUNNING, note) and status.started is not None


@pytest.mark.parametrize("state, code, reason, cancelled, expected, returncode, signal, error", [
    ("DONE", None, "", False, JobState.COMPLETED, 0, None, None),
    ("EXIT", 3, "", False, JobState.FAILED, 3, None, None),
    ("EXIT", 3, "", True, JobState.FAILED, 3, None, None),  # it failed on its own before the kill
    ("EXIT", 130, "TERM_OWNER: job killed by owner", True, JobState.CANCELLED, None, 2, None),
    ("EXIT", None, "TERM_OWNER: job killed by owner", True, JobState.CANCELLED, None, None, None),
    ("EXIT", 143, "TERM_ADMIN: job killed by root or LSF administrator", False, JobState.CANCELLED, None, 15, None),
    ("EXIT", 140, "TERM_RUNLIMIT: job killed after reaching LSF run time limit", False, JobState.FAILED, None, 12,
     "time limit"),
    ("EXIT", 137, "job killed after reaching LSF memory usage limit", False, JobState.FAILED, None, 9, "out of memory"),
    ("EXIT", None, "TERM_PREEMPT: job killed after preemption", False, JobState.FAILED, None, None,
     "preempted by the scheduler"),
    ("EXIT", None, "TERM_CWD_NOTEXIST: current working directory is not accessible", False, JobState.FAILED, None,
     None, "LSF ended the job: TERM_CWD_NOTEXIST: current working directory is not accessible"),
])
def test_finished_jobs(state, code, reason, cancelled, expected, returncode, signal, error):
    job = BjobsJob("1", state, code, reason, start="Dec  1 22:44", end="Dec  1 22:46")
    status = job_status(job, cancelled=cancelled)
    assert (status.state, status.returncode, status.signal, status.error) == (expected, returncode, signal, error)
    assert status.ended - status.started == 120


def test_a_job_lsf_does_not_know_is_left_to_the_caller_and_an_unknown_state_is_not_final():
    assert job_status(None) is None
    status = job_status(BjobsJob("1", "NEWSTATE"))
    assert not status.state.terminal and status.reason == "LSF state NEWSTATE"


# --- the launcher against an in-process LSF ------------------------------------------------------


class FakeLSF(LSFLauncher):
    """Answers bsub / bjobs / bkill from a dict of jobs; records every command."""

    def __init__(self, work_dir):
        super().__init__(work_dir=work_dir, env={"LSF_ENVDIR": "/x/conf"}, base_env={})
        self.calls = []
        self.jobs = {}  # job id -> record fields

    def run_command(self, argv, *, input=None):
        self.calls.append(argv)
        done = lambda out="", code=0, err="": subprocess.CompletedProcess(argv, code, out, err)  # noqa: E731
        if argv[0] == "bsub":
            job_id = str(100 + len(self.jobs))
            self.jobs[job_id] = {"JOBID": job_id, "STAT": "PEND", "PEND_REASON": "New job is waiting for scheduling;",
                                 "JOB_DESCRIPTION": argv[argv.index("-Jd") + 1]}
            return done(f"Job <{job_id}> is submitted to default queue <normal>.\n")
        if argv[0] == "bjobs":
            ids = argv[5:] or list(self.jobs)
            records = [self.jobs.get(job_id, {"JOBID": job_id, "ERROR": f"Job <{job_id}> is not found"})
                       for job_id in ids]
            code = 255 if any("ERROR" in record for record in records) else 0
            return done(json.dumps({"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records}), code)
        if argv[0] == "bkill":
            err = "".join(f"Job <{job_id}>: Job has already finished\n" for job_id in argv[1:]
                          if self.jobs[job_id]["STAT"] == "EXIT")
            for job_id in argv[1:]:
                self.jobs[job_id].update(STAT="EXIT", EXIT_REASON="TERM_OWNER: job killed by owner")
            return done(code=255 if err else 0, err=err)
        raise AssertionError(argv)


def _jobs(tmp_path, count):
    return [JobSpec(key=str(i), name=f"m_{i}", argv=["true"], cwd=str(tmp_path / f"m_{i}")) for i in range(count)]


def test_status_asks_bjobs_once_for_every_job_and_an_unknown_id_is_lost(tmp_path):
    lsf = FakeLSF(tmp_path / "work")
    lsf.submit(_jobs(tmp_path, 100), group="g")
    del lsf.jobs["100"]  # forgotten, and it left no status file
    lsf.calls.clear()
    states = lsf.status([str(i) for i in range(100)])
    assert [argv[:5] for argv in lsf.calls] == [["bjobs", "-a", "-json", "-o", " ".join(
        ("jobid", "stat", "exit_code", "exit_reason", "pend_reason", "start_time", "finish_time"))]]
    assert states["0"].state == JobState.LOST and "LSF no longer knows job 100" in states["0"].error
    assert {(status.state, status.reason) for key, status in states.items() if key != "0"} == {
        (JobState.QUEUED, "New job is waiting for scheduling")}


def test_a_submitter_that_died_after_bsub_is_found_by_the_key_in_the_job_description(tmp_path):
    lsf = FakeLSF(tmp_path / "work")
    job = _jobs(tmp_path, 1)[0]
    lsf.submit([job], group="g")
    lsf.journal_path.write_text(lsf.journal_path.read_text().splitlines()[0] + "\n")  # only the intent
    again = FakeLSF(tmp_path / "work")
    again.jobs = lsf.jobs
    again.submit([job], group="g")
    assert again.calls == [["bjobs", "-a", "-json", "-o", "jobid job_description"]]
    assert again.status(["0"])["0"].job_id == "100"


def test_cancel_is_recorded_and_a_finished_job_is_no_error(tmp_path):
    lsf = FakeLSF(tmp_path / "work")
    submitted, later = _jobs(tmp_path, 2)
    lsf.submit([submitted], group="g")
    lsf.cancel([submitted, later], group="g")
    lsf.cancel([submitted], group="g")  # Job has already finished
    assert lsf.calls[-1] == ["bkill", "100"]
    lsf.submit([submitted, later], group="g")
    assert [argv[0] for argv in lsf.calls].count("bsub") == 1
    states = lsf.status(["0", "1"])
    assert states["0"].state == states["1"].state == JobState.CANCELLED


def test_a_bad_option_refuses_the_submission_before_any_bsub(tmp_path):
    lsf = FakeLSF(tmp_path / "work")
    good, bad = _jobs(tmp_path, 2)
    bad.resources = {"batch_args": {"Jd": "mine"}}
    with pytest.raises(BatchOptionError, match="-Jd cannot be given .*: Flotilla's job description carries"):
        lsf.submit([good, bad], group="g")
    assert lsf.calls == []
