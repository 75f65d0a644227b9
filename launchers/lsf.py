"""IBM Spectrum LSF launcher: one batch job per member. Plain Python: no Django.

Pure builders (bsub argv, job script text with #BSUB lines), pure parsers of LSF's
output (bsub's ``Job <123> is submitted to queue <normal>.``, ``bjobs -a -json -o ...``,
the error lines of bjobs and bkill), a state map to JobState, and a thin
``LSFLauncher`` (the journal, status files and the submit / status / cancel flow are
scheduler.BatchLauncher's, shared with PBS).

Formatting follows SmartSim's ``BsubBatchSettings`` (every option single-dash, one
``#BSUB -opt value`` line each; walltime ``#BSUB -W [hours:]minutes`` and project
``#BSUB -P`` first; nodes as ``-nnodes``, as on CORAL systems) without its faults:
values are quoted, 0 is a value, a setting given twice is refused, and the options
Flotilla sets (on bsub's command line, which wins over #BSUB lines) cannot be given.
The walltime is read as Slurm and the form read it (``30`` is 30 minutes) and rounded
up to whole minutes.

The member's key is the job's description (``-Jd flotilla:<key>``): a submitter that
died after bsub and before recording the job id finds the job in ``bjobs -a -o "jobid
job_description"`` (the user's own jobs). Job names cannot hold ``[ ]`` (a job array).
Facts from IBM's documentation: the command line beats #BSUB lines; ``bjobs -json``
puts values as text in "RECORDS"; an unknown id gives ``Job <x> is not found`` and exit
255; bkill sends SIGINT, SIGTERM, then SIGKILL. Assumed: bsub splits a #BSUB line as a
shell splits words ('...' and "..." quote, as sites' scripts use both; nothing is
expanded); in -json mode an unknown id is a record with "ERROR" (psij reads it so) or a
line on stderr (both are read); EXIT_REASON holds a ``TERM_*`` code or its message; a
job killed by signal n has exit code 128 + n; times read ``Oct 22 13:51`` in local time,
without the year. %J and %I in -o/-e paths are LSF's, so such paths are refused.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import JobSpec, JobState, JobStatus, LauncherError
from .scheduler import (
    BatchLauncher, BatchOptionError, check_resources, error_lines, member_script, option_name,
    option_value, output_path, quote_directive, walltime_seconds,
)
from .slurm import IDS_PER_CALL, exit_code_and_signal, status_file

DESCRIPTION_PREFIX = "flotilla:"
MAX_JOB_NAME = 4094
JOB_ID = re.compile(r"\d+(\[\d+\])?")
BJOBS_FIELDS = ("jobid", "stat", "exit_code", "exit_reason", "pend_reason", "start_time", "finish_time")
LOOKUP_FIELDS = ("jobid", "job_description")
_WAITS = "a submission must not wait for the job"
# bsub options Flotilla sets itself or that would change what a submission is.
BSUB_RESERVED = {
    "J": "Flotilla names the job after the member",
    "Jd": "Flotilla's job description carries the member's key",
    "o": "Flotilla chooses the job's output file",
    "oo": "Flotilla chooses the job's output file",
    "e": "Flotilla chooses the job's error file",
    "eo": "Flotilla chooses the job's error file",
    "K": _WAITS,
    **{name: _WAITS for name in ("I", "Ip", "IS", "ISp", "ISs", "Is", "IX")},
    "pack": "Flotilla submits each member itself",
}
# The batch settings' own fields, as bsub options: before the batch args and after them.
HEAD_OPTIONS = {"time": "W", "account": "P"}
TAIL_OPTIONS = {"queue": "q", "nodes": "nnodes"}
SUBMITTED = re.compile(r"Job <(\d+)> is submitted to")
NOT_FOUND = re.compile(r"Job <(\S+?)> is not found")
NO_JOBS = re.compile(r"No (?:unfinished |matching )?job found")
# bkill's word for a job that has ended or that LSF no longer knows.
GONE = re.compile(r"Job <(\S+?)>: (?:Job has already finished|No matching job found)")


# --- builders ---------------------------------------------------------------------------


def lsf_job_name(name: str) -> str:
    """``[ ]`` in a job name would make a job array."""
    return re.sub(r"[\[\]]", "_", name)[:MAX_JOB_NAME]


def bsub_option(key: Any) -> str:
    name = option_name(key)
    if name in BSUB_RESERVED:
        raise BatchOptionError(f"-{name} cannot be given ({key!r}): {BSUB_RESERVED[name]}")
    return name


def lsf_walltime(text: str) -> str:
    """``-W [hours:]minutes``, rounded up to a whole minute."""
    minutes = max(1, math.ceil(walltime_seconds(text) / 60))
    return f"{minutes // 60}:{minutes % 60:02d}" if minutes >= 60 else str(minutes)


def batch_directives(resources: Mapping[str, Any]) -> list[str]:
    """``#BSUB`` lines for a job's batch settings, in SmartSim 0.8's order: ``-W``, ``-P``,
    the batch args, ``-q``, ``-nnodes``."""
    check_resources(resources)
    options: list[tuple[str, str | None]] = []
    for key, value in (resources.get("batch_args") or {}).items():
        name = bsub_option(key)
        text = option_value(f"-{name}", value)
        if text is not False:
            options.append((name, text))
    given = {name for name, _ in options}

    def fields(flags: Mapping[str, str]) -> list[tuple[str, str | None]]:
        found = []
        for field, flag in flags.items():
            value = resources.get(field)
            if value in (None, ""):
                continue
            if flag in given:
                raise BatchOptionError(f"-{flag} is given twice: as {field} and in batch_args")
            found.append((flag, lsf_walltime(value) if field == "time" else option_value(f"-{flag}", value)))
        return found

    return [f"#BSUB -{flag}" if value is None else f"#BSUB -{flag} {quote_directive(value)}"
            for flag, value in fields(HEAD_OPTIONS) + options + fields(TAIL_OPTIONS)]


def lsf_filename(flag: str, path: str) -> str:
    if not path or any(char in path for char in "\n\r\x00"):
        raise BatchOptionError(f"{flag} must be a single line of text, not {path!r}")
    if "%J" in path or "%I" in path:
        raise BatchOptionError(f"{flag}: LSF would replace %J and %I in {path!r}; rename the file or its folder")
    return path


def bsub_argv(*, job_name: str, output: str, error: str, key: str) -> list[str]:
    """bsub with the options Flotilla sets; the script comes on stdin. On the command line
    they win over any #BSUB line; ``-oo``/``-eo`` overwrite what a previous run wrote."""
    description = f"{DESCRIPTION_PREFIX}{key}"
    if any(char in description for char in "\n\r\x00"):
        raise BatchOptionError(f"the member's key cannot hold line breaks: {key!r}")
    return ["bsub", "-J", lsf_job_name(job_name), "-Jd", description,
            "-oo", lsf_filename("-oo", output), "-eo", lsf_filename("-eo", error)]


def bjobs_argv(job_ids: list[str], fields: tuple[str, ...] = BJOBS_FIELDS) -> list[str]:
    return ["bjobs", "-a", "-json", "-o", " ".join(fields), *job_ids]


# --- parsers ----------------------------------------------------------------------------


def parse_bsub_id(stdout: str) -> str:
    """``Job <123> is submitted to queue <normal>.`` (or ``to default queue``)."""
    match = SUBMITTED.search(stdout)
    if not match:
        raise LauncherError(f"bsub printed no job id: {stdout.strip()!r}")
    return match.group(1)


@dataclass
class BjobsJob:
    job_id: str
    state: str  # STAT: PEND PSUSP RUN USUSP SSUSP DONE EXIT ...
    exit_code: int | None = None
    exit_reason: str = ""
    pend_reason: str = ""
    start: str = ""
    end: str = ""
    description: str = ""


def parse_bjobs(text: str) -> tuple[dict[str, BjobsJob], list[str]]:
    """``bjobs -json``: its jobs by id, and the ids it does not know (records with ERROR)."""
    if not text.strip():
        return {}, []
    try:
        data = json.loads(text, strict=False)
    except ValueError:
        raise LauncherError(f"bjobs printed something that is not JSON: {text[:200]!r}") from None
    records = data.get("RECORDS") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise LauncherError(f"bjobs printed no RECORDS: {text[:200]!r}")
    jobs, missing = {}, []
    for record in records:
        if not isinstance(record, dict):
            continue
        job_id = str(record.get("JOBID", ""))
        if "ERROR" in record:
            match = NOT_FOUND.search(str(record["ERROR"]))
            if not (match or job_id):
                raise LauncherError(f"bjobs: {record['ERROR']}")
            missing.append(job_id or match.group(1))
            continue
        code = str(record.get("EXIT_CODE", "")).strip()
        jobs[job_id] = BjobsJob(
            job_id=job_id,
            state=str(record.get("STAT", "")),
            exit_code=int(code) if code.lstrip("-").isdigit() else None,
            exit_reason=str(record.get("EXIT_REASON", "")).strip(),
            pend_reason=str(record.get("PEND_REASON", "")).strip(),
            start=str(record.get("START_TIME", "")),
            end=str(record.get("FINISH_TIME", "")),
            description=str(record.get("JOB_DESCRIPTION", "")),
        )
    return jobs, missing


def parse_bjobs_errors(stderr: str) -> tuple[list[str], list[str]]:
    """bjobs's stderr: the ids it does not know, and any other line ("No job found" is none)."""
    missing, other = error_lines(stderr, NOT_FOUND)
    return missing, [line for line in other if not NO_JOBS.fullmatch(line)]


def parse_gone(stderr: str) -> tuple[list[str], list[str]]:
    """bkill's stderr: the ids that have ended or that LSF does not know, and any other line."""
    return error_lines(stderr, GONE)


def _timestamp(text: str, now: float | None = None) -> float | None:
    """bjobs's local time, ``Oct 22 13:51`` (seconds and the year if the site shows them,
    a trailing one-letter mark dropped); without a year: this year's, or last year's
    for a date that would be ahead."""
    text = re.sub(r"\s+[A-Z]$", "", text.strip())
    now = time.time() if now is None else now
    year = time.localtime(now).tm_year
    for form in ("%b %d %H:%M:%S %Y", "%b %d %H:%M %Y"):
        try:
            return time.mktime(time.strptime(text, form))
        except (ValueError, OverflowError):
            continue
    for form in ("%Y %b %d %H:%M:%S", "%Y %b %d %H:%M"):
        try:
            stamp = time.mktime(time.strptime(f"{year} {text}", form))
        except (ValueError, OverflowError):
            continue
        if stamp > now + 86400:
            stamp = time.mktime(time.strptime(f"{year - 1} {text}", form))
        return stamp
    return None


# --- the state map ----------------------------------------------------------------------

QUEUED_STATES = {"PEND": None, "PSUSP": "held (suspended while pending)", "WAIT": "waiting in a chunk job",
                 "PROV": "waiting for its host to be provisioned"}
RUNNING_STATES = {"RUN": None, "USUSP": "suspended by its owner or an administrator", "SSUSP": "suspended by LSF",
                  "UNKWN": "LSF lost contact with its host", "ZOMBI": "killed while its host was unreachable"}
# EXIT_REASON, by code or by words of its message: what the user should know about the end.
EXIT_REASONS = (
    (("TERM_RUNLIMIT", "run time limit"), "time limit"),
    (("TERM_CPULIMIT", "cpu usage limit"), "CPU time limit"),
    (("TERM_MEMLIMIT", "memory usage limit"), "out of memory"),
    (("TERM_SWAP", "swap usage limit"), "out of memory (swap)"),
    (("TERM_PREEMPT", "after preemption"), "preempted by the scheduler"),
    (("TERM_DEADLINE", "deadline"), "deadline reached before it ended"),
)
KILLED = ("TERM_OWNER", "TERM_ADMIN", "TERM_FORCE_OWNER", "TERM_FORCE_ADMIN", "killed by owner", "killed by root")


def _mentions(text: str, words: tuple[str, ...]) -> bool:
    text = text.lower()
    return any(word.lower() in text for word in words)


def job_status(job: BjobsJob | None, *, cancelled: bool = False) -> JobStatus | None:
    """A bjobs record as a JobStatus; None for a job LSF does not know (the caller decides:
    a status file, or Lost). ``cancelled``: Flotilla killed it."""
    if job is None:
        return None
    if job.state in QUEUED_STATES:
        note, reason = QUEUED_STATES[job.state], job.pend_reason.rstrip(";").strip() or None
        return JobStatus(JobState.QUEUED, job_id=job.job_id,
                         reason=f"{note}: {reason}" if note and reason else note or reason)
    if job.state in RUNNING_STATES:
        return JobStatus(JobState.RUNNING, job_id=job.job_id, started=_timestamp(job.start),
                         reason=RUNNING_STATES[job.state])
    ended = dict(job_id=job.job_id, started=_timestamp(job.start), ended=_timestamp(job.end))
    if job.state == "DONE":
        return JobStatus(JobState.COMPLETED, returncode=job.exit_code or 0, **ended)
    if job.state != "EXIT":
        return JobStatus(JobState.QUEUED, job_id=job.job_id, reason=f"LSF state {job.state}")
    code, signal = (None, None) if job.exit_code is None else exit_code_and_signal(job.exit_code, 0)
    killed = _mentions(job.exit_reason, KILLED)
    if killed or (cancelled and (job.exit_code is None or signal is not None)):
        return JobStatus(JobState.CANCELLED, returncode=code, signal=signal, **ended)
    error = next((text for words, text in EXIT_REASONS if _mentions(job.exit_reason, words)), None)
    if error is None and job.exit_code is None:
        error = f"LSF ended the job{': ' + job.exit_reason if job.exit_reason else ' before it ran'}"
    return JobStatus(JobState.FAILED, returncode=code, signal=signal, error=error, **ended)


# --- the launcher -----------------------------------------------------------------------


class LSFLauncher(BatchLauncher):
    """Members as LSF jobs, one each, on the cluster that ``env`` points at (LSF_ENVDIR);
    ``command_prefix`` and ``env`` as in slurm.SlurmLauncher."""

    name = "lsf"
    scheduler = "LSF"
    job_id_pattern = JOB_ID

    def job_command(self, job: JobSpec) -> tuple[list[str], str]:
        stdout, stderr = output_path(job, job.stdout, ".out"), output_path(job, job.stderr, ".err")
        script = member_script(
            scheduler=self.scheduler, job_id_variable="LSB_JOBID", signals="INT TERM", key=job.key, argv=job.argv,
            cwd=job.cwd, env=job.env, stdout=stdout, stderr=stderr, status_file=status_file(job),
            directives=batch_directives(job.resources),
        )
        return bsub_argv(job_name=job.name, output=f"{stdout}.lsf", error=f"{stderr}.lsf", key=job.key), script

    def parse_submit_output(self, stdout: str) -> str:
        return parse_bsub_id(stdout)

    def _bjobs(self, argv: list[str]) -> dict[str, BjobsJob]:
        result = self.run_command(argv)
        _, other = parse_bjobs_errors(result.stderr)
        if result.returncode and other:  # unknown ids are just missing (bjobs exits 255 for them)
            raise self.failure(result, "bjobs", other)
        return parse_bjobs(result.stdout)[0]

    def queue(self, job_ids: list[str]) -> dict[str, BjobsJob]:
        jobs: dict[str, BjobsJob] = {}
        for start in range(0, len(job_ids), IDS_PER_CALL):
            jobs.update(self._bjobs(bjobs_argv(job_ids[start : start + IDS_PER_CALL])))
        return jobs

    def job_status(self, row: BjobsJob | None, *, cancelled: bool) -> JobStatus | None:
        return job_status(row, cancelled=cancelled)

    def lookup(self, jobs: list[JobSpec]) -> dict[str, str]:
        """The user's own jobs (bjobs shows no one else's), by the key in their description."""
        wanted = {job.key for job in jobs}
        found = {}
        for job_id, row in self._bjobs(bjobs_argv([], LOOKUP_FIELDS)).items():
            key = row.description[len(DESCRIPTION_PREFIX):]
            if row.description.startswith(DESCRIPTION_PREFIX) and key in wanted:
                found[key] = job_id
        return found

    def kill(self, job_ids: list[str]) -> None:
        result = self.run_command(["bkill", *job_ids])
        _, other = parse_gone(result.stderr)
        if result.returncode and other:
            raise self.failure(result, "bkill", other)
