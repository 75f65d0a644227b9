"""The launcher contract. Plain Python: no Django.

A launcher starts jobs described by JobSpecs, reports their states in one
batched call, and cancels them. What a launcher records (the local runner's
journals, a scheduler's accounting) is the source of truth, never deleted:
the database is rebuilt from it after a crash.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


class LauncherError(Exception):
    """A launcher could not do what was asked; the message is for the user."""


class JobState(str, Enum):
    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    LOST = "Lost"  # no process and no recorded exit: the runner died with it

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.LOST})


@dataclass
class JobSpec:
    """One job: what to run, where, and where to write its output."""

    key: str  # unique across the system (Flotilla uses the MemberRun id)
    name: str
    argv: list[str]
    cwd: str
    env: dict[str, str] = field(default_factory=dict)  # added to the launcher's environment
    stdout: str = ""
    stderr: str = ""
    resources: dict[str, Any] = field(default_factory=dict)  # nodes, time, account, queue... for schedulers
    results_file: str = ""  # a JSON file the member writes (relative to cwd): its numbers are read when it completes
    # Work to do just before the job starts, by whoever starts it (once, after claiming it):
    # {"hook": "package.module:function", "kwargs": {...}}; the hook is plain Python.
    prepare: dict[str, Any] | None = None


@dataclass
class JobStatus:
    state: JobState
    job_id: str | None = None
    returncode: int | None = None
    signal: int | None = None
    started: float | None = None  # epoch seconds
    ended: float | None = None
    error: str | None = None  # why the job could not start, or what the user should know about its end
    results: dict[str, float] | None = None  # the numeric fields of its results file, once it completed
    reason: str | None = None  # why a queued job waits (a scheduler's pending reason, e.g. "Resources")

    def to_dict(self) -> dict:
        """The state and the fields that are set (written for every event: kept cheap)."""
        data = {name: value for name, value in self.__dict__.items() if value is not None}
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> JobStatus:
        return cls(
            state=JobState(data["state"]),
            job_id=data.get("job_id"),
            returncode=data.get("returncode"),
            signal=data.get("signal"),
            started=data.get("started"),
            ended=data.get("ended"),
            error=data.get("error"),
            results=data.get("results"),
            reason=data.get("reason"),
        )


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))  # shared: json.dumps would build one per event


def encode_event(key: str, status: JobStatus) -> str:
    """A status change as one line of text (no newline): what launchers record and push to the event stream."""
    return _COMPACT_JSON.encode({"key": key, **status.to_dict()})


def decode_event(line: str) -> tuple[str, JobStatus]:
    data = json.loads(line)
    return str(data["key"]), JobStatus.from_dict(data)


MAX_RESULTS_BYTES = 1024 * 1024


def collect_results(folder: str, results_file: str) -> dict[str, float] | None:
    """The numeric top-level fields of a member's results JSON (at most 1 MB, inside its folder)."""
    folder_path = Path(folder).resolve()
    path = (folder_path / results_file).resolve()
    try:
        if not path.is_relative_to(folder_path) or not path.is_file() or path.stat().st_size > MAX_RESULTS_BYTES:
            return None
        data = json.loads(path.read_text())
    except (ValueError, OSError):
        return None
    if not isinstance(data, dict):
        return None
    return {
        key: value
        for key, value in data.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def run_hook(spec: dict[str, Any]) -> Any:
    """Call ``{"hook": "module:function", "kwargs": {...}}``."""
    return _hook_function(spec["hook"])(**spec.get("kwargs", {}))


@functools.lru_cache(maxsize=64)
def _hook_function(path: str):
    module_name, _, function_name = path.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


class Launcher(ABC):
    """Starts, observes and cancels jobs. Implementations: local, slurm, pbs, lsf."""

    name: str

    @abstractmethod
    def submit(self, jobs: list[JobSpec], *, group: str, concurrency: int | None = None) -> None:
        """Hand the jobs over and return at once; never waits for them to finish.
        Submitting a job that was already submitted must not run it twice."""

    @abstractmethod
    def status(self, keys: list[str]) -> dict[str, JobStatus]:
        """The state of each job, by key, in one batched query."""

    @abstractmethod
    def cancel(self, jobs: list[JobSpec], *, group: str) -> None:
        """Stop the jobs: queued ones never start, running ones are terminated."""

    def runner_alive(self) -> bool:
        """Whether a process of this launcher is still looking after the group's jobs."""
        return True

    def unstarted(self, jobs: list[JobSpec]) -> list[JobSpec]:
        """The jobs no process has started (safe to generate and submit again)."""
        return list(jobs)
