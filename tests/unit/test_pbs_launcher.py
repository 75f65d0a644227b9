"""The PBS launcher's pure builders and parsers, its state map, and its logic against an
in-process fake PBS (fake programs: tests/integration/test_scheduler_fakes.py)."""

import json
import os
import shlex
import subprocess
import sys
import time

import pytest

from launchers.base import JobSpec, JobState, LauncherError
from launchers.pbs import (
    PBSLauncher, QstatJob, batch_directives, job_status, match_ids, parse_gone, parse_qselect, parse_qstat,
    parse_qsub_id, pbs_job_name, pbs_walltime, qsub_argv,
)
from launchers.scheduler import BatchOptionError, member_script, quote_directive, walltime_seconds
from launchers.slurm import read_status_file

TRICKY = ["two words", "it's", 'say "hi"', "$HOME and `id`", "back\\slash", "# not a comment", "semi;colon",
          "a,b", "it's \"both\" $x"]


def qsub_reads(line: str) -> list[str]:
    """The arguments qsub takes from one ``#PBS`` line, as modelled here: a shell's word
    splitting and quotes, no expansion, an unquoted # ends the line."""
    assert line.startswith("#PBS ")
    return shlex.split(line[len("#PBS "):], comments=True)


# --- batch directives (#PBS) ------------------------------------------------------------------


def test_batch_settings_become_directives_in_smartsims_order():
    assert batch_directives({"nodes": 2, "time": "10:00:00", "queue": "debug", "account": "acct",
                             "batch_args": {"mem": "4gb", "W": "depend=afterok:12", "--r": "n"}}) == [
        "#PBS -l nodes=2", "#PBS -l walltime=10:00:00", "#PBS -l mem=4gb", "#PBS -W depend=afterok:12",
        "#PBS -r n", "#PBS -q debug", "#PBS -A acct"]


def test_a_one_letter_batch_arg_is_an_option_and_a_longer_one_a_resource():
    assert batch_directives({"batch_args": {"l": "select=2:ncpus=4", "ncpus": 8, "h": None}}) == [
        "#PBS -l select=2:ncpus=4", "#PBS -l ncpus=8", "#PBS -h"]


def test_zero_is_a_value_false_leaves_the_option_out_and_a_resource_needs_a_value():
    assert batch_directives({"batch_args": {"p": 0, "m": False, "h": True}}) == ["#PBS -p 0", "#PBS -h"]
    with pytest.raises(BatchOptionError, match="the resource mem needs a value"):
        batch_directives({"batch_args": {"mem": None}})
    with pytest.raises(BatchOptionError, match="-q has an empty value"):
        batch_directives({"batch_args": {"q": ""}})


@pytest.mark.parametrize("value", TRICKY)
def test_directive_values_reach_qsub_intact(value):
    [line] = batch_directives({"account": value})
    assert qsub_reads(line) == ["-A", value]


def test_plain_values_are_written_bare():
    assert quote_directive("select=2:ncpus=4") == "select=2:ncpus=4"
    assert quote_directive("it's") == '"it\'s"'
    assert quote_directive("two words") == "'two words'"


@pytest.mark.parametrize("key", ["N", "-N", "o", "e", "j", "k", "J", "C", "S", "v", "V", "I", "z"])
def test_flotillas_own_qsub_options_cannot_be_given(key):
    with pytest.raises(BatchOptionError, match=r"^-[A-Za-z] cannot be given \(.*\): "):
        batch_directives({"batch_args": {key: "x"}})


def test_a_submission_that_would_wait_is_refused():
    with pytest.raises(BatchOptionError, match="-W block cannot be given"):
        batch_directives({"batch_args": {"W": "block=true"}})


@pytest.mark.parametrize("resources, message", [
    ({"nodes": 2, "batch_args": {"select": "3"}}, "number of nodes is given twice"),
    ({"nodes": 2, "batch_args": {"l": "nodes=3:ppn=4"}}, "number of nodes is given twice"),
    ({"time": "5", "batch_args": {"l": "mem=1gb,walltime=1:00:00"}}, "walltime is given twice"),
    ({"queue": "debug", "batch_args": {"q": "long"}}, "-q is given twice"),
    ({"account": "a", "batch_args": {"-A": "b"}}, "-A is given twice"),
])
def test_a_batch_setting_given_twice_is_refused(resources, message):
    with pytest.raises(BatchOptionError, match=message):
        batch_directives(resources)


def test_bad_batch_settings_are_refused():
    with pytest.raises(BatchOptionError, match="unknown batch setting"):
        batch_directives({"ncpus": 4})
    with pytest.raises(BatchOptionError, match="not an option name"):
        batch_directives({"batch_args": {"a b": "1"}})
    with pytest.raises(BatchOptionError, match="not a walltime"):
        batch_directives({"time": "an hour"})


@pytest.mark.parametrize("text, seconds, walltime", [
    ("30", 1800, "00:30:00"), ("5:30", 330, "00:05:30"), ("1:30:00", 5400, "01:30:00"),
    ("2-00", 172800, "48:00:00"), ("1-2:03", 93780, "26:03:00"), ("1-02:03:04", 93784, "26:03:04"),
])
def test_walltimes_are_read_as_slurm_reads_them(text, seconds, walltime):
    assert walltime_seconds(text) == seconds
    assert pbs_walltime(text) == walltime


# --- qsub argv and the job script ----------------------------------------------------------


def test_job_names_are_what_qsub_takes():
    assert pbs_job_name("sweep_0") == "sweep_0"
    assert pbs_job_name("it's a \"job\" $HOME") == "it_s_a__job___HOME"
    assert pbs_job_name("0_first") == "job_0_first"
    assert len(pbs_job_name("x" * 300)) == 236


def test_qsub_argv_carries_flotillas_options_and_the_key():
    assert qsub_argv(job_name="m 0", output="/w/a b/m.out.pbs", error="/w/a b/m.err.pbs", key="7,a=b") == [
        "qsub", "-N", "m_0", "-o", "/w/a b/m.out.pbs", "-e", "/w/a b/m.err.pbs", "-S", "/bin/sh",
        "-v", "FLOTILLA_KEY=7%2Ca%3Db"]
    with pytest.raises(BatchOptionError, match="single line"):
        qsub_argv(job_name="m", output="/w/a\nb", error="/w/e", key="1")


def _run_script(tmp_path, argv, *, shell="bash", env=None, key="7"):
    folder = tmp_path / "it's a $folder"
    folder.mkdir(exist_ok=True)
    out, err, status = (str(folder / name) for name in ("m.out", "m.err", "m.out.status"))
    script = member_script(scheduler="PBS", job_id_variable="PBS_JOBID", signals="TERM", key=key, argv=argv,
                           cwd=str(folder), env=env or {}, stdout=out, stderr=err, status_file=status,
                           directives=["#PBS -l nodes=1"])
    result = subprocess.run([shell], input=script, capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "PBS_JOBID": "42.srv"}, timeout=30)
    return result, folder, status


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_the_job_script_runs_the_member_with_its_argv_env_and_output_intact(tmp_path, shell):
    tricky = [*TRICKY, "new\nline", "", "*", "~"]
    printer = ("import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), os.environ['MSG']]));"
               " print('oops', file=sys.stderr)")
    argv = [sys.executable, "-c", printer, *tricky]
    result, folder, _ = _run_script(tmp_path, argv, shell=shell, env={"MSG": "it's $HOME `id`"})
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")  # the member's output is in its files
    assert json.loads((folder / "m.out").read_text()) == [tricky, str(folder), "it's $HOME `id`"]
    assert (folder / "m.err").read_text() == "oops\n"


def test_the_job_script_records_start_and_exit_status_with_the_pbs_job_id(tmp_path):
    before = time.time()
    result, _, status = _run_script(tmp_path, ["sh", "-c", "exit 3"])
    assert result.returncode == 3
    record = read_status_file(status, "7")
    assert record["job_id"] == "42.srv" and record["returncode"] == 3 and record["terminated"] is False
    assert before <= record["started"] <= record["ended"] <= time.time()


def test_a_member_stopped_by_pbs_is_recorded_as_terminated(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    status = str(folder / "m.out.status")
    script = member_script(scheduler="PBS", job_id_variable="PBS_JOBID", signals="TERM", key="7", argv=["sleep", "30"],
                           cwd=str(folder), env={}, stdout=str(folder / "m.out"), stderr=str(folder / "m.err"),
                           status_file=status)
    job = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 10
    while "started" not in read_status_file(status, "7") and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # the member has been exec'd
    os.killpg(job.pid, 15)  # as PBS stops a job: every process of it
    assert job.wait(timeout=10) == 143
    record = read_status_file(status, "7")
    assert record["terminated"] is True and record["returncode"] == 143


# --- parsers --------------------------------------------------------------------------------


@pytest.mark.parametrize("output, job_id", [("1201.pbs01\n", "1201.pbs01"), ("1201\n", "1201"),
                                            ("qsub: note\n77.server.example.org\n", "77.server.example.org"),
                                            ("12[].pbs01\n", "12[].pbs01")])
def test_qsub_prints_the_job_id(output, job_id):
    assert parse_qsub_id(output) == job_id


def test_qsub_output_without_a_job_id_is_an_error():
    with pytest.raises(LauncherError, match="no job id"):
        parse_qsub_id("qsub: Unknown queue\n")


QSTAT_JSON = """{
    "timestamp":1796208265,
    "pbs_version":"2022.1.1",
    "pbs_server":"pbs01",
    "Jobs":{
        "1201.pbs01":{
            "Job_Name":"sweep_0",
            "Job_Owner":"alice@login01",
            "job_state":"Q",
            "queue":"workq",
            "server":"pbs01",
            "ctime":"Tue Dec  1 22:44:25 2026",
            "Error_Path":"login01:/w/sweep_0.err.pbs",
            "Output_Path":"login01:/w/sweep_0.out.pbs",
            "Priority":0,
            "Resource_List":{"ncpus":1, "nodect":1, "place":"pack", "select":"1:ncpus=1", "walltime":"00:05:00"},
            "substate":10,
            "Variable_List":{"PBS_O_HOME":"/home/alice", "PBS_O_WORKDIR":"/home/alice\\tx", "FLOTILLA_KEY":"7%2C8"},
            "comment":"Not Running: Insufficient amount of resource: ncpus (R: 1 A: 0 T: 2)",
            "project":"_pbs_project_default"
        },
        "1202.pbs01":{
            "Job_Name":"sweep_1",
            "job_state":"F",
            "stime":"Tue Dec  1 22:44:26 2026",
            "obittime":"Tue Dec  1 22:44:29 2026",
            "Exit_status":3,
            "comment":"Job run at Tue Dec 01 at 22:44 on (node01:ncpus=1) and failed",
            "Variable_List":{"FLOTILLA_KEY":"8"}
        }
    }
}"""


def test_qstat_json_jobs_by_id():
    jobs = parse_qstat(QSTAT_JSON)
    assert jobs["1201.pbs01"] == QstatJob(
        "1201.pbs01", "Q", None, "Not Running: Insufficient amount of resource: ncpus (R: 1 A: 0 T: 2)", key="7,8")
    assert jobs["1202.pbs01"] == QstatJob(
        "1202.pbs01", "F", 3, "Job run at Tue Dec 01 at 22:44 on (node01:ncpus=1) and failed",
        "Tue Dec  1 22:44:26 2026", "Tue Dec  1 22:44:29 2026", "8")


def test_qstat_json_quirks():
    raw_tab = '{"Jobs":{"1.s":{"job_state":"R","Variable_List":{"PBS_O_WORKDIR":"/a\tb"}}}}'  # a tab, unescaped
    assert parse_qstat(raw_tab)["1.s"].state == "R"
    assert parse_qstat("") == {}
    assert parse_qstat('{"timestamp":1, "pbs_version":"2022.1.1", "pbs_server":"s"}') == {}  # no job known
    with pytest.raises(LauncherError, match="not JSON"):
        parse_qstat("Job Id: 1.s\n    job_state = R\n")


def test_qstat_and_qdel_errors_tell_unknown_and_finished_jobs_from_the_rest():
    stderr = ("qstat: Unknown Job Id 999.pbs01\n"
              "qstat: 1008.pbs01 Job has finished, use -x or -H to obtain historical job information\n"
              "qdel: Job has finished 1009.pbs01\n"
              "qstat: cannot connect to server pbs01 (errno=111)\n")
    assert parse_gone(stderr) == (["999.pbs01", "1008.pbs01", "1009.pbs01"],
                                  ["qstat: cannot connect to server pbs01 (errno=111)"])


def test_qselect_ids_and_ids_matched_by_sequence_number():
    assert parse_qselect("1201.pbs01\n1202.pbs01\n\n") == ["1201.pbs01", "1202.pbs01"]
    long_names = {"12.pbs.example.org": QstatJob("12.pbs.example.org", "R")}
    assert match_ids(["12.pbs", "13.pbs"], long_names) == {"12.pbs": long_names["12.pbs.example.org"]}


# --- the state map ------------------------------------------------------------------------------


def stamp(text):
    return time.mktime(time.strptime(text, "%a %b %d %H:%M:%S %Y"))


@pytest.mark.parametrize("state, comment, reason", [
    ("Q", "Not Running: Insufficient amount of resource: ncpus", "Not Running: Insufficient amount of resource: ncpus"),
    ("Q", "", None),
    ("H", "Job held by user", "held: Job held by user"),
    ("W", "", "waiting for its start time"),
    ("M", "", "moved to another server"),
])
def test_waiting_jobs_are_queued_with_their_reason(state, comment, reason):
    status = job_status(QstatJob("1.s", state, comment=comment))
    assert (status.state, status.job_id, status.reason) == (JobState.QUEUED, "1.s", reason)


@pytest.mark.parametrize("state, note", [("R", None), ("E", "exiting"), ("S", "suspended"), ("B", None)])
def test_running_jobs_have_their_start_time(state, note):
    status = job_status(QstatJob("1.s", state, start="Tue Dec  1 22:44:26 2026"))
    assert (status.state, status.reason, status.started) == (JobState.RUNNING, note, stamp("Tue Dec  1 22:44:26 2026"))


@pytest.mark.parametrize("exit_status, cancelled, expected, returncode, signal, error", [
    (0, False, JobState.COMPLETED, 0, None, None),
    (0, True, JobState.COMPLETED, 0, None, None),  # it ended before the delete
    (3, False, JobState.FAILED, 3, None, None),
    (3, True, JobState.FAILED, 3, None, None),
    (139, False, JobState.FAILED, None, 11, None),  # the wrapper's 128 + signal
    (143, True, JobState.CANCELLED, None, 15, None),
    (271, True, JobState.CANCELLED, None, 15, None),  # PBS's 256 + signal
    (271, False, JobState.FAILED, None, 15, "stopped by PBS (a time limit, preemption or an operator)"),
    (-29, False, JobState.FAILED, None, None, "time limit"),
    (-27, False, JobState.FAILED, None, None, "out of memory"),
    (-1, False, JobState.FAILED, None, None, "PBS could not run the job (Exit_status -1)"),
    (None, True, JobState.CANCELLED, None, None, None),
    (None, False, JobState.FAILED, None, None, "PBS ended the job before it ran: Job deleted"),
])
def test_finished_jobs(exit_status, cancelled, expected, returncode, signal, error):
    job = QstatJob("1.s", "F", exit_status, "Job deleted", "Tue Dec  1 22:44:26 2026", "Tue Dec  1 22:44:29 2026")
    status = job_status(job, cancelled=cancelled)
    assert (status.state, status.returncode, status.signal, status.error) == (expected, returncode, signal, error)
    assert status.ended == stamp("Tue Dec  1 22:44:29 2026")
    assert job_status(QstatJob("1.s[3]", "X", exit_status), cancelled=cancelled).state == expected


def test_a_job_pbs_does_not_know_is_left_to_the_caller_and_an_unknown_state_is_not_final():
    assert job_status(None) is None
    status = job_status(QstatJob("1.s", "Z"))
    assert not status.state.terminal and status.reason == "PBS state Z"


# --- the launcher against an in-process PBS ------------------------------------------------------


class FakePBS(PBSLauncher):
    """Answers qsub / qstat / qselect / qdel from a dict of jobs; records every command."""

    def __init__(self, work_dir):
        super().__init__(work_dir=work_dir, env={"PBS_SERVER": "pbs01"}, base_env={})
        self.calls = []
        self.jobs = {}  # job id -> QstatJob-like fields
        self.qstat_error = None

    def run_command(self, argv, *, input=None):
        self.calls.append(argv)
        done = lambda out="", code=0, err="": subprocess.CompletedProcess(argv, code, out, err)  # noqa: E731
        if argv[0] == "qsub":
            job_id = f"{100 + len(self.jobs)}.pbs01"
            key = argv[argv.index("-v") + 1].split("=", 1)[1]
            self.jobs[job_id] = {"Job_Name": argv[argv.index("-N") + 1], "job_state": "Q",
                                 "comment": "Not Running: busy", "Variable_List": {"FLOTILLA_KEY": key}}
            return done(f"{job_id}\n")
        if argv[0] == "qstat":
            if self.qstat_error:
                return done(code=2, err=self.qstat_error)
            ids = argv[5:]
            known = {job_id: self.jobs[job_id] for job_id in ids if job_id in self.jobs}
            err = "".join(f"qstat: Unknown Job Id {job_id}\n" for job_id in ids if job_id not in self.jobs)
            report = {"pbs_server": "pbs01", **({"Jobs": known} if known else {})}
            return done(json.dumps(report), 153 if err else 0, err)
        if argv[0] == "qselect":
            return done("".join(f"{job_id}\n" for job_id, job in self.jobs.items() if job["Job_Name"] == argv[-1]))
        if argv[0] == "qdel":
            err = ""
            for job_id in argv[1:]:
                if self.jobs[job_id]["job_state"] == "F":
                    err += f"qdel: Job has finished {job_id}\n"
                self.jobs[job_id].update(job_state="F")
            return done(code=35 if err else 0, err=err)
        raise AssertionError(argv)


def _jobs(tmp_path, count):
    return [JobSpec(key=str(i), name=f"m_{i}", argv=["true"], cwd=str(tmp_path / f"m_{i}")) for i in range(count)]


def test_status_asks_qstat_once_for_every_job(tmp_path):
    pbs = FakePBS(tmp_path / "work")
    pbs.submit(_jobs(tmp_path, 100), group="g")
    pbs.calls.clear()
    states = pbs.status([str(i) for i in range(100)])
    assert [argv[:5] for argv in pbs.calls] == [["qstat", "-x", "-f", "-F", "json"]]
    assert {(status.state, status.reason) for status in states.values()} == {(JobState.QUEUED, "Not Running: busy")}


def test_a_submitter_that_died_after_qsub_is_found_by_the_key_in_the_jobs_variables(tmp_path):
    pbs = FakePBS(tmp_path / "work")
    job = _jobs(tmp_path, 1)[0]
    pbs.submit([job], group="g")
    pbs.journal_path.write_text(pbs.journal_path.read_text().splitlines()[0] + "\n")  # only the intent
    again = FakePBS(tmp_path / "work")
    again.jobs = pbs.jobs
    again.submit([job], group="g")
    assert [argv[0] for argv in again.calls] == ["qselect", "qstat"]
    assert again.status(["0"])["0"].job_id == "100.pbs01"


def test_a_job_pbs_forgot_is_known_from_its_status_file_else_cancelled_or_lost(tmp_path):
    pbs = FakePBS(tmp_path / "work")
    stopped, never_ran, gone = _jobs(tmp_path, 3)
    pbs.submit([stopped, never_ran, gone], group="g")
    pbs.cancel([never_ran], group="g")
    (tmp_path / "m_0").mkdir()
    (tmp_path / "m_0" / "m_0.out.status").write_text(
        '{"key":"0","job_id":"100.pbs01","started":5.0}\n'
        '{"key":"0","job_id":"100.pbs01","ended":6.0,"returncode":143,"terminated":true}\n')
    pbs.jobs.clear()  # no job history left
    states = pbs.status(["0", "1", "2"])
    assert (states["0"].state, states["0"].signal, states["0"].started) == (JobState.FAILED, 15, 5.0)
    assert states["0"].error == "stopped by PBS (a time limit, preemption or an operator)"
    assert (states["1"].state, states["1"].started) == (JobState.CANCELLED, None)
    assert states["2"].state == JobState.LOST and "PBS no longer knows job 102.pbs01" in states["2"].error


def test_a_pbs_error_is_reported_not_turned_into_states(tmp_path):
    pbs = FakePBS(tmp_path / "work")
    pbs.submit(_jobs(tmp_path, 1), group="g")
    pbs.qstat_error = "qstat: cannot connect to server pbs01 (errno=111)\n"
    with pytest.raises(LauncherError, match=r"qstat failed \(exit 2\): qstat: cannot connect to server"):
        pbs.status(["0"])


def test_cancel_is_recorded_and_a_finished_job_is_no_error(tmp_path):
    pbs = FakePBS(tmp_path / "work")
    submitted, later = _jobs(tmp_path, 2)
    pbs.submit([submitted], group="g")
    pbs.cancel([submitted, later], group="g")
    pbs.cancel([submitted], group="g")  # qdel: Job has finished
    assert pbs.calls[-1] == ["qdel", "100.pbs01"]
    pbs.submit([submitted, later], group="g")
    assert [argv[0] for argv in pbs.calls].count("qsub") == 1
    states = pbs.status(["0", "1"])
    assert states["0"].state == states["1"].state == JobState.CANCELLED


def test_a_bad_option_refuses_the_submission_before_any_qsub(tmp_path):
    pbs = FakePBS(tmp_path / "work")
    good, bad = _jobs(tmp_path, 2)
    bad.resources = {"batch_args": {"o": "/elsewhere"}}
    with pytest.raises(BatchOptionError, match="-o cannot be given .*: Flotilla chooses the job's output file"):
        pbs.submit([good, bad], group="g")
    assert pbs.calls == []


def test_the_job_command_writes_pbs_output_beside_the_members(tmp_path):
    job = JobSpec(key="7", name="m", argv=["true"], cwd=str(tmp_path), stdout="out.txt",
                  resources={"time": "5"})
    argv, script = FakePBS(tmp_path / "work").job_command(job)
    assert argv[argv.index("-o") + 1] == f"{tmp_path}/out.txt.pbs"
    assert argv[argv.index("-e") + 1] == f"{tmp_path}/m.err.pbs"
    assert script.startswith("#!/bin/sh\n#PBS -l walltime=00:05:00\n")
    assert f"> {tmp_path}/out.txt 2> {tmp_path}/m.err\n" in script


def test_a_members_folder_must_be_absolute(tmp_path):
    job = JobSpec(key="7", name="m", argv=["true"], cwd="relative/m")
    with pytest.raises(BatchOptionError, match="must be an absolute path"):
        FakePBS(tmp_path / "work").job_command(job)


def test_commands_carry_the_clusters_env_and_a_prefix(tmp_path, monkeypatch):
    seen = {}

    def fake_run(argv, **kwargs):
        seen.update(argv=argv, env=kwargs["env"])
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    pbs = PBSLauncher(work_dir=tmp_path, env={"PBS_SERVER": "pbs01"}, base_env={"PATH": "/usr/bin"},
                      command_prefix=["sudo", "-n", "-u", "alice", "--"])
    pbs.run_command(["qstat", "-x"])
    assert seen["env"] == {"PATH": "/usr/bin", "PBS_SERVER": "pbs01"}
    assert seen["argv"] == ["sudo", "-n", "-u", "alice", "--",
                            "env", "PATH=/usr/bin", "PBS_SERVER=pbs01", "qstat", "-x"]
