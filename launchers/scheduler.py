"""What the PBS and LSF launchers share. Plain Python: no Django.

Both follow the Slurm launcher (slurm.py): one batch job per member; a job script that
records the member's start and exit status in a status file next to its output (the
same file and format, read with ``slurm.read_status_file``); a journal in the run's work
folder (``<name>.journal``, same entries as ``slurm.journal``) that makes a retried
submit idempotent. What differs per scheduler (argv and #PBS / #BSUB lines, the status
command and its parser, the state map, the cancel command) is in pbs.py and lsf.py;
the journal and the flow of submit / status / cancel are here, in ``BatchLauncher``.

Unlike Slurm's, this job script writes the member's stdout and stderr itself: PBS copies
a job's output files into place only when the job ends (no live tail), and LSF appends
its job report to them. The scheduler's own output files are the member's with the
scheduler's name added (``sweep_0.out.pbs``): they hold only what the wrapper prints.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import slurm
from .base import JobSpec, JobState, JobStatus, Launcher, LauncherError, collect_results, run_hook
from .local import member_base_env
from .slurm import COMMAND_TIMEOUT, IDS_PER_CALL, Journalled, read_status_file, status_file

RESOURCE_KEYS = ("nodes", "time", "account", "queue", "batch_args")

_OPTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIRECTIVE_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_WALLTIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


class BatchOptionError(LauncherError):
    """An option cannot be given to the scheduler as it is; the message says why."""


# --- builders ---------------------------------------------------------------------------


def option_name(key: Any) -> str:
    """A batch arg's name without leading dashes (``--mem`` and ``mem`` are one option)."""
    if not isinstance(key, str):
        raise BatchOptionError(f"option names must be text, not {key!r}")
    name = key.lstrip("-")
    if not _OPTION.fullmatch(name):
        raise BatchOptionError(f"{key!r} is not an option name (letters, digits, _ . -)")
    return name


def option_value(flag: str, value: Any) -> str | None | bool:
    """The text of an option's value; None for a bare flag; False to leave it out (0 is a value)."""
    if value is None or value is True:
        return None
    if value is False:
        return False
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise BatchOptionError(f"{flag} must have a text or number value, or none for a flag")
    if value == "":
        raise BatchOptionError(f"{flag} has an empty value: give a value, or none for a flag")
    if any(char in value for char in "\n\r\x00"):
        raise BatchOptionError(f"{flag}: a value cannot contain line breaks")
    return value


def check_resources(resources: Mapping[str, Any]) -> None:
    unknown = set(resources) - set(RESOURCE_KEYS)
    if unknown:
        raise BatchOptionError(f"unknown batch setting(s): {', '.join(sorted(unknown))}")


def quote_directive(value: str) -> str:
    """A value as qsub and bsub read it from a ``#PBS`` / ``#BSUB`` line: split on blanks,
    '...' and "..." as quotes, nothing expanded. Single quotes where they can be, double
    quotes for a value with a single quote (and nothing a shell would read in them), else
    single-quoted pieces around each quote (``'it'"'"'s'``)."""
    if _DIRECTIVE_SAFE.fullmatch(value):
        return value
    if "'" not in value:
        return f"'{value}'"
    if not any(char in value for char in '"\\$`'):
        return f'"{value}"'
    return "'" + value.replace("'", "'\"'\"'") + "'"


def walltime_seconds(text: str) -> int:
    """A walltime as the form and Slurm take it: minutes, minutes:seconds,
    hours:minutes:seconds, days-hours, days-hours:minutes, days-hours:minutes:seconds."""
    match = _WALLTIME.fullmatch(text.strip())
    if not match:
        raise BatchOptionError(f"{text!r} is not a walltime (e.g. 30, 1:30:00 or 2-00:00:00)")
    days, first, second, third = match.groups()
    if days is not None:
        return ((int(days) * 24 + int(first)) * 60 + int(second or 0)) * 60 + int(third or 0)
    if third is not None:
        return (int(first) * 60 + int(second)) * 60 + int(third)
    if second is not None:
        return int(first) * 60 + int(second)
    return int(first) * 60


def output_path(job: JobSpec, path: str, suffix: str) -> str:
    """Absolute: the scheduler, the job (which starts in the account's home) and the status
    reader must agree on it."""
    if not os.path.isabs(job.cwd):
        raise BatchOptionError(f"the member's folder must be an absolute path, not {job.cwd!r}")
    return str(Path(job.cwd, path or f"{job.name}{suffix}"))


MEMBER_WRAPPER = r"""# Flotilla: the member runs in its folder and writes its output to its own files as it
# goes; its start and exit status go to its status file (its result is known after
# @SCHEDULER@ forgets the job). POSIX sh: the job may run under any shell.
flotilla_status=@STATUS@
flotilla_record() {
  printf '{"key":%s,"job_id":"%s",%s}\n' @KEY@ "${@JOBID@-}" "$1"
}
flotilla_record "\"started\":$(date +%s.%N)" > "$flotilla_status"
flotilla_terminated=false
trap 'flotilla_terminated=true' @SIGNALS@
(
  cd -- @CWD@ || exit 1
@EXPORTS@  exec @ARGV@
) > @STDOUT@ @STDERR@
flotilla_rc=$?
flotilla_record "\"ended\":$(date +%s.%N),\"returncode\":$flotilla_rc,\"terminated\":$flotilla_terminated" \
  >> "$flotilla_status"
exit $flotilla_rc
"""


def member_script(*, scheduler: str, job_id_variable: str, signals: str, key: str, argv: Sequence[str], cwd: str,
                  env: Mapping[str, str], stdout: str, stderr: str, status_file: str,
                  directives: Sequence[str] = ()) -> str:
    """The job script of one member: records its start, runs it in its folder with its
    environment and its output in its files, records its exit status, and exits with it.

    The member runs in the foreground: the scheduler signals every process of the job
    (``signals``) to stop it; the trap keeps the wrapper alive until the member is gone,
    so its status is still written."""
    if not argv:
        raise BatchOptionError("the member has no command")
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise BatchOptionError(f"{name!r} is not a valid environment variable name")
    values = {
        "SCHEDULER": scheduler,
        "JOBID": job_id_variable,
        "SIGNALS": signals,
        "STATUS": shlex.quote(status_file),
        "KEY": shlex.quote(json.dumps(str(key))),
        "CWD": shlex.quote(cwd),
        "EXPORTS": "".join(f"  export {name}={shlex.quote(str(value))}\n" for name, value in env.items()),
        "ARGV": shlex.join(argv),
        "STDOUT": shlex.quote(stdout),
        "STDERR": "2>&1" if stderr == stdout else f"2> {shlex.quote(stderr)}",
    }
    # one pass: the values are left as they are
    body = re.sub(r"@([A-Z]+)@", lambda match: values[match.group(1)], MEMBER_WRAPPER)
    return "#!/bin/sh\n" + "".join(f"{line}\n" for line in directives) + body


def status_from_file(record: Mapping[str, Any], *, job_id: str | None, cancelled: bool,
                     scheduler: str) -> JobStatus | None:
    """The end a status file records (slurm.status_from_file, which reads the same file)."""
    status = slurm.status_from_file(record, job_id=job_id, cancelled=cancelled)
    if status is not None and status.error:  # its words name the scheduler that stopped the member
        status.error = status.error.replace("Slurm", scheduler)
    return status


def error_lines(stderr: str, tolerated: re.Pattern) -> tuple[list[str], list[str]]:
    """A command's stderr split into the job ids of the lines ``tolerated`` matches (its
    first group that is set) and the other lines."""
    ids, other = [], []
    for line in stderr.splitlines():
        line = line.strip()
        if not line:
            continue
        match = tolerated.fullmatch(line)
        if match:
            ids.append(next(group for group in match.groups() if group))
        else:
            other.append(line)
    return ids, other


# --- the launcher -----------------------------------------------------------------------


class BatchLauncher(Journalled, Launcher):
    """Members as batch jobs, one each, on the cluster that ``env`` points at.
    ``command_prefix`` (e.g. ``["sudo", "-n", "-u", account, "--"]``) runs every command
    as another account; the environment then goes through ``env`` after the prefix,
    since sudo resets it. Subclasses give the scheduler's commands."""

    scheduler: str  # the scheduler's name as users read it: "PBS"
    job_id_pattern: re.Pattern  # what one of its job ids looks like

    def __init__(
        self,
        *,
        work_dir: str | os.PathLike,
        env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        command_prefix: Sequence[str] = (),
        timeout: float = COMMAND_TIMEOUT,
    ):
        self.work_dir = Path(work_dir)
        # the scheduler gives jobs its own environment: the server's without its secrets, by default
        self.command_env = {**(member_base_env() if base_env is None else base_env), **(env or {})}
        self.command_prefix = list(command_prefix)
        self.timeout = timeout
        self._open_journal(self.work_dir / f"{self.name}.journal", self.work_dir / f"{self.name}.lock")

    # --- what each scheduler gives ------------------------------------------------

    @abstractmethod
    def job_command(self, job: JobSpec) -> tuple[list[str], str]:
        """The submit argv and the job script (on stdin) for one member."""

    @abstractmethod
    def parse_submit_output(self, stdout: str) -> str:
        """The job id the submit command printed."""

    @abstractmethod
    def lookup(self, jobs: list[JobSpec]) -> dict[str, str]:
        """Job ids of members the scheduler has, by key (a submitter died before recording them)."""

    @abstractmethod
    def queue(self, job_ids: list[str]) -> dict[str, Any]:
        """The scheduler's rows for the ids, in one command (one per IDS_PER_CALL ids);
        ids it does not know are missing."""

    @abstractmethod
    def job_status(self, row: Any, *, cancelled: bool) -> JobStatus | None:
        """A row of ``queue`` as a JobStatus; None for a job the scheduler does not know."""

    @abstractmethod
    def kill(self, job_ids: list[str]) -> None:
        """Cancel the jobs; one the scheduler no longer knows, or that has ended, is no error."""

    # --- commands --------------------------------------------------------------

    def run_command(self, argv: list[str], *, input: str | None = None) -> subprocess.CompletedProcess:
        program = argv[0]
        if self.command_prefix:
            argv = [*self.command_prefix, "env", *(f"{k}={v}" for k, v in self.command_env.items()), *argv]
        try:
            return subprocess.run(argv, input=input, env=self.command_env, capture_output=True, text=True,
                                  timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise LauncherError(f"{program} did not answer within {self.timeout:g} s") from None
        except OSError as error:
            raise LauncherError(f"cannot run {argv[0]}: {error.strerror}") from None

    def check(self, result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
        if result.returncode:
            raise self.failure(result, what)
        return result

    @staticmethod
    def failure(result: subprocess.CompletedProcess, what: str, lines: Sequence[str] = ()) -> LauncherError:
        output = "\n".join(lines) or result.stderr.strip() or result.stdout.strip()
        return LauncherError(f"{what} failed (exit {result.returncode}): {output}")

    # --- submitting --------------------------------------------------------------

    def submit(self, jobs: list[JobSpec], *, group: str, concurrency: int | None = None) -> None:
        """One submission per member not submitted yet; ``concurrency`` is left to the scheduler."""
        if not jobs:
            return
        commands = {job.key: self.job_command(job) for job in jobs}  # a bad option refuses all, before any submit
        with self._journal() as journal:
            for job in self._unsubmitted(jobs, journal):
                if job.prepare:
                    try:
                        run_hook(job.prepare)
                    except Exception as error:  # the member's failure, told to the user
                        self._append(journal, [{"key": job.key, "failed": f"could not prepare the job: {error}",
                                                "ended": time.time()}])
                        continue
                argv, script = commands[job.key]
                self._append(journal, [{"key": job.key, "submitting": time.time()}])
                result = self.check(self.run_command(argv, input=script), f"{argv[0]} of {job.name}")
                job_id = self.parse_submit_output(result.stdout)
                self._append(journal, [self._submitted(job, job_id)])

    @staticmethod
    def _submitted(job: JobSpec, job_id: str) -> dict[str, Any]:
        return {"key": job.key, "job_id": job_id, "cwd": job.cwd, "status_file": status_file(job),
                "results_file": job.results_file}

    def _unsubmitted(self, jobs: list[JobSpec], journal) -> list[JobSpec]:
        """The jobs that have no scheduler job yet; an intent without a job id is looked up
        first (and the job id found is recorded)."""
        records = self.records()
        todo = [job for job in jobs if not {"job_id", "cancelled", "failed"} & set(records.get(job.key, {}))]
        in_doubt = [job for job in todo if "submitting" in records.get(job.key, {})]
        if not in_doubt:
            return todo
        found = self.find_submitted(in_doubt)
        self._append(journal, [self._submitted(job, found[job.key]) for job in in_doubt if job.key in found])
        return [job for job in todo if job.key not in found]

    def find_submitted(self, jobs: list[JobSpec]) -> dict[str, str]:
        """Job ids of members submitted earlier, by key: from the scheduler, else from the
        status file a started job wrote."""
        found = self.lookup(jobs)
        result = {}
        for job in jobs:
            if job.key in found:
                result[job.key] = found[job.key]
            else:
                recorded = read_status_file(status_file(job), job.key).get("job_id")
                if isinstance(recorded, str) and self.job_id_pattern.fullmatch(recorded):
                    result[job.key] = recorded
        return result

    def unstarted(self, jobs: list[JobSpec]) -> list[JobSpec]:
        """The jobs that have no scheduler job (safe to generate and submit)."""
        with self._journal() as journal:
            return self._unsubmitted(jobs, journal)

    # --- observing ---------------------------------------------------------------

    def status(self, keys: list[str]) -> dict[str, JobStatus]:
        """One status command for all the job ids (one per IDS_PER_CALL ids); for a job the
        scheduler no longer knows, the member's status file; else Lost."""
        records = self.records()
        result: dict[str, JobStatus] = {}
        by_job: dict[str, str] = {}
        for key in keys:
            record = records.get(key, {})
            if "job_id" in record:
                by_job[record["job_id"]] = key
            elif "failed" in record:
                result[key] = JobStatus(JobState.FAILED, error=record["failed"], ended=record.get("ended"))
            elif "cancelled" in record:
                result[key] = JobStatus(JobState.CANCELLED, ended=record["cancelled"])
            else:
                result[key] = JobStatus(JobState.QUEUED)  # not submitted yet
        rows = self.queue(list(by_job))
        for job_id, key in by_job.items():
            record = records[key]
            status = self.job_status(rows.get(job_id), cancelled="cancelled" in record)
            if status is None or status.state.terminal:
                status = self._ended(key, job_id, record, status)
            if status.state == JobState.COMPLETED and record.get("results_file"):
                status.results = collect_results(record["cwd"], record["results_file"])
            result[key] = status
        return result

    def _ended(self, key: str, job_id: str, record: dict[str, Any], status: JobStatus | None) -> JobStatus:
        """A finished job: the scheduler's word completed with the member's status file;
        one the scheduler forgot: the status file, else (cancelled before it started)
        Cancelled, else Lost."""
        recorded = read_status_file(record.get("status_file", ""), key)
        if status is not None:
            status.started = recorded.get("started", status.started)
            status.ended = recorded.get("ended", status.ended)
            return status
        cancelled = "cancelled" in record
        from_file = status_from_file(recorded, job_id=job_id, cancelled=cancelled, scheduler=self.scheduler)
        if from_file is not None:
            return from_file
        if cancelled and "started" not in recorded:
            return JobStatus(JobState.CANCELLED, job_id=job_id, ended=record["cancelled"])
        return JobStatus(JobState.LOST, job_id=job_id, started=recorded.get("started"), ended=time.time(),
                         error=f"{self.scheduler} no longer knows job {job_id} and it left no exit status")

    # --- cancelling -----------------------------------------------------------------

    def cancel(self, jobs: list[JobSpec], *, group: str) -> None:
        """Recorded first (a later submit skips them), then one cancel command for their jobs."""
        if not jobs:
            return
        with self._journal() as journal:
            self._unsubmitted(jobs, journal)  # an intent in doubt: find its job, to cancel it too
            now = time.time()
            self._append(journal, [{"key": job.key, "cancelled": now} for job in jobs])
            records = self.records()
            job_ids = [records[job.key]["job_id"] for job in jobs if "job_id" in records.get(job.key, {})]
        for start in range(0, len(job_ids), IDS_PER_CALL):
            self.kill(job_ids[start : start + IDS_PER_CALL])

    def runner_alive(self) -> bool:
        return True  # the scheduler is the runner
