"""The Slurm launcher's pure builders and parsers, its state map, and its logic against a
fake Slurm (the real one: tests/integration/test_slurm_real.py)."""

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launchers.base import JobSpec, JobState, LauncherError
from launchers.slurm import (
    GROUP_COMMENT_PREFIX, QueueRow, SlurmLauncher, SlurmOptionError, array_chunks, array_option, array_script,
    batch_job_script, batch_options, expand_job_ids, format_batch_directives, format_run_args, format_walltime,
    job_status, manifest_task, member_script, parse_exit_code, parse_lookup, parse_sbatch_id, parse_scontrol_config,
    parse_scontrol_job, parse_squeue, quote_directive, read_status_file, sbatch_argv, site_limits, srun_argv,
    status_file, status_from_file, walltime,
)

TRICKY = ["two words", "it's", 'say "hi"', "$HOME and `id`", "back\\slash", "# not a comment", "semi;colon", "a,b"]


def sbatch_reads(line: str) -> list[str]:
    """The arguments sbatch 22.05 takes from one ``#SBATCH`` line (src/sbatch/opt.c,
    _get_argument): blanks split, "..." and '...' quote, a backslash escapes (also
    inside quotes), an unquoted # ends the line, nothing is expanded."""
    assert line.startswith("#SBATCH ")
    text, args, i = line[len("#SBATCH "):], [], 0
    while i < len(text):
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text) or text[i] == "#":
            break
        current, quote, escape = "", None, False
        while i < len(text) and (quote or not text[i].isspace()):
            char = text[i]
            i += 1
            if escape:
                escape = False
            elif char == "\\":
                escape = True
                continue
            elif quote:
                if char == quote:
                    quote = None
                    continue
            elif char in "\"'":
                quote = char
                continue
            elif char == "#":
                i = len(text)
                break
            current += char
        args.append(current)
    return args


# --- run args (srun) ----------------------------------------------------------------------


def test_run_args_are_formatted_like_smartsims_srun_settings():
    assert format_run_args({"nodes": 2, "exclusive": None, "n": 4, "x": None}) == [
        "--nodes=2", "--exclusive", "-n", "4", "-x"]


def test_keys_given_with_dashes_are_stripped():
    assert format_run_args({"--nodes": 2, "-n": 4}) == ["--nodes=2", "-n", "4"]
    assert format_batch_directives({"--nodes": 2, "-N": 3}) == ["#SBATCH --nodes=2", "#SBATCH -N 3"]


def test_zero_is_a_value_false_leaves_the_option_out_and_true_is_a_flag():
    assert format_run_args({"nice": 0, "exclusive": False, "overcommit": True, "c": 0}) == [
        "--nice=0", "--overcommit", "-c", "0"]


def test_an_empty_value_is_refused_not_turned_into_a_bare_flag():
    with pytest.raises(SlurmOptionError, match="--partition has an empty value"):
        format_run_args({"partition": ""})


def test_values_with_spaces_stay_one_argv_item():
    assert format_run_args({"comment": "two words", "J": "it's"}) == ["--comment=two words", "-J", "it's"]


@pytest.mark.parametrize("value", ["two\nlines", "cr\rhere", "nul\x00"])
def test_values_with_line_breaks_are_refused(value):
    with pytest.raises(SlurmOptionError, match="line breaks"):
        format_batch_directives({"constraint": value})


@pytest.mark.parametrize("key", ["no spaces", "a=b", "", "--", 3])
def test_bad_option_names_are_refused(key):
    with pytest.raises(SlurmOptionError):
        format_run_args({key: "1"})


def test_srun_cannot_move_the_members_folder_or_output():
    for key in ("chdir", "D", "--output", "e", "err"):
        with pytest.raises(SlurmOptionError, match="cannot be given"):
            format_run_args({key: "x"})


def test_srun_steps_run_side_by_side():
    assert srun_argv(["python", "sim.py"], {"n": 2}) == ["srun", "--exact", "-n", "2", "python", "sim.py"]


# --- batch directives (#SBATCH) -------------------------------------------------------------


def test_a_one_letter_batch_arg_is_one_line():
    assert format_batch_directives({"N": 3, "exclusive": None, "mem": "4G"}) == [
        "#SBATCH -N 3", "#SBATCH --exclusive", "#SBATCH --mem=4G"]


@pytest.mark.parametrize("value", TRICKY)
def test_directive_values_reach_sbatch_intact(value):
    long_line, short_line = format_batch_directives({"comment": value, "J": value}, reserved={})
    assert sbatch_reads(long_line) == [f"--comment={value}"]
    assert sbatch_reads(short_line) == ["-J", value]


def test_plain_values_are_written_bare():
    assert quote_directive("debug") == "debug"
    assert quote_directive("1-00:00:00") == "1-00:00:00"
    assert quote_directive("gpu:2,mem=4G") == "gpu:2,mem=4G"


@pytest.mark.parametrize("key", ["job-name", "--job-name", "J", "output", "-o", "--out", "error", "e", "chdir", "D",
                                 "comment", "wrap", "array", "a", "wait", "W", "parsable"])
def test_flotillas_own_batch_options_cannot_be_overridden(key):
    with pytest.raises(SlurmOptionError, match=r"^--[a-z-]+ cannot be given \(.*\): "):
        format_batch_directives({key: "x"})


def test_batch_settings_become_options_in_smartsims_order():
    options = batch_options({"nodes": 2, "time": "10:00:00", "account": "acct", "queue": "debug",
                             "batch_args": {"exclusive": None, "--mem": "4G"}})
    assert format_batch_directives(options) == [
        "#SBATCH --exclusive", "#SBATCH --mem=4G", "#SBATCH --nodes=2", "#SBATCH --partition=debug",
        "#SBATCH --time=10:00:00", "#SBATCH --account=acct"]


def test_empty_batch_settings_are_left_out():
    assert batch_options({"nodes": None, "time": "", "account": "", "queue": "", "batch_args": {}}) == {}


def test_a_batch_setting_given_twice_is_refused():
    with pytest.raises(SlurmOptionError, match="--nodes is given twice"):
        batch_options({"nodes": 2, "batch_args": {"N": 3}})
    with pytest.raises(SlurmOptionError, match="--partition is given twice"):
        batch_options({"queue": "debug", "batch_args": {"--partition": "long"}})


def test_unknown_batch_settings_are_refused():
    with pytest.raises(SlurmOptionError, match="unknown batch setting"):
        batch_options({"ncpus": 4})


# --- sbatch argv and the job script ------------------------------------------------------------


def test_sbatch_argv_carries_flotillas_options_and_escapes_percent_in_paths():
    argv = sbatch_argv(job_name="sweep 0", output="/w/50%/m.out", error="/w/50%/m.err", chdir="/w/50%",
                       comment="flotilla:7")
    assert argv == ["sbatch", "--parsable", "--job-name=sweep 0", "--output=/w/50%%/m.out", "--error=/w/50%%/m.err",
                    "--chdir=/w/50%", "--comment=flotilla:7"]


def test_sbatch_argv_refuses_a_path_with_a_line_break():
    with pytest.raises(SlurmOptionError, match="single line"):
        sbatch_argv(job_name="m", output="/w/a\nb", error="/w/e", chdir="/w", comment="c")


def _run_script(tmp_path, argv, env=None, key="7"):
    folder = tmp_path / "it's a $folder"
    folder.mkdir()
    status = folder / "m.out.status"
    script = member_script(key=key, argv=argv, cwd=str(folder), env=env or {}, status_file=str(status),
                           directives=["#SBATCH -N 1"])
    result = subprocess.run(["bash"], input=script, capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "SLURM_JOB_ID": "42"}, timeout=30)
    return result, folder, status


def test_the_job_script_runs_the_member_with_its_argv_and_env_intact(tmp_path):
    tricky = [*TRICKY, "new\nline", "", "*", "~"]
    argv = [sys.executable, "-c", "import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), os.environ['MSG']]))",
            *tricky]
    result, folder, _ = _run_script(tmp_path, argv, env={"MSG": "it's $HOME `id`"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [tricky, str(folder), "it's $HOME `id`"]


def test_the_job_script_records_start_and_exit_status(tmp_path):
    before = time.time()
    result, _, status = _run_script(tmp_path, ["sh", "-c", "exit 3"])
    assert result.returncode == 3
    record = read_status_file(str(status), "7")
    assert record["job_id"] == "42" and record["returncode"] == 3 and record["terminated"] is False
    assert before <= record["started"] <= record["ended"] <= time.time()
    assert status_from_file(record, job_id="42", cancelled=False).state == JobState.FAILED


def test_a_member_that_cannot_start_fails_with_127(tmp_path):
    result, _, status = _run_script(tmp_path, ["/no/such/program"])
    assert result.returncode == 127
    assert read_status_file(str(status), "7")["returncode"] == 127


def test_the_status_file_of_another_member_is_ignored(tmp_path):
    _, _, status = _run_script(tmp_path, ["true"], key="other")
    assert read_status_file(str(status), "7") == {}


def test_bad_env_names_are_refused():
    with pytest.raises(SlurmOptionError, match="environment variable"):
        member_script(key="1", argv=["true"], cwd="/w", env={"A B": "1"}, status_file="/w/s")


# --- parsers --------------------------------------------------------------------------------


@pytest.mark.parametrize("output, parsed", [("1234\n", ("1234", None)), ("1234;cluster2\n", ("1234", "cluster2")),
                                            ("sbatch: note\n77\n", ("77", None))])
def test_sbatch_parsable_output(output, parsed):
    assert parse_sbatch_id(output) == parsed


def test_sbatch_output_without_a_job_id_is_an_error():
    with pytest.raises(LauncherError, match="no job id"):
        parse_sbatch_id("Submitted batch job 12\n")


SQUEUE_OUTPUT = (  # squeue -h -t all -O JobArrayID:|,State:|,exit_code:|,StartTime:|,EndTime:|,Reason:| (22.05)
    "1|FAILED|768|2026-12-01T22:44:25|2026-12-01T22:44:25|NonZeroExitCode|\n"
    "2|PENDING|0|N/A|N/A|DependencyNeverSatisfied|\n"
    "3_[0-5%2]|PENDING|0|N/A|N/A|ReqNodeNotAvail, Reserved for maintenance|\n"
    "4_7|RUNNING|0|2026-12-01T22:44:51|2026-12-01T22:45:51|None|\n"
    "5|CANCELLED|15|2026-12-01T22:44:49|2026-12-01T22:44:49|None|\n"
)


def test_squeue_lines_are_split_on_the_separator_only():
    rows = parse_squeue(SQUEUE_OUTPUT)
    assert rows["1"] == QueueRow("1", "FAILED", 768, "2026-12-01T22:44:25", "2026-12-01T22:44:25", "NonZeroExitCode")
    assert rows["3_0"].reason == "ReqNodeNotAvail, Reserved for maintenance"
    assert rows["4_7"].state == "RUNNING"


def test_collapsed_array_tasks_are_expanded():
    rows = parse_squeue(SQUEUE_OUTPUT)
    assert [job_id for job_id in rows if job_id.startswith("3_")] == [f"3_{task}" for task in range(6)]
    assert expand_job_ids("9_[1-3,7]") == ["9_1", "9_2", "9_3", "9_7"]
    assert expand_job_ids("9_5") == ["9_5"]


def test_squeue_o_lines_without_a_trailing_separator():
    rows = parse_squeue("12|PENDING|(ReqNodeNotAvail, Reserved for maintenance)\n13_2|RUNNING|None\n",
                        fields=("JobArrayID", "State", "Reason"))
    assert rows["12"].reason == "(ReqNodeNotAvail, Reserved for maintenance)"
    assert rows["13_2"].exit_status is None


def test_an_unexpected_squeue_line_is_an_error():
    with pytest.raises(LauncherError, match="unexpected squeue line"):
        parse_squeue("12 PENDING\n")


def test_lookup_finds_flotillas_jobs_by_the_key_in_their_comment():
    assert parse_lookup("10|flotilla:7|\n11|somebody else's|\n12|flotilla:a|b|\n") == {"7": "10", "a|b": "12"}


SCONTROL_JOB = """JobId=11 JobName=sneaky ExitCode=9:9 x
   UserId=root(0) GroupId=root(0) MCS_label=N/A
   Priority=4294901759 Nice=0 Account=(null) QOS=(null)
   JobState=FAILED Reason=NonZeroExitCode Dependency=(null)
   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=3:0
   StartTime=2026-12-01T22:44:25 EndTime=2026-12-01T22:44:26 Deadline=N/A
   Comment=ExitCode=7:7
"""


def test_scontrol_show_job_exit_code_and_state():
    fields = parse_scontrol_job(SCONTROL_JOB)
    assert fields["JobState"] == "FAILED" and fields["Reason"] == "NonZeroExitCode"
    assert parse_exit_code(fields["ExitCode"]) == (3, 0)
    assert parse_exit_code("0:9") == (0, 9)


def test_scontrol_show_config_site_limits():
    text = ("Configuration data as of 2026-12-01T10:00:00\nMaxArraySize            = 2001\n"
            "MaxJobCount             = 50000\nMinJobAge = 600 sec\n")
    assert parse_scontrol_config(text)["MinJobAge"] == "600 sec"
    assert site_limits(text) == {"MaxArraySize": 2001, "MaxJobCount": 50000}
    assert site_limits("") == {"MaxArraySize": 1001, "MaxJobCount": 10000}


# --- the state map ------------------------------------------------------------------------------


def test_pending_is_queued_with_its_reason():
    status = job_status(QueueRow("2", "PENDING", 0, "N/A", "N/A", "ReqNodeNotAvail, Reserved for maintenance"))
    assert (status.state, status.job_id) == (JobState.QUEUED, "2")
    assert status.reason == "ReqNodeNotAvail, Reserved for maintenance"
    assert job_status(QueueRow("2", "PENDING", 0, reason="None")).reason is None


def test_running_has_its_start_time():
    status = job_status(QueueRow("4", "RUNNING", 0, "2026-12-01T22:44:51", "2026-12-01T22:45:51", "None"))
    assert status.state == JobState.RUNNING
    assert status.started == time.mktime(time.strptime("2026-12-01T22:44:51", "%Y-%m-%dT%H:%M:%S"))


@pytest.mark.parametrize("state, exit_status, expected, returncode, signal, error", [
    ("COMPLETED", 0, JobState.COMPLETED, 0, None, None),
    ("FAILED", 3 << 8, JobState.FAILED, 3, None, None),
    ("FAILED", 139 << 8, JobState.FAILED, None, 11, None),  # the wrapper's 128 + signal
    ("CANCELLED", 15, JobState.CANCELLED, None, 15, None),
    ("TIMEOUT", 0, JobState.FAILED, 0, None, "time limit"),
    ("OUT_OF_MEMORY", 9, JobState.FAILED, None, 9, "out of memory"),
    ("NODE_FAIL", 0, JobState.FAILED, 0, None, "node failure"),
    ("PREEMPTED", 0, JobState.FAILED, 0, None, "preempted by the scheduler"),
    ("BOOT_FAIL", 0, JobState.FAILED, 0, None, "its node failed to boot"),
    ("DEADLINE", 0, JobState.FAILED, 0, None, "deadline reached before it ended"),
])
def test_final_states(state, exit_status, expected, returncode, signal, error):
    status = job_status(QueueRow("1", state, exit_status, "2026-12-01T22:44:25", "2026-12-01T22:44:26", "None"))
    assert (status.state, status.returncode, status.signal, status.error) == (expected, returncode, signal, error)


def test_a_job_cancelled_while_pending_has_no_start_time():
    assert job_status(QueueRow("5", "CANCELLED", 0, "2026-12-01T22:44:49", "2026-12-01T22:44:49", "None")).started is None


def test_a_job_the_scheduler_does_not_know_is_left_to_the_caller():
    assert job_status(None) is None


def test_an_unknown_state_is_shown_not_guessed_final():
    status = job_status(QueueRow("1", "SOMETHING_NEW", 0))
    assert not status.state.terminal and status.reason == "Slurm state SOMETHING_NEW"


def test_status_file_ends():
    ended = {"started": 1.0, "ended": 2.0, "terminated": False}
    assert status_from_file({**ended, "returncode": 0}, job_id="1", cancelled=False).state == JobState.COMPLETED
    killed = status_from_file({**ended, "returncode": 143, "terminated": True}, job_id="1", cancelled=False)
    assert (killed.state, killed.signal) == (JobState.FAILED, 15)
    assert killed.error == "stopped by Slurm (a time limit, preemption or an operator)"
    cancelled = status_from_file({**ended, "returncode": 143, "terminated": True}, job_id="1", cancelled=True)
    assert cancelled.state == JobState.CANCELLED
    assert status_from_file({"started": 1.0}, job_id="1", cancelled=False) is None


# --- the launcher against a fake Slurm ---------------------------------------------------------


class FakeSlurm(SlurmLauncher):
    """Answers sbatch / squeue / scontrol / scancel from a dict of jobs; records every command."""

    def __init__(self, work_dir):
        super().__init__(work_dir=work_dir, env={"SLURM_CONF": "/x/slurm.conf"}, base_env={})
        self.calls = []
        self.jobs = {}  # job id -> (state, exit status, comment)
        self.fail_sbatch = False

    def run_command(self, argv, *, input=None):
        self.calls.append(argv)
        done = lambda out="", code=0, err="": subprocess.CompletedProcess(argv, code, out, err)  # noqa: E731
        if argv[0] == "sbatch":
            if self.fail_sbatch:
                return done(code=1, err="sbatch: error: Batch job submission failed: Socket timed out")
            job_id = str(100 + len(self.jobs))
            comment = next(arg for arg in argv if arg.startswith("--comment=")).split("=", 1)[1]
            self.jobs[job_id] = ("PENDING", 0, comment)
            return done(f"{job_id}\n")
        if argv[0] == "squeue":
            if "-j" in argv:
                wanted = argv[argv.index("-j") + 1].split(",")
                known = [job_id for job_id in wanted if job_id in self.jobs]
                if not known:
                    return done(code=1, err="slurm_load_jobs error: Invalid job id specified")
                return done("".join(f"{job_id}|{self.jobs[job_id][0]}|{self.jobs[job_id][1]}|N/A|N/A|Resources|\n"
                                    for job_id in known))
            return done("".join(f"{job_id}|{comment}|\n" for job_id, (_, _, comment) in self.jobs.items()))
        if argv[0] == "scontrol":
            return done(code=1, err="slurm_load_jobs error: Invalid job id specified")
        if argv[0] == "scancel":
            for job_id in argv[1:]:
                self.jobs[job_id] = ("CANCELLED", 15, self.jobs[job_id][2])
            return done()
        raise AssertionError(argv)


def _jobs(tmp_path, count):
    return [JobSpec(key=str(i), name=f"m_{i}", argv=["true"], cwd=str(tmp_path / f"m_{i}")) for i in range(count)]


def test_status_asks_squeue_once_for_every_job(tmp_path):
    slurm = FakeSlurm(tmp_path / "work")
    slurm.submit(_jobs(tmp_path, 100), group="g")
    slurm.calls.clear()
    states = slurm.status([str(i) for i in range(100)])
    assert [argv[0] for argv in slurm.calls] == ["squeue"]
    assert {(status.state, status.reason) for status in states.values()} == {(JobState.QUEUED, "Resources")}


def test_a_resubmit_never_submits_twice(tmp_path):
    slurm = FakeSlurm(tmp_path / "work")
    jobs = _jobs(tmp_path, 3)
    slurm.submit(jobs, group="g")
    slurm.submit(jobs, group="g")
    assert [argv[0] for argv in slurm.calls].count("sbatch") == 3
    again = FakeSlurm(tmp_path / "work")  # a new process reads the journal
    again.jobs = slurm.jobs
    assert again.unstarted(jobs) == []


def test_a_submitter_that_died_after_sbatch_is_found_by_the_comment(tmp_path):
    slurm = FakeSlurm(tmp_path / "work")
    job = _jobs(tmp_path, 1)[0]
    slurm.submit([job], group="g")
    journal = tmp_path / "work" / "slurm.journal"
    journal.write_text(journal.read_text().splitlines()[0] + "\n")  # only the intent: it died before recording the id
    again = FakeSlurm(tmp_path / "work")
    again.jobs = slurm.jobs
    assert again.unstarted([job]) == []
    again.submit([job], group="g")
    assert "sbatch" not in [argv[0] for argv in again.calls]
    assert again.status(["0"])["0"].job_id == "100"


def test_an_intent_that_never_reached_slurm_is_submitted(tmp_path):
    slurm = FakeSlurm(tmp_path / "work")
    slurm.fail_sbatch = True
    job = _jobs(tmp_path, 1)[0]
    with pytest.raises(LauncherError, match="Socket timed out"):
        slurm.submit([job], group="g")
    assert slurm.status(["0"])["0"].state == JobState.QUEUED  # a transient error fails nothing
    slurm.fail_sbatch = False
    assert slurm.unstarted([job]) == [job]
    slurm.submit([job], group="g")
    assert slurm.status(["0"])["0"].job_id == "100"


def test_a_job_slurm_forgot_is_known_from_its_status_file_else_lost(tmp_path):
    slurm = FakeSlurm(tmp_path / "work")
    jobs = _jobs(tmp_path, 2)
    slurm.submit(jobs, group="g")
    (tmp_path / "m_0").mkdir()
    (tmp_path / "m_0" / "m_0.out.status").write_text(
        '{"key":"0","job_id":"100","started":5.0}\n'
        '{"key":"0","job_id":"100","ended":6.0,"returncode":3,"terminated":false}\n')
    slurm.jobs.clear()  # purged after MinJobAge
    states = slurm.status(["0", "1"])
    assert (states["0"].state, states["0"].returncode, states["0"].started) == (JobState.FAILED, 3, 5.0)
    assert states["1"].state == JobState.LOST and "no longer knows job 101" in states["1"].error


def test_cancel_is_recorded_so_an_unsubmitted_job_never_goes_out(tmp_path):
    slurm = FakeSlurm(tmp_path / "work")
    submitted, later = _jobs(tmp_path, 2)
    slurm.submit([submitted], group="g")
    slurm.cancel([submitted, later], group="g")
    assert ["scancel", "100"] in slurm.calls
    slurm.submit([submitted, later], group="g")
    assert [argv[0] for argv in slurm.calls].count("sbatch") == 1
    states = slurm.status(["0", "1"])
    assert states["0"].state == states["1"].state == JobState.CANCELLED


def test_a_bad_option_refuses_the_submission_before_any_sbatch(tmp_path):
    slurm = FakeSlurm(tmp_path / "work")
    good, bad = _jobs(tmp_path, 2)
    bad.resources = {"batch_args": {"output": "/elsewhere"}}
    with pytest.raises(SlurmOptionError, match="--output cannot be given .*: Flotilla chooses the member's output file"):
        slurm.submit([good, bad], group="g")
    assert slurm.calls == []


def test_commands_carry_the_clusters_env_and_a_prefix(tmp_path, monkeypatch):
    seen = {}

    def fake_run(argv, **kwargs):
        seen.update(argv=argv, env=kwargs["env"])
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    slurm = SlurmLauncher(work_dir=tmp_path, env={"SLURM_CONF": "/c/slurm.conf"}, base_env={"PATH": "/usr/bin"},
                          command_prefix=["sudo", "-n", "-u", "alice", "--"])
    slurm.run_command(["squeue", "-h"])
    assert seen["env"] == {"PATH": "/usr/bin", "SLURM_CONF": "/c/slurm.conf"}
    assert seen["argv"] == ["sudo", "-n", "-u", "alice", "--",
                            "env", "PATH=/usr/bin", "SLURM_CONF=/c/slurm.conf", "squeue", "-h"]


# --- time limits ---------------------------------------------------------------------------------


def test_walltimes_are_written_with_days_from_24_hours():
    assert walltime(hours=10) == "10:00:00"
    assert walltime(hours=25) == "1-01:00:00"
    assert walltime(hours=72) == "3-00:00:00"
    assert walltime(minutes=90, seconds=0.5) == "01:30:01"  # a part of a second is a second, not dropped
    assert format_walltime("36:00:00") == "1-12:00:00"
    assert format_walltime(datetime.timedelta(days=1, hours=2)) == "1-02:00:00"
    for slurm_form in ("10:00:00", "30", "2-00:00:00", "1-12", "90:00"):
        assert format_walltime(slurm_form) == slurm_form
    with pytest.raises(SlurmOptionError, match="negative"):
        walltime(seconds=-1)


def test_batch_settings_time_is_formatted_wherever_it_is_given():
    assert format_batch_directives(batch_options({"time": "48:00:00"})) == ["#SBATCH --time=2-00:00:00"]
    assert format_batch_directives(batch_options({"batch_args": {"t": "25:00:00"}})) == ["#SBATCH -t 1-01:00:00"]


# --- arrays: options, splitting, the manifest and the task script ---------------------------------


def test_array_option_with_and_without_a_throttle():
    assert array_option(5, 2) == "--array=0-4%2"
    assert array_option(5) == "--array=0-4"
    assert array_option(5, 5) == array_option(5, 9) == "--array=0-4"  # no throttle where all may run
    with pytest.raises(SlurmOptionError, match="at least 1"):
        array_option(5, 0)
    with pytest.raises(SlurmOptionError, match="at least one task"):
        array_option(0)


def test_arrays_are_split_at_max_array_size():
    assert [len(chunk) for chunk in array_chunks(list(range(1000)))] == [1000]
    assert [len(chunk) for chunk in array_chunks(list(range(1001)))] == [1001]
    assert [len(chunk) for chunk in array_chunks(list(range(1002)))] == [1001, 1]
    assert array_chunks(list(range(5)), 3) == [[0, 1, 2], [3, 4]]
    with pytest.raises(SlurmOptionError, match="MaxArraySize"):
        array_chunks([1], 0)


def _member(tmp_path, key, argv, **fields):
    folder = tmp_path / fields.pop("folder", f"m_{key}")
    folder.mkdir(exist_ok=True)
    return JobSpec(key=key, name=f"m_{key}", argv=argv, cwd=str(folder), **fields)


def test_the_manifest_gives_each_task_its_folder_argv_env_and_files(tmp_path):
    job = _member(tmp_path, "7", ["python", "sim.py", "two words"], env={"A": 1}, stdout="out.txt")
    assert manifest_task(job) == {
        "key": "7", "cwd": job.cwd, "argv": ["python", "sim.py", "two words"], "env": {"A": "1"},
        "stdout": f"{job.cwd}/out.txt", "stderr": f"{job.cwd}/m_7.err", "status_file": f"{job.cwd}/out.txt.status"}
    with pytest.raises(SlurmOptionError, match="environment variable"):
        manifest_task(_member(tmp_path, "8", ["true"], env={"A B": "1"}))
    with pytest.raises(SlurmOptionError, match="NUL"):
        manifest_task(_member(tmp_path, "9", ["echo", "a\x00b"]))


def _run_array_task(tmp_path, jobs, task):
    manifest = tmp_path / "work" / "array-x.json"
    manifest.parent.mkdir(exist_ok=True)
    manifest.write_text(json.dumps({"tasks": [manifest_task(job) for job in jobs]}))
    script = array_script(manifest=str(manifest), directives=["#SBATCH -N 1"], python=sys.executable)
    env = {"PATH": os.environ["PATH"], "SLURM_ARRAY_JOB_ID": "42", "SLURM_ARRAY_TASK_ID": str(task)}
    return subprocess.run(["bash"], input=script, capture_output=True, text=True, env=env, timeout=30)


def test_an_array_task_runs_the_member_at_its_index_intact(tmp_path):
    tricky = [*TRICKY, "new\nline", "", "*", "~", "ünï"]
    printer = "import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), os.environ['MSG']]))"
    jobs = [_member(tmp_path, "a", ["sh", "-c", "echo first; exit 9"]),
            _member(tmp_path, "b", [sys.executable, "-c", f"{printer}; sys.exit(3)", *tricky], folder="it's 50% $b",
                    env={"MSG": "it's $HOME `id`\nmore"}, stdout="both.log", stderr="both.log")]
    before = time.time()
    result = _run_array_task(tmp_path, jobs, 1)
    assert result.returncode == 3 and result.stdout == "" and result.stderr == ""  # all went to the member's file
    assert json.loads(Path(jobs[1].cwd, "both.log").read_text()) == [tricky, jobs[1].cwd, "it's $HOME `id`\nmore"]
    record = read_status_file(f"{jobs[1].cwd}/both.log.status", "b")
    assert record["job_id"] == "42_1" and record["returncode"] == 3
    assert before <= record["started"] <= record["ended"] <= time.time()
    assert not Path(jobs[0].cwd, "m_a.out").exists()


def test_an_array_task_without_a_member_fails_and_says_why(tmp_path):
    result = _run_array_task(tmp_path, [_member(tmp_path, "a", ["true"])], 5)
    assert result.returncode == 1
    assert "task 42_5 has no member in" in result.stderr


def test_the_array_script_has_the_batch_settings_and_reads_its_manifest():
    script = array_script(manifest="/w/it's/array-x.json", directives=format_batch_directives({"N": 3}))
    assert script.startswith("#!/bin/bash\n#SBATCH -N 3\n")
    assert "flotilla_manifest='/w/it'\"'\"'s/array-x.json'" in script
    assert "readarray -d '' flotilla_fields < <(python3 -c " in script


# --- batch ensembles: the script -------------------------------------------------------------------


FAKE_SRUN = r"""#!/bin/bash
# srun inside an allocation, for the script's tests: the options say where the output goes
while [[ $1 == -* ]]; do
  case $1 in --output=*) out=${1#--output=} ;; --error=*) err=${1#--error=} ;; esac
  echo "$1" >> "${FAKE_SRUN_LOG:?}"
  shift
done
export SLURM_STEP_ID=$(( $(ls "$(dirname "$FAKE_SRUN_LOG")" | wc -l) )) SLURM_PROCID=0
exec "$@" >"$out" 2>"$err"
"""


def _run_batch_script(tmp_path, jobs, *, cancelled=()):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    journal = tmp_path / "slurm.journal"
    journal.write_text("".join(json.dumps({"key": key, "cancelled": 1.0}, separators=(",", ":")) + "\n"
                               for key in cancelled))
    script = batch_job_script(jobs, journal=str(journal), directives=["#SBATCH --ntasks=3"])
    (tmp_path / "steps").mkdir()
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "3",
           "FAKE_SRUN_LOG": str(tmp_path / "steps" / "log")}
    return subprocess.run(["bash"], input=script, capture_output=True, text=True, env=env, timeout=30), script


def test_the_batch_script_has_smartsims_shape():
    jobs = [JobSpec(key=str(i), name=f"ens_{i}", argv=["sim", f"--LR=0.{i}"], cwd=f"/exp/ens/ens_{i}",
                    resources={"run_args": {"nodes": 1, "n": 4}}) for i in range(2)]
    script = batch_job_script(jobs, journal="/w/slurm.journal",
                              directives=format_batch_directives(batch_options({"time": "25:00:00",
                                                                                "batch_args": {"exclusive": None, "N": 3}})))
    lines = script.splitlines()
    assert lines[:4] == ["#!/bin/bash", "#SBATCH --exclusive", "#SBATCH -N 3", "#SBATCH --time=1-01:00:00"]
    members = [line for line in lines if line.startswith("flotilla_member ")]
    assert len(members) == 2 and all(line.endswith(" &") for line in members)
    assert "srun --exact --job-name=ens_0 --nodes=1 -n 4 --output=/exp/ens/ens_0/ens_0.out" in members[0]
    assert members[0].endswith("'\"0\"' /exp/ens/ens_0/ens_0.out.status /w/slurm.journal sim --LR=0.0 &")
    assert lines[-1] == "until wait; do :; done"


def test_the_batch_script_runs_every_member_as_a_step_with_its_own_status(tmp_path):
    printer = "import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), os.environ['MSG'], os.environ.get('SLURM_NTASKS')]))"
    jobs = [_member(tmp_path, "ok", [sys.executable, "-c", printer, *TRICKY], folder="it's a $folder",
                    env={"MSG": "it's $HOME `id`"}),
            _member(tmp_path, "bad", ["sh", "-c", "echo oops >&2; exit 3"]),
            _member(tmp_path, "gone", ["sh", "-c", "echo ran"])]
    result, _ = _run_batch_script(tmp_path, jobs, cancelled=["gone"])
    assert result.returncode == 0, result.stderr
    assert json.loads(Path(jobs[0].cwd, "m_ok.out").read_text()) == [TRICKY, jobs[0].cwd, "it's $HOME `id`", None]
    assert Path(jobs[1].cwd, "m_bad.err").read_text() == "oops\n"
    assert Path(jobs[2].cwd, "m_gone.out").read_text() == ""  # cancelled before its step started: never ran
    ok, bad, gone = (read_status_file(status_file(job), job.key) for job in jobs)
    assert ok["job_id"] == "77" and ok["step"].startswith("77.") and isinstance(ok["pid"], int)
    assert ok["started"] <= ok["ended"] and ok["returncode"] == 0
    assert bad["returncode"] == 3 and gone["returncode"] == 143
    assert status_from_file(gone, job_id="77", cancelled=True).state == JobState.CANCELLED


# --- the launcher's arrays and batch jobs against a fake Slurm --------------------------------------


class FakeArraySlurm(SlurmLauncher):
    """A fake Slurm with job arrays (a row per task with -r, or one collapsed line) and batch
    jobs; records every command and script."""

    def __init__(self, work_dir, **options):
        super().__init__(work_dir=work_dir, env={"SLURM_CONF": "/x/slurm.conf"}, base_env={}, **options)
        self.calls, self.scripts = [], []
        self.jobs = {}  # job or task id -> [state, exit status, comment]
        self.arrays = {}  # array id -> its task ids
        self.collapsed = False  # squeue without -r: pending tasks as one line
        self.next_id = 100

    def run_command(self, argv, *, input=None):
        self.calls.append(argv)
        done = lambda out="", code=0, err="": subprocess.CompletedProcess(argv, code, out, err)  # noqa: E731
        options = dict(arg[2:].split("=", 1) for arg in argv[1:] if arg.startswith("--") and "=" in arg)
        if argv[0] == "sbatch":
            self.scripts.append(input)
            job_id, self.next_id = str(self.next_id), self.next_id + 1
            if "array" in options:
                last = int(options["array"].split("-")[1].split("%")[0])
                self.arrays[job_id] = [f"{job_id}_{task}" for task in range(last + 1)]
            for task_id in self.arrays.get(job_id, [job_id]):
                self.jobs[task_id] = ["PENDING", 0, options["comment"]]
            return done(f"{job_id}\n")
        if argv[0] == "squeue":
            if "-j" not in argv:
                return done("".join(f"{self._shown(job_id)}|{comment}|\n" for job_id, (_, _, comment) in self.jobs.items()))
            lines = []
            for wanted in argv[argv.index("-j") + 1].split(","):
                known = [task for task in self.arrays.get(wanted, [wanted]) if task in self.jobs]
                if self.collapsed and wanted in self.arrays and known:
                    lines.append(f"{wanted}_[0-{len(known) - 1}%2]|PENDING|0|N/A|N/A|JobArrayTaskLimit|\n")
                    continue
                lines += [f"{job_id}|{self.jobs[job_id][0]}|{self.jobs[job_id][1]}|N/A|N/A|Resources|\n" for job_id in known]
            return done("".join(lines)) if lines else done(code=1, err="slurm_load_jobs error: Invalid job id specified")
        if argv[0] == "scontrol":
            return done(code=1, err="slurm_load_jobs error: Invalid job id specified")
        if argv[0] == "scancel":
            for job_id in argv[1:]:
                for task_id in self.arrays.get(job_id, [job_id]):
                    if task_id in self.jobs:
                        self.jobs[task_id][:2] = ["CANCELLED", 15]
            return done()
        raise AssertionError(argv)

    def _shown(self, job_id):
        array_id = job_id.split("_")[0]
        return f"{array_id}_[0-9]" if self.collapsed and array_id in self.arrays else job_id

    def sbatches(self):
        return [argv for argv in self.calls if argv[0] == "sbatch"]


def test_1000_members_are_one_array_one_sbatch_and_one_squeue(tmp_path):
    slurm = FakeArraySlurm(tmp_path / "work")
    jobs = _jobs(tmp_path, 1000)
    slurm.submit_array(jobs, group="run-1", concurrency=10, name="sweep")
    [sbatch] = slurm.sbatches()
    assert "--array=0-999%10" in sbatch and "--job-name=sweep" in sbatch and "--open-mode=append" in sbatch
    comment = next(arg for arg in sbatch if arg.startswith("--comment="))
    assert comment.startswith("--comment=flotilla-job:")
    manifest = tmp_path / "work" / f"array-{comment.rsplit(':', 1)[1]}.json"
    assert [task["key"] for task in json.loads(manifest.read_text())["tasks"]] == [str(i) for i in range(1000)]
    assert f"flotilla_manifest={manifest}\n" in slurm.scripts[0]

    slurm.calls.clear()
    found = slurm.status([str(i) for i in range(1000)])
    [squeue] = slurm.calls
    assert squeue[squeue.index("-j") + 1] == "100" and "-r" in squeue  # the array's own id: a row per task
    assert found["999"].job_id == "100_999"
    assert {(status.state, status.reason) for status in found.values()} == {(JobState.QUEUED, "Resources")}
    slurm.collapsed = True  # as squeue shows pending tasks without -r: 100_[0-999%2]
    assert {status.reason for status in slurm.status([str(i) for i in range(1000)]).values()} == {"JobArrayTaskLimit"}


def test_an_array_over_max_array_size_is_split_and_a_throttled_one_runs_after_the_other(tmp_path):
    slurm = FakeArraySlurm(tmp_path / "work", max_array_size=3)
    slurm.submit_array(_jobs(tmp_path, 5), group="g", concurrency=2)
    first, second = slurm.sbatches()
    assert "--array=0-2%2" in first and not any(arg.startswith("--dependency") for arg in first)
    assert "--array=0-1" in second and "--dependency=afterany:100" in second
    assert [slurm.status([str(i)])[str(i)].job_id for i in range(5)] == ["100_0", "100_1", "100_2", "101_0", "101_1"]

    free = FakeArraySlurm(tmp_path / "free", max_array_size=3)
    free.submit_array(_jobs(tmp_path, 5), group="g")  # no throttle: side by side
    assert [[arg for arg in argv if arg.startswith(("--array", "--dependency"))] for argv in free.sbatches()] == [
        ["--array=0-2"], ["--array=0-1"]]


def test_the_members_of_an_array_must_share_their_resources(tmp_path):
    slurm = FakeArraySlurm(tmp_path / "work")
    jobs = _jobs(tmp_path, 2)
    jobs[1].resources = {"time": "10"}
    with pytest.raises(SlurmOptionError, match="must share their resources"):
        slurm.submit_array(jobs, group="g")
    with pytest.raises(SlurmOptionError, match="concurrency must be at least 1"):
        slurm.submit_array(_jobs(tmp_path, 2), group="g", concurrency=0)
    assert slurm.calls == []


def _intents_only(work):
    journal = work / "slurm.journal"
    journal.write_text("".join(line + "\n" for line in journal.read_text().splitlines() if "submitting" in line))


def test_a_retried_array_finds_its_array_by_the_token_in_its_comment(tmp_path):
    slurm = FakeArraySlurm(tmp_path / "work", max_array_size=2)
    jobs = _jobs(tmp_path, 3)
    slurm.submit_array(jobs, group="g", name="a,b")  # a name with a comma: looked up without --name
    _intents_only(tmp_path / "work")  # the submitter died after each sbatch
    again = FakeArraySlurm(tmp_path / "work")
    again.jobs, again.arrays, again.collapsed = slurm.jobs, slurm.arrays, True
    assert again.unstarted(jobs) == []
    again.submit_array(jobs, group="g", name="a,b")
    assert again.sbatches() == []
    assert [again.status([job.key])[job.key].job_id for job in jobs] == ["100_0", "100_1", "101_0"]


def test_a_retried_array_slurm_forgot_is_found_by_a_tasks_status_file(tmp_path):
    slurm = FakeArraySlurm(tmp_path / "work")
    jobs = _jobs(tmp_path, 3)
    slurm.submit_array(jobs, group="g")
    _intents_only(tmp_path / "work")
    Path(jobs[1].cwd).mkdir()
    Path(status_file(jobs[1])).write_text('{"key":"1","job_id":"100_1","started":5.0}\n')
    again = FakeArraySlurm(tmp_path / "work")  # squeue knows no job (MinJobAge went by)
    again.submit_array(jobs, group="g")
    assert again.sbatches() == []
    assert again.records()["2"]["job_id"] == "100_2"  # the whole array went out with the task that ran


def test_cancel_of_an_array_task_is_scancel_of_that_task_and_it_stays_cancelled(tmp_path):
    slurm = FakeArraySlurm(tmp_path / "work")
    jobs = _jobs(tmp_path, 3)
    slurm.submit_array(jobs, group="g")
    slurm.cancel([jobs[1]], group="g")
    assert slurm.calls[-1] == ["scancel", "100_1"]
    del slurm.jobs["100_1"]  # a pending task cancelled alone leaves no trace in Slurm
    states = slurm.status(["0", "1"])
    assert (states["0"].state, states["1"].state) == (JobState.QUEUED, JobState.CANCELLED)


def _batch(tmp_path, count=3):
    slurm = FakeArraySlurm(tmp_path / "work")
    jobs = _jobs(tmp_path, count)
    for job in jobs:
        Path(job.cwd).mkdir()
    slurm.submit_batch(jobs, group="g", batch={"nodes": 1, "batch_args": {"ntasks": count}}, name="ens")
    return slurm, jobs


def _record(job, **fields):
    with open(status_file(job), "a") as handle:
        handle.write(json.dumps({"key": job.key, "job_id": "100", **fields}) + "\n")


def test_a_batch_ensemble_is_one_sbatch_and_its_members_share_the_job(tmp_path):
    slurm, jobs = _batch(tmp_path)
    [sbatch] = slurm.sbatches()
    assert "--job-name=ens" in sbatch and sbatch[-1].startswith("--comment=flotilla-job:")
    assert slurm.scripts[0].count("\nflotilla_member ") == 3
    assert "#SBATCH --ntasks=3\n#SBATCH --nodes=1\n" in slurm.scripts[0]
    slurm.calls.clear()
    states = slurm.status(["0", "1", "2"])
    assert [argv[0] for argv in slurm.calls] == ["squeue"]
    assert {(status.state, status.job_id, status.reason) for status in states.values()} == {
        (JobState.QUEUED, "100", "Resources")}


def test_batch_members_have_their_own_states_inside_the_job(tmp_path):
    slurm, (started, ended, waiting) = _batch(tmp_path)
    slurm.jobs["100"][0] = "RUNNING"
    _record(started, step="100.0", pid=5, started=10.0)
    _record(ended, step="100.1", pid=6, started=10.0)
    _record(ended, ended=12.0, returncode=3, terminated=False)
    states = slurm.status(["0", "1", "2"])
    assert (states["0"].state, states["0"].started) == (JobState.RUNNING, 10.0)
    assert (states["1"].state, states["1"].returncode, states["1"].ended) == (JobState.FAILED, 3, 12.0)
    assert (states["2"].state, states["2"].reason) == (JobState.QUEUED, "waiting for a step of job 100")

    slurm.jobs["100"][0] = "COMPLETED"  # it ended, and two members left no exit status
    states = slurm.status(["0", "2"])
    assert {status.state for status in states.values()} == {JobState.LOST}
    assert states["0"].error == "batch job 100 ended and the member left no exit status"


def test_batch_members_the_job_ended_early_fail_with_its_reason(tmp_path):
    slurm, (killed, unstarted) = _batch(tmp_path, 2)
    _record(killed, step="100.0", pid=5, started=10.0)
    _record(killed, ended=12.0, returncode=143, terminated=False)  # its step was signalled, not its wrapper
    slurm.jobs["100"][0] = "COMPLETING"
    assert slurm.status(["0"])["0"].state == JobState.RUNNING  # the job's final state says why, in a moment
    slurm.jobs["100"][0] = "TIMEOUT"
    states = slurm.status(["0", "1"])
    assert {(status.state, status.error) for status in states.values()} == {(JobState.FAILED, "time limit")}
    assert states["0"].signal == 15
    slurm.jobs.clear()  # Slurm forgot the job
    assert slurm.status(["1"])["1"].state == JobState.LOST


def test_cancel_of_a_batch_member_is_its_step_and_of_all_members_the_job(tmp_path):
    slurm, jobs = _batch(tmp_path)
    slurm.jobs["100"][0] = "RUNNING"
    _record(jobs[0], step="100.2", pid=5, started=time.time() - 5)
    slurm.cancel([jobs[0], jobs[1]], group="g")
    assert slurm.calls[-1] == ["scancel", "100.2"]  # the member not started yet: its step gives up when it starts
    states = slurm.status(["0", "1", "2"])
    assert [states[key].state for key in "012"] == [JobState.RUNNING, JobState.CANCELLED, JobState.QUEUED]
    _record(jobs[0], ended=time.time(), returncode=137, terminated=False)
    assert slurm.status(["0"])["0"].state == JobState.CANCELLED
    slurm.cancel([jobs[2]], group="g")
    assert slurm.calls[-1] == ["scancel", "100"]  # every member cancelled: the whole job


def test_a_retried_batch_submission_finds_its_job(tmp_path):
    slurm, jobs = _batch(tmp_path)
    _intents_only(tmp_path / "work")
    again = FakeArraySlurm(tmp_path / "work")
    again.jobs = slurm.jobs
    again.submit_batch(jobs, group="g", batch={"nodes": 1}, name="ens")
    assert again.sbatches() == []
    assert {status.job_id for status in again.status(["0", "1", "2"]).values()} == {"100"}


def test_lookup_finds_arrays_and_batch_jobs_by_their_token():
    text = "100_[3-9%2]|flotilla-job:abc|\n100_1|flotilla-job:abc|\n101|flotilla-job:def|\n102|flotilla:7|\n"
    assert parse_lookup(text, GROUP_COMMENT_PREFIX) == {"abc": "100", "def": "101"}
    assert parse_lookup(text) == {"7": "102"}
