"""PBS Professional launcher: one batch job per member. Plain Python: no Django.

Pure builders (qsub argv, job script text with #PBS lines), pure parsers of PBS's output
(qsub's job id, ``qstat -x -f -F json``, qselect, the error lines of qstat and qdel), a
state map to JobState, and a thin ``PBSLauncher`` (the journal, status files and the
submit / status / cancel flow are scheduler.BatchLauncher's, shared with LSF).

Formatting follows SmartSim's ``QsubBatchSettings`` (``#PBS -l nodes=2``, ``-l walltime=``,
``-q``, ``-A``; a batch arg is ``#PBS -x value``) without its faults: values are quoted,
0 is a value, a batch arg longer than one letter is a resource (``mem: 4gb`` is
``#PBS -l mem=4gb``: qsub has no long options), a setting given twice is refused, and
the options Flotilla sets (on qsub's command line, which wins over #PBS lines) cannot
be given. The walltime is read as Slurm and the form read it (``30`` is 30 minutes).

Job names: qsub -N takes letters, digits, ``- _ +`` (the first a letter), so other
characters become ``_``. The member's key travels in the job's variable list
(``-v FLOTILLA_KEY=<key, %-escaped>``), where qstat shows it: a submitter that died after
qsub and before recording the job id finds the job with ``qselect -x -N <name>`` and
qstat. Facts (OpenPBS's sources; tools that parse PBS's output, psij and AiiDA): job
names as above; ``qsub`` prints ``<sequence>.<server>``; ``qstat`` prints ``qstat: Unknown
Job Id <id>`` on stderr for each id it does not know (exit 153) and still prints the
others; a job PBS killed over a limit has a negative Exit_status (-29: walltime), one
killed by signal n 256 + n. Assumed: qsub splits a #PBS line as a shell splits words
('...' and "..." quote, nothing is expanded); unknown ids alone give an empty stdout or
a JSON object without "Jobs"; qdel of a finished job prints ``qdel: Job has finished
<id>``; a job deleted before it ran ends in F without Exit_status.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import JobSpec, JobState, JobStatus, LauncherError
from .scheduler import (
    BatchLauncher, BatchOptionError, check_resources, error_lines, member_script, option_name,
    option_value, output_path, quote_directive, walltime_seconds,
)
from .slurm import IDS_PER_CALL, exit_code_and_signal, status_file

KEY_VARIABLE = "FLOTILLA_KEY"
MAX_JOB_NAME = 236  # PBS_MAXJOBNAME
JOB_ID = re.compile(r"\d+(\[\d*\])?(\.[A-Za-z0-9_.-]+)?")
# One-letter qsub options Flotilla sets itself or that would change what a submission is.
QSUB_RESERVED = {
    "N": "Flotilla names the job after the member",
    "o": "Flotilla chooses the job's output file",
    "e": "Flotilla chooses the job's error file",
    "j": "the member's output and errors go to their own files",
    "k": "the member's output and errors go to their own files",
    "J": "Flotilla makes job arrays itself",
    "C": "Flotilla writes the job script's #PBS lines",
    "S": "the job script is a POSIX shell script",
    "v": "the member's environment comes from its run settings",
    "V": "the member's environment comes from its run settings",
    "I": "a submission must not wait for the job",
    "z": "Flotilla reads the job id qsub prints",
}
# The batch settings' own fields: (one-letter option or resource, what it is called in the form).
FIELD_OPTIONS = {"queue": "q", "account": "A"}
# qstat's and qdel's word for a job that is gone: the id is the group that is set.
GONE = re.compile(r"(?:qstat|qdel): (?:Unknown Job Id (\S+)|(\S+) Job has finished.*|Job has finished (\S+))")


# --- builders ---------------------------------------------------------------------------


def pbs_job_name(name: str) -> str:
    """A name qsub -N takes: up to 236 letters, digits, - _ +, the first a letter."""
    text = re.sub(r"[^A-Za-z0-9_+-]", "_", name)
    if not text[:1].isalpha():
        text = "job_" + text
    return text[:MAX_JOB_NAME]


def qsub_option(key: Any) -> str:
    name = option_name(key)
    if name in QSUB_RESERVED:
        raise BatchOptionError(f"-{name} cannot be given ({key!r}): {QSUB_RESERVED[name]}")
    return name


def _resource_names(text: str) -> set[str]:
    """The resources an ``-l`` value sets: ``select=2:ncpus=4,walltime=1:00:00`` -> {select, walltime}."""
    return {part.split("=", 1)[0].strip() for part in text.split(",")}


def batch_directives(resources: Mapping[str, Any]) -> list[str]:
    """``#PBS`` lines for a job's batch settings, in SmartSim 0.8's order: ``-l nodes``,
    ``-l walltime``, the batch args, ``-q``, ``-A``. A one-letter batch arg is an option
    (``#PBS -W depend=afterok:12``), a longer one a resource (``#PBS -l mem=4gb``)."""
    check_resources(resources)
    options: list[tuple[str, str | None]] = []
    set_resources: set[str] = set()
    for key, value in (resources.get("batch_args") or {}).items():
        name = qsub_option(key)
        text = option_value(f"-{name}" if len(name) == 1 else f"-l {name}", value)
        if text is False:
            continue
        if len(name) > 1:
            if text is None:
                raise BatchOptionError(f"the resource {name} needs a value (-l {name}=...)")
            options.append(("l", f"{name}={text}"))
            set_resources.add(name)
            continue
        if name == "W" and text and text.lstrip().startswith("block"):
            raise BatchOptionError(f"-W block cannot be given ({key!r}): a submission must not wait for the job")
        if name == "l" and text:
            set_resources |= _resource_names(text)
        options.append((name, text))
    head: list[tuple[str, str | None]] = []
    if resources.get("nodes") not in (None, ""):
        if {"nodes", "select"} & set_resources:
            raise BatchOptionError("the number of nodes is given twice: as nodes and as a -l resource in batch_args")
        head.append(("l", f"nodes={resources['nodes']}"))
    if resources.get("time"):
        if "walltime" in set_resources:
            raise BatchOptionError("the walltime is given twice: as time and as -l walltime in batch_args")
        head.append(("l", f"walltime={pbs_walltime(resources['time'])}"))
    tail: list[tuple[str, str | None]] = []
    for field, flag in FIELD_OPTIONS.items():
        value = resources.get(field)
        if value in (None, ""):
            continue
        if any(name == flag for name, _ in options):
            raise BatchOptionError(f"-{flag} is given twice: as {field} and in batch_args")
        tail.append((flag, option_value(f"-{flag}", value)))
    return [f"#PBS -{flag}" if value is None else f"#PBS -{flag} {quote_directive(value)}"
            for flag, value in head + options + tail]


def pbs_walltime(text: str) -> str:
    """``HH:MM:SS`` (hours may pass 24), from a walltime as the form takes it."""
    seconds = walltime_seconds(text)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _argv_value(flag: str, value: str) -> str:
    if not value or any(char in value for char in "\n\r\x00"):
        raise BatchOptionError(f"{flag} must be a single line of text, not {value!r}")
    return value


def qsub_argv(*, job_name: str, output: str, error: str, key: str) -> list[str]:
    """qsub with the options Flotilla sets; the script comes on stdin. On the command line
    they win over any #PBS line; ``-S /bin/sh`` whatever the user's login shell."""
    return [
        "qsub",
        "-N", pbs_job_name(job_name),
        "-o", _argv_value("-o", output),
        "-e", _argv_value("-e", error),
        "-S", "/bin/sh",
        "-v", f"{KEY_VARIABLE}={urllib.parse.quote(key, safe='')}",  # nothing qsub's -v list would split or unquote
    ]


# --- parsers ----------------------------------------------------------------------------


def parse_qsub_id(stdout: str) -> str:
    """qsub prints ``<sequence>.<server>`` (the last line, after any warning)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if lines and JOB_ID.fullmatch(lines[-1]):
        return lines[-1]
    raise LauncherError(f"qsub printed no job id: {stdout.strip()!r}")


def parse_qselect(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if JOB_ID.fullmatch(line.strip())]


def parse_gone(stderr: str) -> tuple[list[str], list[str]]:
    """qstat's / qdel's stderr: the ids it does not know or that have finished, and any other line."""
    return error_lines(stderr, GONE)


@dataclass
class QstatJob:
    job_id: str  # as qstat prints it: 1234.server
    state: str  # job_state: Q H W T M R S U B E F X
    exit_status: int | None = None
    comment: str = ""  # the scheduler's word: why a job waits, how it ended
    start: str = ""  # stime: "Mon Dec  1 22:44:25 2026"
    end: str = ""  # obittime
    key: str | None = None  # the member's key, from the job's variable list


def parse_qstat(text: str) -> dict[str, QstatJob]:
    """``qstat -x -f -F json``'s jobs by id. Control characters in values are accepted:
    some PBS versions do not escape them."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text, strict=False)
    except ValueError:
        raise LauncherError(f"qstat printed something that is not JSON: {text[:200]!r}") from None
    jobs = data.get("Jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, dict):
        return {}
    found = {}
    for job_id, fields in jobs.items():
        if not isinstance(fields, dict) or "job_state" not in fields:
            raise LauncherError(f"unexpected qstat record for {job_id}: {str(fields)[:200]}")
        variables = fields.get("Variable_List")
        key = variables.get(KEY_VARIABLE) if isinstance(variables, dict) else None
        found[job_id] = QstatJob(
            job_id=job_id,
            state=str(fields["job_state"]),
            exit_status=_int(fields.get("Exit_status")),
            comment=str(fields.get("comment", "")),
            start=str(fields.get("stime", "")),
            end=str(fields.get("obittime", "")),
            key=urllib.parse.unquote(str(key)) if key is not None else None,
        )
    return found


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def match_ids(job_ids: list[str], jobs: Mapping[str, QstatJob]) -> dict[str, QstatJob]:
    """The jobs by the ids Flotilla holds: qstat may print a longer server name than qsub
    did (``12.pbs`` / ``12.pbs.example.org``), so a sequence number alone also matches."""
    by_sequence = {job_id.split(".", 1)[0]: job for job_id, job in jobs.items()}
    found = {}
    for job_id in job_ids:
        job = jobs.get(job_id) or by_sequence.get(job_id.split(".", 1)[0])
        if job is not None:
            found[job_id] = job
    return found


def _timestamp(text: str) -> float | None:
    """qstat's local time (``Mon Dec  1 22:44:25 2026``)."""
    try:
        return time.mktime(time.strptime(text.strip(), "%a %b %d %H:%M:%S %Y"))
    except (ValueError, OverflowError):
        return None


# --- the state map ----------------------------------------------------------------------

QUEUED_STATES = {"Q": None, "H": "held", "W": "waiting for its start time", "T": "moving to another server",
                 "M": "moved to another server"}
RUNNING_STATES = {"R": None, "B": None, "E": "exiting", "S": "suspended", "U": "suspended (its host is busy)"}
ENDED_STATES = {"F", "X"}
# Exit_status below 0: PBS could not run the job, or killed it over a limit (OpenPBS job.h).
EXEC_ERRORS = {
    -29: "time limit",
    -28: "CPU time limit",
    -27: "out of memory",
    -26: "out of virtual memory",
    -25: "used more CPUs than it asked for",
    -24: "used more CPUs than it asked for",
    -10: "its account's user or group is not valid on the execution host",
}
STOPPED = "stopped by PBS (a time limit, preemption or an operator)"


def job_status(job: QstatJob | None, *, cancelled: bool = False) -> JobStatus | None:
    """A qstat job as a JobStatus; None for a job PBS does not know (the caller decides:
    a status file, or Lost). ``cancelled``: Flotilla deleted it (PBS does not say)."""
    if job is None:
        return None
    comment = job.comment or None
    if job.state in QUEUED_STATES:
        note = QUEUED_STATES[job.state]
        return JobStatus(JobState.QUEUED, job_id=job.job_id,
                         reason=f"{note}: {comment}" if note and comment else note or comment)
    if job.state in RUNNING_STATES:
        return JobStatus(JobState.RUNNING, job_id=job.job_id, started=_timestamp(job.start),
                         reason=RUNNING_STATES[job.state])
    if job.state not in ENDED_STATES:
        return JobStatus(JobState.QUEUED, job_id=job.job_id, reason=f"PBS state {job.state}")
    ended = dict(job_id=job.job_id, started=_timestamp(job.start), ended=_timestamp(job.end))
    status = job.exit_status
    if status is None:
        if cancelled:
            return JobStatus(JobState.CANCELLED, **ended)
        return JobStatus(JobState.FAILED, error=f"PBS ended the job before it ran{': ' + comment if comment else ''}",
                         **ended)
    if status < 0:
        error = EXEC_ERRORS.get(status, f"PBS could not run the job (Exit_status {status})")
        return JobStatus(JobState.FAILED, error=error, **ended)
    if status == 0:
        return JobStatus(JobState.COMPLETED, returncode=0, **ended)
    code, signal = (None, status - 256) if status >= 256 else exit_code_and_signal(status, 0)
    if signal is not None and cancelled:
        return JobStatus(JobState.CANCELLED, signal=signal, **ended)
    return JobStatus(JobState.FAILED, returncode=code, signal=signal, error=STOPPED if status >= 256 else None,
                     **ended)


# --- the launcher -----------------------------------------------------------------------


class PBSLauncher(BatchLauncher):
    """Members as PBS jobs, one each, on the server that ``env`` points at (PBS_SERVER,
    PBS_CONF_FILE); ``command_prefix`` and ``env`` as in slurm.SlurmLauncher."""

    name = "pbs"
    scheduler = "PBS"
    job_id_pattern = JOB_ID

    def job_command(self, job: JobSpec) -> tuple[list[str], str]:
        stdout, stderr = output_path(job, job.stdout, ".out"), output_path(job, job.stderr, ".err")
        script = member_script(
            scheduler=self.scheduler, job_id_variable="PBS_JOBID", signals="TERM", key=job.key, argv=job.argv,
            cwd=job.cwd, env=job.env, stdout=stdout, stderr=stderr, status_file=status_file(job),
            directives=batch_directives(job.resources),
        )
        return qsub_argv(job_name=job.name, output=f"{stdout}.pbs", error=f"{stderr}.pbs", key=job.key), script

    def parse_submit_output(self, stdout: str) -> str:
        return parse_qsub_id(stdout)

    def queue(self, job_ids: list[str]) -> dict[str, QstatJob]:
        jobs: dict[str, QstatJob] = {}
        for start in range(0, len(job_ids), IDS_PER_CALL):
            result = self.run_command(["qstat", "-x", "-f", "-F", "json", *job_ids[start : start + IDS_PER_CALL]])
            gone, other = parse_gone(result.stderr)
            if result.returncode and (other or not gone):  # unknown ids are just missing; anything else fails
                raise self.failure(result, "qstat", other)
            jobs.update(parse_qstat(result.stdout))
        return match_ids(job_ids, jobs)

    def job_status(self, row: QstatJob | None, *, cancelled: bool) -> JobStatus | None:
        return job_status(row, cancelled=cancelled)

    def lookup(self, jobs: list[JobSpec]) -> dict[str, str]:
        """By name (qselect), then the key in each job's variable list (qstat)."""
        wanted = {job.key for job in jobs}
        found = {}
        for name in sorted({pbs_job_name(job.name) for job in jobs}):
            job_ids = parse_qselect(self.check(self.run_command(["qselect", "-x", "-N", name]), "qselect").stdout)
            for job_id, row in (self.queue(job_ids) if job_ids else {}).items():
                if row.key in wanted:
                    found[row.key] = job_id
        return found

    def kill(self, job_ids: list[str]) -> None:
        result = self.run_command(["qdel", *job_ids])
        _, other = parse_gone(result.stderr)
        if result.returncode and other:
            raise self.failure(result, "qdel", other)
