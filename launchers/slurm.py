"""Slurm launcher: members as batch jobs, array tasks, or steps of one batch job. Plain Python: no Django.

Pure builders (sbatch argv, batch script text, srun argv), pure parsers of
Slurm's output, a state map to JobState, and a thin ``SlurmLauncher`` that runs
the commands (argv lists, the script on stdin, never a shell string).

Formatting follows SmartSim's ``SrunSettings``/``SbatchSettings`` (``--opt=val``,
``--flag``, ``-x val``; a one-letter batch arg is ``#SBATCH -N 3``) without its
faults: values are quoted, 0 is a value, keys given with dashes are stripped, a
walltime of a day or more is written ``D-HH:MM:SS``, and the options Flotilla sets
(job name, output, error, working folder, comment) cannot be overridden. Facts
about Slurm's behaviour: ../shared/SLURM.md.

Three ways to submit, each member keeping its own status file (``<stdout>.status``,
JSON lines with the member's key, written next to its output, so its result is
known after Slurm forgets the job, ``MinJobAge``; ``sacct`` is not used: it needs
slurmdbd):

- ``submit``: one job per member; its script is a small wrapper that records the
  member's start and exit status.
- ``submit_array``: members that share their resources as one job array (split at
  ``MaxArraySize``); task N finds its member's folder, argv and environment at index N
  of a manifest (``array-<token>.json`` in the work folder, read with ``python3`` on
  the node); the run's concurrency is the ``%N`` throttle. A task is job ``123_4``.
- ``submit_batch``: a batch ensemble as one job (SmartSim's shape): every member is an
  ``srun --exact`` step in the background in its folder, then ``wait``. The step itself
  records its step id, pid, host and start; the script records its exit status.
  A member whose step has not started while the job runs is Queued ("waiting for a
  step of job 123"); one left without an exit status when the job ended is Failed
  with the job's reason (a time limit, a cancel by someone else), or Lost.

The run's work folder holds ``slurm.journal``, the source of truth for which
member went out as which job: a JSON line before each sbatch (intent), one with
the job id after it, one per cancel. A retried submit skips what the journal
knows, and for an intent without a job id (the submitter died in between) asks
squeue for a job whose comment carries the member's key (an array's or batch
job's: its token) before submitting again. The work folder must be readable by
the jobs (manifests, and the journal a batch step checks for its cancel).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import math
import os
import re
import secrets
import shlex
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import JobSpec, JobState, JobStatus, Launcher, LauncherError, collect_results, run_hook
from .local import member_base_env

JOURNAL_FILE = "slurm.journal"
LOCK_FILE = "slurm.lock"
STATUS_SUFFIX = ".status"
COMMENT_PREFIX = "flotilla:"
GROUP_COMMENT_PREFIX = "flotilla-job:"  # + the token of an array or a batch job (many members)
MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize: task ids 0 to 1000
NODE_PYTHON = "python3"  # what reads an array's manifest on the node
COMMAND_TIMEOUT = 30.0
IDS_PER_CALL = 5000  # job ids per squeue/scancel argv: one argument may not pass 128 KiB

# squeue -O fields with an explicit separator ("Field:|"), so that nothing is split on
# whitespace and nothing is truncated. The free-text field goes last.
SQUEUE_FIELDS = ("JobArrayID", "State", "exit_code", "StartTime", "EndTime", "Reason")
LOOKUP_FIELDS = ("JobArrayID", "Comment")

# Options Flotilla sets itself (on sbatch's command line, which wins over #SBATCH lines) and
# those that would change what a submission is: long name -> (one-letter name, why not).
SBATCH_RESERVED: Reserved = {
    "job-name": ("J", "Flotilla names the job after the member"),
    "output": ("o", "Flotilla chooses the member's output file"),
    "error": ("e", "Flotilla chooses the member's error file"),
    "chdir": ("D", "the job runs in the member's folder"),
    "workdir": (None, "the job runs in the member's folder"),
    "comment": (None, "Flotilla's comment carries the member's key"),
    "parsable": (None, "Flotilla reads sbatch's output itself"),
    "wrap": (None, "Flotilla writes the job script"),
    "array": ("a", "Flotilla makes job arrays itself"),
    "wait": ("W", "a submission must not wait for the job"),
    "test-only": (None, "nothing would be submitted"),
}
Reserved = Mapping[str, tuple[str | None, str]]
SRUN_RESERVED: Reserved = {
    "chdir": ("D", "the step runs in the member's folder"),
    "output": ("o", "Flotilla chooses the member's output file"),
    "error": ("e", "Flotilla chooses the member's error file"),
}
# One-letter aliases of the batch settings' own fields (a field given twice is refused).
BATCH_ALIASES = {"N": "nodes", "t": "time", "A": "account", "p": "partition"}
RESOURCE_KEYS = ("nodes", "time", "account", "queue", "batch_args")

_OPTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIRECTIVE_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_JOB_ID = re.compile(r"\d+(_\d+)?")
_STEP_ID = re.compile(r"\d+\.\d+")
_HMS = re.compile(r"(\d+):(\d{1,2}):(\d{1,2})")


class SlurmOptionError(LauncherError):
    """An option cannot be given to Slurm as it is; the message says why."""


# --- builders ---------------------------------------------------------------------------


def option_name(key: str, *, reserved: Reserved = SBATCH_RESERVED) -> str:
    """The option's name without leading dashes; refuses bad names and reserved options."""
    if not isinstance(key, str):
        raise SlurmOptionError(f"option names must be text, not {key!r}")
    name = key.lstrip("-")
    if not _OPTION.fullmatch(name):
        raise SlurmOptionError(f"{key!r} is not an option name (letters, digits, _ . -)")
    if len(name) == 1:
        taken = [long for long, (short, _) in reserved.items() if short == name]
    else:
        taken = [long for long in reserved if long.startswith(name)]  # --out is --output to getopt
    if taken:
        raise SlurmOptionError(f"--{taken[0]} cannot be given ({key!r}): {reserved[taken[0]][1]}")
    return name


def _option_value(name: str, value: Any) -> str | None | bool:
    """The text of an option's value; None for a bare flag; False to leave it out."""
    if value is None or value is True:
        return None
    if value is False:
        return False
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise SlurmOptionError(f"--{name} must have a text or number value, or none for a flag")
    if value == "":
        raise SlurmOptionError(f"--{name} has an empty value: give a value, or none for a flag")
    if any(char in value for char in "\n\r\x00"):
        raise SlurmOptionError(f"--{name}: a value cannot contain line breaks")
    return value


def _options(options: Mapping[str, Any], reserved: Reserved) -> list[tuple[str, str | None]]:
    """(name, value) pairs in the given order; value None: a flag. False drops the option."""
    pairs = []
    for key, value in options.items():
        name = option_name(key, reserved=reserved)
        text = _option_value(name, value)
        if text is not False:
            pairs.append((name, text))
    return pairs


def format_run_args(run_args: Mapping[str, Any], *, reserved: Reserved = SRUN_RESERVED) -> list[str]:
    """srun's argv items, SmartSim-style: ``--opt=val``, ``--flag``, ``-x val``, ``-x``."""
    argv: list[str] = []
    for name, value in _options(run_args, reserved):
        if len(name) == 1:
            argv.extend([f"-{name}"] if value is None else [f"-{name}", value])
        else:
            argv.append(f"--{name}" if value is None else f"--{name}={value}")
    return argv


def quote_directive(value: str) -> str:
    """A value as sbatch reads it from an ``#SBATCH`` line: it splits on blanks, takes
    "..." and '...' as quotes, a backslash as an escape (inside quotes too), an
    unquoted # as a comment, and expands nothing."""
    if _DIRECTIVE_SAFE.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def format_batch_directives(batch_args: Mapping[str, Any], *, reserved: Reserved = SBATCH_RESERVED) -> list[str]:
    """``#SBATCH`` lines: ``--opt=val``, ``--flag``, ``-N 3`` (one line each)."""
    lines = []
    for name, value in _options(batch_args, reserved):
        if len(name) == 1:
            text = f"-{name}" if value is None else f"-{name} {quote_directive(value)}"
        else:
            text = f"--{name}" if value is None else f"--{name}={quote_directive(value)}"
        lines.append(f"#SBATCH {text}")
    return lines


def batch_options(resources: Mapping[str, Any]) -> dict[str, Any]:
    """A job's batch settings (nodes, time, account, queue, batch_args) as sbatch options,
    in SmartSim 0.8's order: batch_args, then nodes, partition, time, account."""
    unknown = set(resources) - set(RESOURCE_KEYS)
    if unknown:
        raise SlurmOptionError(f"unknown batch setting(s): {', '.join(sorted(unknown))}")
    options: dict[str, Any] = {}
    for key, value in (resources.get("batch_args") or {}).items():
        name = option_name(key)
        options[BATCH_ALIASES.get(name, name)] = (key, value)  # keyed by long name to find one given twice
    for field, name in (("nodes", "nodes"), ("queue", "partition"), ("time", "time"), ("account", "account")):
        value = resources.get(field)
        if value in (None, ""):
            continue
        if name in options:
            raise SlurmOptionError(f"--{name} is given twice: as {field} and in batch_args ({options[name][0]!r})")
        options[name] = (name, value)
    if "time" in options:
        key, value = options["time"]
        options["time"] = (key, format_walltime(value))
    return dict(options.values())


def walltime(*, hours: float = 0, minutes: float = 0, seconds: float = 0) -> str:
    """SmartSim's ``set_time(hours, minutes, seconds)``, written as Slurm reads it:
    ``HH:MM:SS``, ``D-HH:MM:SS`` from a day on; a part of a second counts as a second
    (0 is no limit, to Slurm)."""
    total = math.ceil(hours * 3600 + minutes * 60 + seconds)
    if total < 0:
        raise SlurmOptionError("a time limit cannot be negative")
    days, rest = divmod(total, 86400)
    text = f"{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def format_walltime(value: Any) -> Any:
    """A time limit for --time: a timedelta, or text whose ``H:MM:SS`` form is written with
    days from 24 h on (``36:00:00`` -> ``1-12:00:00``); Slurm's other forms (``30``
    minutes, ``2-00:00:00``...) are left as they are."""
    if isinstance(value, datetime.timedelta):
        return walltime(seconds=value.total_seconds())
    if isinstance(value, str) and (match := _HMS.fullmatch(value.strip())):
        hours, minutes, seconds = (int(part) for part in match.groups())
        return walltime(hours=hours, minutes=minutes, seconds=seconds)
    return value


def slurm_filename(path: str) -> str:
    """A path for --output/--error: sbatch reads % as a pattern (%j...), %% as %
    (with a backslash in it, sbatch expands no pattern at all)."""
    return path if "\\" in path else path.replace("%", "%%")


def _argv_value(name: str, value: str) -> str:
    if not value or any(char in value for char in "\n\r\x00"):
        raise SlurmOptionError(f"--{name} must be a single line of text, not {value!r}")
    return value


def sbatch_argv(*, job_name: str, output: str, error: str | None, chdir: str, comment: str,
                extra: Sequence[str] = ()) -> list[str]:
    """``sbatch --parsable`` with the options Flotilla sets; the script comes on stdin.
    On the command line they win over any #SBATCH line of the script. ``error`` None:
    errors go to ``output``."""
    return [
        "sbatch",
        "--parsable",
        f"--job-name={_argv_value('job-name', job_name)}",
        f"--output={slurm_filename(_argv_value('output', output))}",
        *([] if error is None else [f"--error={slurm_filename(_argv_value('error', error))}"]),
        f"--chdir={_argv_value('chdir', chdir)}",
        f"--comment={_argv_value('comment', comment)}",
        *extra,
    ]


def array_option(size: int, throttle: int | None = None) -> str:
    """``--array=0-<size - 1>``, with ``%N`` when fewer than all may run at once."""
    if size < 1:
        raise SlurmOptionError("an array needs at least one task")
    if throttle is not None and throttle < 1:
        raise SlurmOptionError("an array's concurrency must be at least 1")
    limit = f"%{throttle}" if throttle is not None and throttle < size else ""
    return f"--array=0-{size - 1}{limit}"


def array_chunks(items: Sequence[Any], max_array_size: int = MAX_ARRAY_SIZE) -> list[Sequence[Any]]:
    """The items split into arrays of at most ``max_array_size`` tasks (ids 0 to size - 1)."""
    if max_array_size < 1:
        raise SlurmOptionError("MaxArraySize must be at least 1")
    return [items[start : start + max_array_size] for start in range(0, len(items), max_array_size)]


def srun_argv(command: Sequence[str], run_args: Mapping[str, Any] | None = None, *, exact: bool = True) -> list[str]:
    """A step of an allocation; ``--exact`` so that steps run side by side."""
    return ["srun", *(["--exact"] if exact else []), *format_run_args(run_args or {}), *command]


def batch_script(*, directives: Sequence[str], body: str) -> str:
    return "#!/bin/bash\n" + "".join(f"{line}\n" for line in directives) + body


# What a member's job script and an array task share: it records the member's start in its
# status file, runs it in its folder with its environment, records its exit status, and
# exits with it. The member runs in the foreground: on scancel or a time limit Slurm sends
# SIGTERM to every process of the job; the trap keeps the wrapper alive until the member
# is gone, so its status is still written.
WRAPPER = r"""flotilla_record() {
  printf '{"key":%s,"job_id":"%s",%s}\n' "$flotilla_key" "$flotilla_job" "$1"
}
flotilla_record "\"started\":$(date +%s.%N)" > "$flotilla_status"
flotilla_terminated=false
trap 'flotilla_terminated=true' TERM
(
  cd -- "$flotilla_cwd" || exit 1
  if [ ${#flotilla_env[@]} -gt 0 ]; then export -- "${flotilla_env[@]}"; fi
  exec -- "${flotilla_argv[@]}"
)
flotilla_rc=$?
flotilla_record "\"ended\":$(date +%s.%N),\"returncode\":$flotilla_rc,\"terminated\":$flotilla_terminated" \
  >> "$flotilla_status"
exit $flotilla_rc
"""

MEMBER_PREAMBLE = r"""# Flotilla: the member's start and exit status go to its status file (its result is
# known after Slurm forgets the job).
flotilla_key=@KEY@
flotilla_job=${SLURM_JOB_ID-}
flotilla_status=@STATUS@
flotilla_cwd=@CWD@
flotilla_env=(@ENV@)
flotilla_argv=(@ARGV@)
"""

# Run on the node by the array task: the manifest's task as NUL-separated fields (key as
# JSON, status file, folder, stdout, stderr, the number of env entries, NAME=value..., argv).
MANIFEST_READER = """import json, sys
with open(sys.argv[1], encoding="utf-8") as manifest:
    task = json.load(manifest)["tasks"][int(sys.argv[2])]
fields = [json.dumps(task["key"]), task["status_file"], task["cwd"], task["stdout"], task["stderr"],
          str(len(task["env"]))]
fields += ["%s=%s" % item for item in task["env"].items()] + task["argv"]
sys.stdout.buffer.write("".join(field + "\\0" for field in fields).encode("utf-8", "surrogateescape"))
"""

ARRAY_PREAMBLE = r"""# Flotilla: array task N runs the member at index N of the manifest; its output goes to
# the member's own files, its start and exit status to its status file.
flotilla_manifest=@MANIFEST@
flotilla_job=${SLURM_ARRAY_JOB_ID-}_${SLURM_ARRAY_TASK_ID-}
readarray -d '' flotilla_fields < <(@PYTHON@ -c @READER@ "$flotilla_manifest" "${SLURM_ARRAY_TASK_ID-}")
if [ ${#flotilla_fields[@]} -lt 7 ]; then
  echo "flotilla: task $flotilla_job has no member in $flotilla_manifest" >&2
  exit 1
fi
flotilla_key=${flotilla_fields[0]}
flotilla_status=${flotilla_fields[1]}
flotilla_cwd=${flotilla_fields[2]}
flotilla_env=("${flotilla_fields[@]:6:${flotilla_fields[5]}}")
flotilla_argv=("${flotilla_fields[@]:$((6 + flotilla_fields[5]))}")
if [ "${flotilla_fields[3]}" = "${flotilla_fields[4]}" ]; then
  exec >"${flotilla_fields[3]}" 2>&1 || exit 1
else
  exec >"${flotilla_fields[3]}" 2>"${flotilla_fields[4]}" || exit 1
fi
"""


def _fill(template: str, values: Mapping[str, str]) -> str:
    return re.sub(r"@([A-Z]+)@", lambda match: values[match.group(1)], template)  # one pass: values stay as they are


def check_member(*, argv: Sequence[str], env: Mapping[str, str], paths: Sequence[str] = ()) -> None:
    """Refuses what cannot reach a member intact: no command, a bad variable name, a NUL."""
    if not argv:
        raise SlurmOptionError("the member has no command")
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise SlurmOptionError(f"{name!r} is not a valid environment variable name")
    if any("\x00" in str(text) for text in (*argv, *env.values(), *paths)):
        raise SlurmOptionError("the member's command, environment and paths cannot contain a NUL character")


def member_script(*, key: str, argv: Sequence[str], cwd: str, env: Mapping[str, str], status_file: str,
                  directives: Sequence[str] = ()) -> str:
    """The job script of one member (see WRAPPER)."""
    check_member(argv=argv, env=env, paths=[cwd, status_file])
    values = {
        "KEY": shlex.quote(json.dumps(str(key))),
        "STATUS": shlex.quote(status_file),
        "CWD": shlex.quote(cwd),
        "ENV": " ".join(shlex.quote(f"{name}={value}") for name, value in env.items()),
        "ARGV": shlex.join(argv),
    }
    return batch_script(directives=list(directives), body=_fill(MEMBER_PREAMBLE, values) + WRAPPER)


def manifest_task(job: JobSpec) -> dict[str, Any]:
    """What array task N needs of its member (index N of the manifest's ``tasks``)."""
    task = {"key": str(job.key), "cwd": job.cwd, "argv": list(job.argv),
            "env": {name: str(value) for name, value in job.env.items()},
            "stdout": _output_path(job, job.stdout, ".out"), "stderr": _output_path(job, job.stderr, ".err"),
            "status_file": status_file(job)}
    check_member(argv=task["argv"], env=task["env"], paths=[task["cwd"], task["stdout"], task["stderr"]])
    return task


def array_script(*, manifest: str, directives: Sequence[str] = (), python: str = NODE_PYTHON) -> str:
    """The script of an array: every task reads its member from the manifest (see WRAPPER)."""
    values = {"MANIFEST": shlex.quote(manifest), "PYTHON": shlex.quote(python), "READER": shlex.quote(MANIFEST_READER)}
    return batch_script(directives=list(directives), body=_fill(ARRAY_PREAMBLE, values) + WRAPPER)


# Run by srun as the member's step, on its node: records the step, pid, host and start (task 0
# of the step), gives up if the member was cancelled meanwhile (the canceller records the
# cancel before it looks for the step: one of the two sees the other), then runs the member.
BATCH_STEP = r"""flotilla_key=$1 flotilla_status=$2 flotilla_journal=$3
shift 3
if [ "${SLURM_PROCID:-0}" = 0 ]; then
  printf '{"key":%s,"job_id":"%s","step":"%s.%s","pid":%d,"host":"%s","started":%s}\n' "$flotilla_key" \
    "${SLURM_JOB_ID-}" "${SLURM_JOB_ID-}" "${SLURM_STEP_ID-}" "$$" "${HOSTNAME-}" "$(date +%s.%N)" >> "$flotilla_status"
fi
if grep -qsF -- "{\"key\":$flotilla_key,\"cancelled\":" "$flotilla_journal"; then exit 143; fi
exec -- "$@"
"""

BATCH_PREAMBLE = r"""# Flotilla: every member is a step of this job (srun --exact, side by side) in its own
# folder, with its environment; a step takes its own run args, not the job's sizes. Each
# member's status file gets the job id, then its step's start (from the step), then its
# exit status (from here, when srun returns).
flotilla_journal=@JOURNAL@
flotilla_step=@STEP@
flotilla_member() {  # key (JSON), status file, folder, number of env entries, NAME=value..., srun command
  flotilla_key=$1 flotilla_status=$2 flotilla_cwd=$3 flotilla_count=$4
  shift 4
  flotilla_env=("${@:1:flotilla_count}")
  shift "$flotilla_count"
  flotilla_terminated=false
  trap 'flotilla_terminated=true' TERM
  printf '{"key":%s,"job_id":"%s"}\n' "$flotilla_key" "${SLURM_JOB_ID-}" > "$flotilla_status"
  (
    cd -- "$flotilla_cwd" || exit 1
    if [ "$flotilla_count" -gt 0 ]; then export -- "${flotilla_env[@]}"; fi
    unset SLURM_NTASKS SLURM_NPROCS SLURM_NNODES SLURM_JOB_NUM_NODES SLURM_NTASKS_PER_NODE
    exec -- "$@"
  )
  flotilla_rc=$?
  printf '{"key":%s,"job_id":"%s","ended":%s,"returncode":%d,"terminated":%s}\n' "$flotilla_key" \
    "${SLURM_JOB_ID-}" "$(date +%s.%N)" "$flotilla_rc" "$flotilla_terminated" >> "$flotilla_status"
}
trap : TERM  # a cancel or a time limit: keep waiting while the members record their ends
"""

BATCH_END = """until wait; do :; done
"""


def batch_step_argv(job: JobSpec) -> list[str]:
    """The member's ``srun --exact``, named after it, with its run args (``resources["run_args"]``:
    a member's own batch settings are ignored inside a batch job, as in SmartSim) and its
    output files; its command (the step's recorder around its argv) follows."""
    run_args = (job.resources or {}).get("run_args") or {}
    return [
        "srun", "--exact", f"--job-name={_argv_value('job-name', job.name)}",
        *format_run_args(run_args),
        f"--output={slurm_filename(_output_path(job, job.stdout, '.out'))}",
        f"--error={slurm_filename(_output_path(job, job.stderr, '.err'))}",
    ]


def batch_job_script(jobs: Sequence[JobSpec], *, journal: str, directives: Sequence[str] = ()) -> str:
    """One batch job for every member: each its step in the background, then ``wait``."""
    lines = []
    for job in jobs:
        check_member(argv=job.argv, env=job.env, paths=[job.cwd, status_file(job)])
        key = json.dumps(str(job.key))
        env = [f"{name}={value}" for name, value in job.env.items()]
        head = [key, status_file(job), job.cwd, str(len(env)), *env, *batch_step_argv(job), "bash", "-c"]
        tail = ["flotilla-step", key, status_file(job), journal, *job.argv]
        lines.append(f'flotilla_member {shlex.join(head)} "$flotilla_step" {shlex.join(tail)} &\n')
    values = {"JOURNAL": shlex.quote(journal), "STEP": shlex.quote(BATCH_STEP)}
    body = _fill(BATCH_PREAMBLE, values) + "".join(lines) + BATCH_END
    return batch_script(directives=list(directives), body=body)


def status_file(job: JobSpec) -> str:
    return _output_path(job, job.stdout, ".out") + STATUS_SUFFIX


def _output_path(job: JobSpec, path: str, suffix: str) -> str:
    """Absolute (Slurm reads relative paths from the job's folder, the status file is read from here)."""
    return str(Path(job.cwd, path or f"{job.name}{suffix}"))


# --- parsers ----------------------------------------------------------------------------


def parse_sbatch_id(stdout: str) -> tuple[str, str | None]:
    """``sbatch --parsable`` prints ``jobid`` or ``jobid;cluster``."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if lines:
        job_id, _, cluster = lines[-1].partition(";")
        if job_id.isdigit():
            return job_id, cluster or None
    raise LauncherError(f"sbatch printed no job id: {stdout.strip()!r}")


@dataclass
class QueueRow:
    job_id: str  # 1234, or 1234_5 for an array task
    state: str
    exit_status: int | None = None  # a wait status (code << 8 | signal), as squeue -O exit_code prints it
    start: str = ""
    end: str = ""
    reason: str = ""


def squeue_format(fields: Sequence[str] = SQUEUE_FIELDS, separator: str = "|") -> str:
    return ",".join(f"{field}:{separator}" for field in fields)


def parse_squeue(text: str, fields: Sequence[str] = SQUEUE_FIELDS, separator: str = "|") -> dict[str, QueueRow]:
    """squeue lines (``-h``, fields joined by ``separator``, the free text last) by job id.
    Collapsed array tasks (``1234_[5-9%2]``, without ``-r``) are expanded."""
    rows: dict[str, QueueRow] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(separator, len(fields) - 1)
        if len(parts) < len(fields):
            raise LauncherError(f"unexpected squeue line: {line!r}")
        if parts[-1].endswith(separator):  # -O writes the separator after every field
            parts[-1] = parts[-1][: -len(separator)]
        values = dict(zip(fields, (part.strip() for part in parts)))
        state = values.get("State", "").split(" ", 1)[0]  # "CANCELLED by 0" in some versions
        exit_status = values.get("exit_code", "")
        for job_id in expand_job_ids(values.get("JobArrayID") or values.get("JobID", "")):
            rows[job_id] = QueueRow(
                job_id=job_id,
                state=state,
                exit_status=int(exit_status) if exit_status.isdigit() else None,
                start=values.get("StartTime", ""),
                end=values.get("EndTime", ""),
                reason=values.get("Reason", ""),
            )
    return rows


def expand_job_ids(text: str) -> list[str]:
    """``1234`` -> [1234]; ``1234_5`` -> [1234_5]; ``1234_[1-3,7%2]`` -> [1234_1, 1234_2, 1234_3, 1234_7]."""
    match = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", text)
    if not match:
        if not _JOB_ID.fullmatch(text):
            raise LauncherError(f"unexpected job id from squeue: {text!r}")
        return [text]
    job, ranges = match.groups()
    ids = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        ids.extend(f"{job}_{task}" for task in range(int(first), int(last or first) + 1))
    return ids


def parse_lookup(text: str, prefix: str = COMMENT_PREFIX) -> dict[str, str]:
    """``squeue -O JobArrayID:|,Comment:|``: what follows ``prefix`` in each Flotilla job's
    comment (a member's key; an array's or batch job's token) -> the job id (an array's
    own id for its tasks, ``123`` for ``123_4`` or ``123_[5-9%2]``)."""
    found = {}
    for line in text.splitlines():
        job_id, _, comment = line.partition("|")
        comment = comment[:-1] if comment.endswith("|") else comment
        job = re.fullmatch(r"(\d+)(?:_\d+|_\[[0-9,\-]+(?:%\d+)?\])?", job_id.strip())
        if comment.startswith(prefix) and job:
            found[comment[len(prefix):]] = job.group(1)
    return found


def parse_exit_code(text: str) -> tuple[int, int]:
    """``scontrol show job``'s ``ExitCode=<code>:<signal>``."""
    match = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if not match:
        raise LauncherError(f"unexpected exit code {text!r}")
    return int(match.group(1)), int(match.group(2))


def parse_scontrol_job(text: str) -> dict[str, str]:
    """The fields of ``scontrol show job ID`` (one job) that the launcher reads:
    JobId, JobState, Reason, ExitCode, StartTime, EndTime. The job name and the
    other free-text fields are left out (a name could hold ``ExitCode=``)."""
    text = re.sub(r"JobName=.*?(?=\s+UserId=)", "", text, count=1, flags=re.DOTALL)
    fields = {}
    for key in ("JobId", "JobState", "ExitCode", "StartTime", "EndTime"):
        match = re.search(rf"(?:^|\s){key}=(\S+)", text)
        if match:
            fields[key] = match.group(1)
    reason = re.search(r"(?:^|\s)Reason=(.*?)\s+Dependency=", text)
    if reason:
        fields["Reason"] = reason.group(1)
    return fields


def parse_scontrol_config(text: str) -> dict[str, str]:
    """``scontrol show config``: ``Name = value`` lines."""
    config = {}
    for line in text.splitlines():
        name, separator, value = line.partition("=")
        if separator and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name.strip()):
            config[name.strip()] = value.strip()
    return config


def site_limits(config_text: str) -> dict[str, int]:
    """MaxArraySize and MaxJobCount from ``scontrol show config`` (Slurm's defaults when absent)."""
    config = parse_scontrol_config(config_text)
    limits = {"MaxArraySize": 1001, "MaxJobCount": 10000}
    for name in limits:
        value = config.get(name, "")
        if value.isdigit():
            limits[name] = int(value)
    return limits


def _timestamp(text: str) -> float | None:
    """squeue's local time (2026-12-01T10:00:00); N/A, NONE, Unknown -> None."""
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


# --- the state map ----------------------------------------------------------------------

QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
RUNNING_STATES = {"RUNNING", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING",
                  "SUSPENDED", "STOPPED"}
# Final states: the JobState and what the user should know about the end.
ENDED_STATES = {
    "COMPLETED": (JobState.COMPLETED, None),
    "FAILED": (JobState.FAILED, None),
    "CANCELLED": (JobState.CANCELLED, None),
    "TIMEOUT": (JobState.FAILED, "time limit"),
    "OUT_OF_MEMORY": (JobState.FAILED, "out of memory"),
    "NODE_FAIL": (JobState.FAILED, "node failure"),
    "PREEMPTED": (JobState.FAILED, "preempted by the scheduler"),
    "BOOT_FAIL": (JobState.FAILED, "its node failed to boot"),
    "DEADLINE": (JobState.FAILED, "deadline reached before it ended"),
    "REVOKED": (JobState.CANCELLED, "revoked (it ran on another cluster of the federation)"),
}
QUEUED_REASONS = {"REQUEUED": "requeued", "REQUEUE_FED": "requeued", "REQUEUE_HOLD": "requeued and held",
                  "RESV_DEL_HOLD": "held: its reservation was deleted", "SPECIAL_EXIT": "held after a special exit"}


def exit_code_and_signal(code: int, signal: int) -> tuple[int | None, int | None]:
    """(returncode, signal), one of them None. The job script is a bash wrapper, which
    exits 128 + n when its member was killed by signal n."""
    if signal:
        return None, signal
    if 128 < code <= 128 + 64:
        return None, code - 128
    return code, None


def job_status(row: QueueRow | None) -> JobStatus | None:
    """A squeue row as a JobStatus; None for a job the scheduler does not know (the
    caller decides: a status file, or Lost)."""
    if row is None:
        return None
    state = row.state
    reason = None if row.reason in ("", "None", "(null)") else row.reason
    if state in QUEUED_STATES:
        return JobStatus(JobState.QUEUED, job_id=row.job_id, reason=reason or QUEUED_REASONS.get(state))
    if state in RUNNING_STATES:
        note = state.lower() if state in ("SUSPENDED", "STOPPED") else None
        return JobStatus(JobState.RUNNING, job_id=row.job_id, started=_timestamp(row.start), reason=note)
    if state in ENDED_STATES:
        job_state, error = ENDED_STATES[state]
        code, signal = (None, None) if row.exit_status is None else exit_code_and_signal(
            (row.exit_status >> 8) & 0xFF, row.exit_status & 0x7F)
        return JobStatus(
            job_state,
            job_id=row.job_id,
            returncode=code,
            signal=signal,
            # a job cancelled while it was pending has its cancel time as StartTime
            started=_timestamp(row.start) if job_state != JobState.CANCELLED else None,
            ended=_timestamp(row.end),
            error=error,
        )
    return JobStatus(JobState.QUEUED, job_id=row.job_id, reason=f"Slurm state {state}")


def read_status_file(path: str, key: str) -> dict[str, Any]:
    """What a member's wrapper recorded: {"job_id", "started", "ended", "returncode"}
    (the lines of ``key`` only: a folder may hold an earlier run's file)."""
    found: dict[str, Any] = {}
    try:
        with open(path, errors="replace") as handle:
            lines = handle.read(1024 * 1024).splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("key") == key:
            found.update(record)
    return found


def status_from_file(record: Mapping[str, Any], *, job_id: str | None, cancelled: bool) -> JobStatus | None:
    """The end a status file records; None if it records no end. A member that Slurm sent
    SIGTERM was cancelled (if Flotilla cancelled it) or stopped by Slurm, whatever its exit."""
    if "ended" not in record or not isinstance(record.get("returncode"), int):
        return None
    returncode, signal = exit_code_and_signal(record["returncode"], 0)
    error = None
    if record.get("terminated") is True or (cancelled and signal is not None):
        state = JobState.CANCELLED if cancelled else JobState.FAILED
        if not cancelled:
            error = "stopped by Slurm (a time limit, preemption or an operator)"
    else:
        state = JobState.COMPLETED if record["returncode"] == 0 else JobState.FAILED
    return JobStatus(state, job_id=job_id, returncode=returncode, signal=signal,
                     started=record.get("started"), ended=record.get("ended"), error=error)


# --- the launcher -----------------------------------------------------------------------


class Journalled:
    """A scheduler launcher's journal of JSON lines in its work folder, read incrementally
    and appended to under the run's lock: what went out as which job, survives a dead submitter."""

    def _open_journal(self, journal_path: Path, lock_path: Path) -> None:
        self.journal_path, self.lock_path = journal_path, lock_path
        self._journal_offset = 0
        self._records: dict[str, dict[str, Any]] = {}

    def records(self) -> dict[str, dict[str, Any]]:
        """Every key's journal entries merged (what was appended since the last call is read)."""
        try:
            with open(self.journal_path, "rb") as journal:
                journal.seek(self._journal_offset)
                data = journal.read()
        except FileNotFoundError:
            return self._records
        complete = data.rfind(b"\n") + 1  # a line being written is read next time
        for line in data[:complete].splitlines():
            try:
                entry = json.loads(line)
                self._records.setdefault(str(entry.pop("key")), {}).update(entry)
            except (ValueError, KeyError, AttributeError):
                continue
        self._journal_offset += complete
        return self._records

    def _append(self, journal, entries: Iterable[dict[str, Any]]) -> None:
        journal.write("".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in entries))
        journal.flush()  # in the kernel's hands before the next command: a dead submitter loses nothing

    @contextlib.contextmanager
    def _journal(self):
        """The journal for appending, with the run's lock held (one submitter or canceller at a time)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock, open(self.journal_path, "a") as journal:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield journal
            finally:
                os.fsync(journal.fileno())


class SlurmLauncher(Journalled, Launcher):
    """Members as Slurm jobs on the cluster that ``env`` points at (``SLURM_CONF``): a job
    each (``submit``), array tasks (``submit_array``) or the steps of one batch job
    (``submit_batch``). ``command_prefix`` (e.g. ``["sudo", "-n", "-u", account, "--"]``)
    runs every Slurm command as another account; the environment then goes through
    ``env`` after the prefix, since sudo resets it. ``max_array_size``: the cluster's
    MaxArraySize (``site_limits``); ``python``: the Python on the nodes that reads an
    array's manifest."""

    name = "slurm"

    def __init__(
        self,
        *,
        work_dir: str | os.PathLike,
        env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        command_prefix: Sequence[str] = (),
        timeout: float = COMMAND_TIMEOUT,
        max_array_size: int = MAX_ARRAY_SIZE,
        python: str = NODE_PYTHON,
    ):
        if max_array_size < 1:
            raise SlurmOptionError("MaxArraySize must be at least 1")
        self.work_dir = Path(work_dir).absolute()  # jobs read manifests and the journal from other folders
        # sbatch gives the jobs its own environment: the server's without its secrets, by default
        self.command_env = {**(member_base_env() if base_env is None else base_env), **(env or {})}
        self.command_prefix = list(command_prefix)
        self.timeout = timeout
        self.max_array_size = max_array_size
        self.python = python
        self._open_journal(self.work_dir / JOURNAL_FILE, self.work_dir / LOCK_FILE)

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

    def _check(self, result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
        if result.returncode:
            output = result.stderr.strip() or result.stdout.strip()
            raise LauncherError(f"{what} failed (exit {result.returncode}): {output}")
        return result

    # --- submitting --------------------------------------------------------------

    def job_command(self, job: JobSpec) -> tuple[list[str], str]:
        """The sbatch argv and the job script for one member."""
        script = member_script(
            key=job.key, argv=job.argv, cwd=job.cwd, env=job.env, status_file=status_file(job),
            directives=format_batch_directives(batch_options(job.resources)),
        )
        argv = sbatch_argv(job_name=job.name, output=_output_path(job, job.stdout, ".out"),
                           error=_output_path(job, job.stderr, ".err"), chdir=job.cwd,
                           comment=f"{COMMENT_PREFIX}{job.key}")
        return argv, script

    def submit(self, jobs: list[JobSpec], *, group: str, concurrency: int | None = None) -> None:
        """One sbatch per member not submitted yet. ``concurrency`` is left to Slurm's
        scheduler (an array has a %N throttle: ``submit_array``)."""
        if not jobs:
            return
        commands = {job.key: self.job_command(job) for job in jobs}  # a bad option refuses all, before any sbatch
        with self._journal() as journal:
            for job in self._unsubmitted(jobs, journal):
                if not self._prepare(job, journal):
                    continue
                argv, script = commands[job.key]
                self._append(journal, [self._intent(job)])
                result = self._check(self.run_command(argv, input=script), f"sbatch of {job.name}")
                job_id, cluster = parse_sbatch_id(result.stdout)
                self._append(journal, [{"key": job.key, "job_id": job_id, "cluster": cluster, **_where(job)}])

    def submit_array(self, jobs: list[JobSpec], *, group: str, concurrency: int | None = None,
                     name: str | None = None) -> None:
        """Members that share their resources, not submitted yet, as job arrays of at most
        ``max_array_size`` tasks (one sbatch each), named ``name`` (default: ``group``).
        ``concurrency`` is each array's ``%N`` throttle; with it, an array waits for the one
        before it to end (``afterany``), so that no more than ``concurrency`` run at once."""
        if not jobs:
            return
        if concurrency is not None and concurrency < 1:
            raise SlurmOptionError("an array's concurrency must be at least 1")
        resources = jobs[0].resources
        if any(job.resources != resources for job in jobs[1:]):
            raise SlurmOptionError("the members of an array must share their resources "
                                   "(nodes, time, account, queue, batch_args)")
        directives = format_batch_directives(batch_options(resources))
        tasks = {job.key: manifest_task(job) for job in jobs}  # a bad member refuses all, before any sbatch
        name = name or group
        with self._journal() as journal:
            todo = [job for job in self._unsubmitted(jobs, journal) if self._prepare(job, journal)]
            after = None
            for chunk in array_chunks(todo, self.max_array_size):
                token = secrets.token_hex(8)
                manifest = self.work_dir / f"array-{token}.json"
                _write_readable(manifest, json.dumps({"tasks": [tasks[job.key] for job in chunk]}))
                self._append(journal, [{**self._intent(job, token=token, name=name), "task": index}
                                       for index, job in enumerate(chunk)])
                extra = [array_option(len(chunk), concurrency), "--open-mode=append"]
                if after:
                    extra.append(f"--dependency=afterany:{after}")
                argv = sbatch_argv(job_name=name, output=str(self.work_dir / f"array-{token}.log"), error=None,
                                   chdir=str(self.work_dir), comment=f"{GROUP_COMMENT_PREFIX}{token}", extra=extra)
                script = array_script(manifest=str(manifest), directives=directives, python=self.python)
                result = self._check(self.run_command(argv, input=script), f"sbatch of the array {name}")
                array_id, cluster = parse_sbatch_id(result.stdout)
                self._append(journal, [{"key": job.key, "job_id": f"{array_id}_{index}", "cluster": cluster}
                                       for index, job in enumerate(chunk)])
                if concurrency is not None:
                    after = array_id

    def submit_batch(self, jobs: list[JobSpec], *, group: str, batch: Mapping[str, Any] | None = None,
                     name: str | None = None) -> None:
        """A batch ensemble: the members not submitted yet as the steps of one batch job named
        ``name`` (default: ``group``) with the ensemble's ``batch`` settings (nodes, time,
        account, queue, batch_args). Each step is ``srun --exact`` with the member's
        ``resources["run_args"]`` around its argv."""
        if not jobs:
            return
        directives = format_batch_directives(batch_options(batch or {}))
        journal_path = str(self.journal_path)
        batch_job_script(jobs, journal=journal_path)  # a bad member refuses all, before any sbatch
        name = name or group
        with self._journal() as journal:
            todo = [job for job in self._unsubmitted(jobs, journal) if self._prepare(job, journal)]
            if not todo:
                return
            token = secrets.token_hex(8)
            script = batch_job_script(todo, journal=journal_path, directives=directives)
            self._append(journal, [self._intent(job, token=token, name=name, batch=True) for job in todo])
            argv = sbatch_argv(job_name=name, output=str(self.work_dir / f"batch-{token}.out"), error=None,
                               chdir=str(self.work_dir), comment=f"{GROUP_COMMENT_PREFIX}{token}")
            result = self._check(self.run_command(argv, input=script), f"sbatch of the batch job {name}")
            job_id, cluster = parse_sbatch_id(result.stdout)
            self._append(journal, [{"key": job.key, "job_id": job_id, "cluster": cluster} for job in todo])

    def _prepare(self, job: JobSpec, journal) -> bool:
        """Runs the member's prepare hook; a failure is the member's, told to the user."""
        if not job.prepare:
            return True
        try:
            run_hook(job.prepare)
        except Exception as error:
            self._append(journal, [{"key": job.key, "failed": f"could not prepare the job: {error}",
                                    "ended": time.time()}])
            return False
        return True

    @staticmethod
    def _intent(job: JobSpec, *, token: str | None = None, name: str | None = None, batch: bool = False) -> dict:
        """The journal line written before an sbatch; ``token``: the array's or batch job's
        (in its comment), by which a retry finds it."""
        intent = {"key": job.key, "submitting": time.time(), "token": token, "batch": batch}
        if token:
            intent.update(job_name=name, **_where(job))
        return intent

    def _unsubmitted(self, jobs: list[JobSpec], journal) -> list[JobSpec]:
        """The jobs that have no Slurm job yet; an intent without a job id is looked up first
        (and the job id found is recorded)."""
        records = self.records()
        todo = [job for job in jobs if not {"job_id", "cancelled", "failed"} & set(records.get(job.key, {}))]
        in_doubt = [job for job in todo if "submitting" in records.get(job.key, {})]
        if not in_doubt:
            return todo
        found = self.find_submitted(in_doubt)
        self._append(journal, [{"key": job.key, "job_id": found[job.key], **_where(job)}
                               for job in in_doubt if job.key in found])
        return [job for job in todo if job.key not in found]

    def find_submitted(self, jobs: list[JobSpec]) -> dict[str, str]:
        """Job ids of members submitted earlier, by key: from squeue (by name, then the
        comment that carries the key, or the token of the member's array or batch job),
        else from the status file a started member wrote."""
        records = self.records()
        intents = {job.key: records.get(job.key, {}) for job in jobs}
        names = sorted({intents[job.key].get("job_name") or job.name for job in jobs})
        argv = ["squeue", "-h", "-t", "all", "-O", squeue_format(LOOKUP_FIELDS)]
        if not any("," in name for name in names):  # --name takes a comma-separated list
            argv.append(f"--name={','.join(names)}")
        output = self._check(self.run_command(argv), "squeue").stdout
        by_key, by_token = parse_lookup(output), parse_lookup(output, GROUP_COMMENT_PREFIX)
        recorded = {}
        for job in jobs:
            if job.key not in by_key and intents[job.key].get("token") not in by_token:
                job_id = read_status_file(status_file(job), job.key).get("job_id")
                if isinstance(job_id, str) and _JOB_ID.fullmatch(job_id):
                    recorded[job.key] = job_id
                    if intents[job.key].get("token"):  # one task or step that ran: its whole job went out
                        by_token[intents[job.key]["token"]] = job_id.split("_")[0]
        result = {}
        for job in jobs:
            intent = intents[job.key]
            token = intent.get("token")
            if token and token in by_token:
                result[job.key] = by_token[token] if intent.get("batch") else f"{by_token[token]}_{intent['task']}"
            elif not token and job.key in by_key:
                result[job.key] = by_key[job.key]
            elif not token and job.key in recorded:
                result[job.key] = recorded[job.key]
        return result

    def unstarted(self, jobs: list[JobSpec]) -> list[JobSpec]:
        """The jobs that have no Slurm job (safe to generate and submit)."""
        with self._journal() as journal:
            return self._unsubmitted(jobs, journal)

    # --- observing ---------------------------------------------------------------

    def status(self, keys: list[str]) -> dict[str, JobStatus]:
        """One squeue call for all the jobs (one per IDS_PER_CALL ids; an array is asked
        for by its own id); for a job squeue no longer knows, the member's status file,
        then ``scontrol show job``; else Lost. A batch job's members: see ``_batch_member``."""
        records = self.records()
        result: dict[str, JobStatus] = {}
        by_job: dict[str, list[str]] = {}
        for key in keys:
            record = records.get(key, {})
            if "job_id" in record:
                by_job.setdefault(record["job_id"], []).append(key)
            elif "failed" in record:
                result[key] = JobStatus(JobState.FAILED, error=record["failed"], ended=record.get("ended"))
            elif "cancelled" in record:
                result[key] = JobStatus(JobState.CANCELLED, ended=record["cancelled"])
            else:
                result[key] = JobStatus(JobState.QUEUED)  # not submitted yet
        rows = self.queue(sorted({job_id.split("_")[0] for job_id in by_job}))
        forgotten: dict[str, JobStatus | None] = {}
        for job_id, job_keys in by_job.items():
            for key in job_keys:
                record = records[key]
                if record.get("batch"):
                    status = self._batch_member(key, job_id, record, rows.get(job_id), forgotten)
                else:
                    status = job_status(rows.get(job_id))
                    if status is None or status.state.terminal:
                        status = self._ended(key, job_id, record, status, forgotten)
                if status.state == JobState.COMPLETED and record.get("results_file"):
                    status.results = collect_results(record["cwd"], record["results_file"])
                result[key] = status
        return result

    def queue(self, job_ids: list[str]) -> dict[str, QueueRow]:
        """squeue's rows for the ids (an array's id: a row per task); ids it does not know are missing."""
        rows: dict[str, QueueRow] = {}
        for start in range(0, len(job_ids), IDS_PER_CALL):
            chunk = job_ids[start : start + IDS_PER_CALL]
            result = self.run_command(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(chunk),
                                       "-O", squeue_format()])
            if result.returncode and "Invalid job id" in result.stderr:
                continue  # none of them is known (asked with known ids, the unknown are just missing)
            rows.update(parse_squeue(self._check(result, "squeue").stdout))
        return rows

    def _ended(self, key: str, job_id: str, record: dict[str, Any], status: JobStatus | None,
               forgotten: dict[str, JobStatus | None]) -> JobStatus:
        """A finished job: the scheduler's word completed with the member's status file;
        one the scheduler forgot: the status file, else scontrol, else Cancelled if Flotilla
        cancelled it (a pending array task cancelled alone leaves no trace), else Lost."""
        recorded = read_status_file(record.get("status_file", ""), key)
        if status is not None:
            status.started = recorded.get("started", status.started)
            status.ended = recorded.get("ended", status.ended)
            if not recorded and record.get("token") and status.state == JobState.FAILED and not status.error:
                status.error = (f"the array task ended before its member started: see "
                                f"{self.work_dir / ('array-' + record['token'] + '.log')}")
            return status
        from_file = status_from_file(recorded, job_id=job_id, cancelled="cancelled" in record)
        if from_file is not None:
            return from_file
        known = self._forgotten_job(job_id, forgotten)
        if known is not None:
            return known
        if "cancelled" in record:
            return JobStatus(JobState.CANCELLED, job_id=job_id, started=recorded.get("started"),
                             ended=record["cancelled"])
        return JobStatus(JobState.LOST, job_id=job_id, started=recorded.get("started"), ended=time.time(),
                         error=f"Slurm no longer knows job {job_id} and it left no exit status")

    def _forgotten_job(self, job_id: str, forgotten: dict[str, JobStatus | None]) -> JobStatus | None:
        """``scontrol show job`` of a job squeue does not list (asked once per status call)."""
        if job_id not in forgotten:
            fields = parse_scontrol_job(self.run_command(["scontrol", "show", "job", job_id]).stdout)
            known = None
            if "JobState" in fields:
                known = job_status(QueueRow(job_id, fields["JobState"], start=fields.get("StartTime", ""),
                                            end=fields.get("EndTime", ""), reason=fields.get("Reason", "")))
                if known.state.terminal:
                    known.returncode, known.signal = exit_code_and_signal(
                        *parse_exit_code(fields.get("ExitCode", "0:0")))
            forgotten[job_id] = known
        known = forgotten[job_id]
        return None if known is None else dataclasses.replace(known)

    def _batch_member(self, key: str, job_id: str, record: dict[str, Any], row: QueueRow | None,
                      forgotten: dict[str, JobStatus | None]) -> JobStatus:
        """A member of a batch job: its status file's end, else the job's state with what its
        step recorded. While the job runs, a member whose step has not started is Queued; when
        the job ended and the member left no exit status, it is Failed with the job's reason
        (a time limit, a cancel by someone else), or Lost. A member killed while the job ends
        (its step is signalled, not always its wrapper) is Failed with the job's reason."""
        recorded = read_status_file(record.get("status_file", ""), key)
        cancelled = record.get("cancelled")
        job = job_status(row) if row is not None else self._forgotten_job(job_id, forgotten)
        started = recorded.get("started")
        ended = status_from_file(recorded, job_id=job_id, cancelled=cancelled is not None)
        if ended is not None:
            stopped = ended.error is not None or (ended.signal is not None and cancelled is None)
            if stopped and row is not None and row.state == "COMPLETING":
                return JobStatus(JobState.RUNNING, job_id=job_id, started=started)  # the job's end says why, soon
            if stopped and job is not None and job.state.terminal and (job.error or job.state == JobState.CANCELLED):
                ended.state = JobState.FAILED
                ended.error = job.error or f"batch job {job_id} was cancelled before the member ended"
            return ended
        if cancelled is not None and (started is None or started >= cancelled):
            return JobStatus(JobState.CANCELLED, job_id=job_id, ended=cancelled)  # its step gives up if it starts
        if job is None:
            return JobStatus(JobState.LOST, job_id=job_id, started=started, ended=time.time(),
                             error=f"Slurm no longer knows batch job {job_id} and the member left no exit status")
        if job.state == JobState.QUEUED:
            return JobStatus(JobState.QUEUED, job_id=job_id, reason=job.reason)
        if not job.state.terminal:
            if started is None:
                return JobStatus(JobState.QUEUED, job_id=job_id, reason=f"waiting for a step of job {job_id}")
            return JobStatus(JobState.RUNNING, job_id=job_id, started=started, reason=job.reason)
        if cancelled is not None:
            return JobStatus(JobState.CANCELLED, job_id=job_id, started=started, ended=job.ended or cancelled)
        if job.error or job.state == JobState.CANCELLED:
            return JobStatus(JobState.FAILED, job_id=job_id, started=started, ended=job.ended,
                             error=job.error or f"batch job {job_id} was cancelled before the member ended")
        return JobStatus(JobState.LOST, job_id=job_id, started=started, ended=job.ended or time.time(),
                         error=f"batch job {job_id} ended and the member left no exit status")

    # --- cancelling -----------------------------------------------------------------

    def cancel(self, jobs: list[JobSpec], *, group: str) -> None:
        """Recorded first (a later submit skips them; a batch step that starts later gives
        up), then one scancel: of a member's job or array task (``123_4``); of a batch
        member's step (``123.2``), or of the whole batch job once all its members are cancelled."""
        if not jobs:
            return
        with self._journal() as journal:
            self._unsubmitted(jobs, journal)  # an intent in doubt: find its job, to cancel it too
            now = time.time()
            self._append(journal, [{"key": str(job.key), "cancelled": now} for job in jobs])
            os.fsync(journal.fileno())  # seen by a step that starts from now on, before its status file is read
            records = self.records()
            targets, batches = [], {}
            for job in jobs:
                record = records.get(job.key, {})
                if "job_id" not in record:
                    continue
                if record.get("batch"):
                    batches.setdefault(record["job_id"], []).append(job.key)
                else:
                    targets.append(record["job_id"])
            for job_id, cancelled in batches.items():
                members = [key for key, record in records.items() if record.get("batch") and record.get("job_id") == job_id]
                if all("cancelled" in records[key] for key in members):
                    targets.append(job_id)
                    continue
                for key in cancelled:
                    step = read_status_file(records[key].get("status_file", ""), key).get("step")
                    if isinstance(step, str) and _STEP_ID.fullmatch(step):
                        targets.append(step)
        for start in range(0, len(targets), IDS_PER_CALL):
            self._check(self.run_command(["scancel", *targets[start : start + IDS_PER_CALL]]), "scancel")

    def runner_alive(self) -> bool:
        return True  # the scheduler is the runner


def _where(job: JobSpec) -> dict[str, str]:
    """What the journal keeps of a member to read its end: its folder, status and results files."""
    return {"cwd": job.cwd, "status_file": status_file(job), "results_file": job.results_file}


def _write_readable(path: Path, text: str) -> None:
    """Written whole (a job never reads half of it) and readable by the jobs' account."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.chmod(0o644)
    os.replace(partial, path)
