"""Local launcher: members run as processes on this machine.

``submit`` starts a detached runner (its own session, adopted by init), so
restarting the web server or the Celery worker does not touch running members.
The runner is a fresh program with an empty environment (``runner_main.py``),
never a fork of its caller: a member can read its parent's environment and
memory. It starts at most ``concurrency`` members at a time (running each job's
``prepare`` hook first, e.g. generating its directory), each in its own process
group, with stdout/stderr going to the member's ``.out``/``.err`` files; no
file a member writes may grow past ``max_output_bytes``. It is the members'
child subreaper: when a member's main process ends, whatever it left running
(its process group, and orphans that carry its ``FLOTILLA_MEMBER`` marker) is
killed, and the member's end says so.

The run's work directory holds the source of truth:

- ``runner.lock``: held (flock) by the runner working on the run. A second
  runner for the same run waits for it, so the run's concurrency limit holds
  and no job is claimed by two runners. The kernel releases it when the runner
  dies, however it dies.
- ``*.journal``: one append-only file per runner, named in submission order; a
  JSON line per change of a job's state (``{"key": ..., <JobStatus>}``): Running
  without a pid just before it starts, Running with its pid, then how it ended
  (or why it could not start). A job with a line is never started again, so a
  job submitted twice never runs twice; one that a dead runner only prepared is
  taken again by the next runner. (Journals of earlier versions also have a
  Queued line per job a runner claimed: it counts as no line.)
- ``cancelled``: the keys of cancelled jobs, a line each. A queued job never
  starts; the runner sends SIGTERM to a running job's group, then SIGKILL after
  a grace period.

The lines that say a job started (with its pid) or ended are also pushed to a
Redis stream at once (by the runner, or by a relay for a runner of a user's
account, which gets no Redis credentials: ``PipeSink``), those of one wake-up of the runner as one entry
(``{"group": <the submission's group>, "events": "<line>\\n<line>..."}``).
The runner's last entry also has ``"last": "1"`` and is followed by a push to
the list ``wake_key(stream)``, on which a monitor waiting for a burst to end
blocks.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import json
import logging
import os
import resource
import select
import signal
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from .base import (
    JobSpec, JobState, JobStatus, Launcher, LauncherError, collect_results, decode_event, encode_event, run_hook,
)
from .resp import SendOnlyConnection, pack

log = logging.getLogger("flotilla.launcher.local")

LOCK_FILE = "runner.lock"
CANCELLED_FILE = "cancelled"
JOURNAL_SUFFIX = ".journal"
JOB_UNSTARTED = JobStatus(JobState.QUEUED)  # what counts for a job no journal line records (read only)
# Server secrets and settings never reach members' environments.
PRIVATE_ENV = {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE"}
PRIVATE_ENV_PREFIXES = ("FLOTILLA_", "CELERY_")
# Every member process carries its key here, so that the runner can tell whose
# orphans are whose (a child that started a session of its own leaves the group).
MEMBER_MARKER = "FLOTILLA_MEMBER"


def wake_key(stream: str) -> str:
    """The list a sender pushes to after its last entry on ``stream`` (at most one element)."""
    return f"{stream}:wake"


def member_base_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = dict(os.environ if environ is None else environ)
    return {
        key: value
        for key, value in environ.items()
        if key not in PRIVATE_ENV and not key.startswith(PRIVATE_ENV_PREFIXES)
    }


class EventSink:
    """Pushes journal lines to a Redis stream; never lets Redis trouble stop a job.

    The owner emits lines as it records them and calls ``send()`` before it
    waits: what it recorded while awake goes as one stream entry (XADD), at
    once, and nothing wakes it just to send. ``close()`` sends the last entry.
    The connection is put in CLIENT REPLY OFF mode on every (re)connect, so an
    entry costs one send and no wait for a reply: the runner never waits for a
    Redis server that competes with the members for the CPUs. After a failure,
    pushing pauses for a while: the journals stay the source of truth, and the
    monitor reconciles from them."""

    PAUSE_AFTER_ERROR = 5.0

    def __init__(self, redis_url: str | None, stream: str, group: str):
        self.connection = SendOnlyConnection(redis_url) if redis_url else None
        self.command_head = [b"XADD", stream.encode(), b"MAXLEN", b"~", b"100000", b"*", b"group", group.encode(), b"events"]
        self.wake_key = wake_key(stream).encode()
        self.lines: list[str] = []
        self.paused_until = 0.0  # monotonic time: after a failure, lines wait until then

    def emit(self, line: str) -> None:
        if self.connection is not None:
            self.lines.append(line)

    def send(self, *, last: bool = False) -> None:
        """Push the buffered lines as one entry; ``last``: the sender's last entry,
        followed by a wake-up for a monitor that waits for it."""
        if self.connection is None or not (self.lines or last) or (not last and time.monotonic() < self.paused_until):
            return
        lines, self.lines = self.lines, []
        commands = [pack([*self.command_head, "\n".join(lines).encode(), *((b"last", b"1") if last else ())])]
        if last:
            commands += [pack([b"LPUSH", self.wake_key, b"1"]), pack([b"LTRIM", self.wake_key, b"0", b"0"])]
        try:
            self.connection.send(commands)
        except Exception as error:
            log.warning("could not push %d event(s): %s", len(lines), error)
            self.connection.disconnect()
            self.paused_until = time.monotonic() + self.PAUSE_AFTER_ERROR

    def close(self) -> None:
        """Send what is left as the sender's last entry, and disconnect."""
        if self.connection is not None:
            self.send(last=True)
            self.connection.disconnect()


class PipeSink:
    """Writes journal lines to a pipe, for a relay (``launchers.relay``) that pushes
    them to Redis: a runner working as another account than the server's must not
    hold the server's Redis credentials (its members could read them from its
    memory). Never blocks: a full pipe keeps the lines for the next send, a closed
    one (the relay died) ends sending; the journals stay the source of truth."""

    def __init__(self, fd: int):
        self.fd: int | None = fd
        os.set_blocking(fd, False)
        self.lines: list[str] = []
        self.pending = b""

    def emit(self, line: str) -> None:
        if self.fd is not None:
            self.lines.append(line)

    def send(self) -> None:
        if self.fd is None:
            return
        if self.lines:
            self.pending += ("\n".join(self.lines) + "\n").encode()
            self.lines = []
        while self.pending:
            try:
                written = os.write(self.fd, self.pending)
            except BlockingIOError:
                return
            except OSError:
                self.fd, self.pending = None, b""
                return
            self.pending = self.pending[written:]

    def close(self) -> None:
        if self.fd is None:
            return
        self.send()
        deadline = time.monotonic() + 5.0  # the relay is behind: give it a moment, then go
        while self.fd is not None and self.pending and time.monotonic() < deadline:
            select.select([], [self.fd], [], max(0.0, deadline - time.monotonic()))
            self.send()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Journals:
    """Reads a run's journals incrementally: each call parses only what was appended."""

    _cache: collections.OrderedDict[str, tuple[int, dict[str, JobStatus]]] = collections.OrderedDict()
    _lock = threading.Lock()
    CACHED = 256  # journals remembered, most recently read first

    @classmethod
    def read(cls, work_dir: Path) -> dict[str, tuple[str, JobStatus]]:
        """Every job's latest recorded status, by key, with the name of the journal
        that records it (its runner's name)."""
        statuses: dict[str, tuple[str, JobStatus]] = {}
        if not work_dir.is_dir():
            return statuses
        for path in sorted(work_dir.glob(f"*{JOURNAL_SUFFIX}")):  # later runners' lines win
            statuses.update((key, (path.stem, status)) for key, status in cls._read_one(str(path)).items())
        return statuses

    @classmethod
    def _read_one(cls, path: str) -> dict[str, JobStatus]:
        with cls._lock:
            offset, statuses = cls._cache.pop(path, (0, {}))
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
            complete = data.rfind(b"\n") + 1  # a line being written is read next time
            for line in data[:complete].splitlines():
                try:
                    key, status = decode_event(line.decode())
                except (ValueError, KeyError):
                    log.warning("%s: ignoring a malformed line", path)
                    continue
                statuses[key] = status
            cls._cache[path] = (offset + complete, statuses)
            while len(cls._cache) > cls.CACHED:
                cls._cache.popitem(last=False)
            return dict(statuses)


def _lock_run(work_dir: Path, *, wait: bool) -> int | None:
    """The run's lock as an open fd (closing it releases the lock), or None if
    another process holds it and ``wait`` is false."""
    fd = os.open(work_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _read_cancelled(work_dir: Path) -> set[str]:
    try:
        return set((work_dir / CANCELLED_FILE).read_text().split())
    except FileNotFoundError:
        return set()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited already
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _executable(name: str, env: dict[str, str]) -> str:
    """The program to run for argv[0]: a name without a slash is looked up on the
    member's PATH (as Popen and execvp do), anything else is a path."""
    if os.sep in name:
        return name
    found = shutil.which(name, path=os.pathsep.join(os.get_exec_path(env)))
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    return found


class MemberFolderGone(Exception):
    """The member's folder was deleted between its preparation and its start."""


def _open_output(path: str) -> int:
    """A member's stdout or stderr, for appending; never through a symbolic link
    (an attached file with the output's name must not receive the member's output)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"its output file {path} is a symbolic link (an attached file has its name)") from None
        raise


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_members(pgid: int) -> set[int]:
    """The processes of a process group (a scan of /proc: only when the group outlived its leader)."""
    members = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.add(int(entry.name))
    return members


def _marker(pid: int) -> str | None:
    """The member key a process inherited in its environment, if it still has it."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read()
    except OSError:
        return None
    prefix = MEMBER_MARKER.encode() + b"="
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode(errors="replace")
    return None


def _reap_if_exited(pid: int) -> bool:
    """Reap a child of the runner if it has exited; whether it had."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not _pid_alive(pid)
    return done != 0


RUNNER_PROGRAM = Path(__file__).with_name("runner_main.py")
PR_SET_CHILD_SUBREAPER = 36


def _start_runner(config: dict, log_path: Path, pid_path: Path) -> int:
    """Start a runner as a fresh program (``runner_main.py``), not a fork of the
    caller: a member can read its parent's environment and memory, and the
    caller (a Celery worker) holds the server's secrets in both. The runner gets
    an empty environment and its configuration on stdin: its jobs, and the
    Redis URL it pushes events to. It detaches (its own session, adopted by
    init) and the launching process writes its pid file before this returns,
    so nobody ever sees its work without it (a member it started, say, taken
    for an orphan). Returns the runner's pid."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(RUNNER_PROGRAM), str(pid_path)],  # the standard library is enough
            stdin=subprocess.PIPE,
            stdout=None if config.get("events_to_stdout") else subprocess.DEVNULL,  # a relay reads them there
            stderr=log_fd, env={}, close_fds=True,
        )
    finally:
        os.close(log_fd)
    process.communicate(json.dumps(config).encode(), timeout=60)
    try:
        pid = int(pid_path.read_text()) if process.returncode == 0 else None
    except (OSError, ValueError):
        pid = None
    if pid is None:
        raise LauncherError(f"could not start the local runner (see {log_path})")
    return pid


def runner_main(config: dict) -> None:
    """``runner_main.py``, once detached: run the jobs of ``config``. Everything the
    runner and its members create is readable by their account only (the program set
    the umask)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.root.handlers = [handler]
    logging.root.setLevel(logging.INFO)
    _become_subreaper()
    config["jobs"] = [JobSpec(**job) for job in config["jobs"]]
    config["work_dir"] = Path(config["work_dir"])
    Runner(**config).run()


def _become_subreaper() -> None:
    """Orphans of members (a ``sleep &`` left behind, a child started with
    ``setsid``) become the runner's children instead of init's, so it can end them."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("could not become a child subreaper: %s", os.strerror(ctypes.get_errno()))


class LocalLauncher(Launcher):
    name = "local"

    def __init__(
        self,
        *,
        work_dir: str | os.PathLike,
        redis_url: str | None = None,
        stream: str = "flotilla:events",
        grace: float = 10.0,
        base_env: dict[str, str] | None = None,
        max_output_bytes: int | None = None,
    ):
        self.work_dir = Path(work_dir)
        self.max_output_bytes = max_output_bytes
        self.events_to_stdout = False  # the agent's submit: a relay reads the runner's events on its stdout
        self.redis_url = redis_url
        self.stream = stream
        self.grace = grace
        self.base_env = member_base_env() if base_env is None else base_env

    # --- runners --------------------------------------------------------------

    def _runner_pids(self) -> dict[str, int]:
        """The live runners of the run (working, or waiting for their turn), by name."""
        pids = {}
        for pid_file in self.work_dir.glob("runner-*.pid"):
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                continue
            if _pid_alive(pid):
                pids[pid_file.stem] = pid
        return pids

    def runner_alive(self) -> bool:
        return bool(self._runner_pids())

    def submit(self, jobs: list[JobSpec], *, group: str, concurrency: int | None = None) -> None:
        if not jobs:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # Named in submission order: a job a dead runner left Queued is recorded again by a later one.
        name = f"runner-{time.time_ns():016x}-{uuid.uuid4().hex[:6]}"
        config = {
            "work_dir": str(self.work_dir),
            "name": name,
            "jobs": [vars(job) for job in jobs],  # (dataclasses.asdict deep-copies: 30x slower for 1000 jobs)
            "group": group,
            "concurrency": concurrency or os.cpu_count() or 1,
            "grace": self.grace,
            "max_output_bytes": self.max_output_bytes,
            "base_env": self.base_env,
            "redis_url": self.redis_url,
            "stream": self.stream,
            "events_to_stdout": self.events_to_stdout,
        }
        try:
            _start_runner(config, self.work_dir / f"{name}.log", self.work_dir / f"{name}.pid")
        except (OSError, subprocess.SubprocessError) as error:
            raise LauncherError(f"could not start the local runner: {error}") from None

    # --- observing --------------------------------------------------------------

    def status(self, keys: list[str]) -> dict[str, JobStatus]:
        """From the journals. A job that was running when its runner died, and
        whose process is gone, is Lost: nobody saw how it ended."""
        recorded = Journals.read(self.work_dir)
        runners = None
        result = {}
        for key in keys:
            journal, status = recorded.get(key, ("", JobStatus(JobState.QUEUED)))
            if status.state == JobState.RUNNING and not (status.job_id and _pid_alive(int(status.job_id))):
                if runners is None:
                    runners = self._runner_pids()
                if journal not in runners:
                    status = JobStatus(JobState.LOST, job_id=status.job_id, started=status.started, ended=time.time())
            result[key] = status
        return result

    def unstarted(self, jobs: list[JobSpec]) -> list[JobSpec]:
        """Jobs no runner started (safe to submit again: a runner waits for the
        run's earlier runners, then skips what they started)."""
        recorded = Journals.read(self.work_dir)
        return [job for job in jobs if recorded.get(job.key, ("", JOB_UNSTARTED))[1].state == JobState.QUEUED]

    # --- cancelling ----------------------------------------------------------------

    def cancel(self, jobs: list[JobSpec], *, group: str) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.work_dir / CANCELLED_FILE, "a") as out:
            out.write("".join(f"{job.key}\n" for job in jobs))
        lock = _lock_run(self.work_dir, wait=False)
        if lock is None:  # a runner is at work: it stops them (SIGUSR1 = read the cancelled keys)
            for pid in self._runner_pids().values():
                try:
                    os.kill(pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass
            return
        try:  # no runner at work: queued jobs are cancelled here, orphaned ones terminated
            recorded = Journals.read(self.work_dir)
            events = EventSink(self.redis_url, self.stream, group)
            with open(self.work_dir / f"cancel-{uuid.uuid4().hex[:12]}{JOURNAL_SUFFIX}", "a") as journal:
                for job in jobs:
                    _, status = recorded.get(job.key, ("", None))
                    if status is None:
                        line = encode_event(job.key, JobStatus(JobState.CANCELLED, ended=time.time()))
                        journal.write(line + "\n")
                        events.emit(line)
                    elif status.state == JobState.RUNNING and status.job_id:
                        try:
                            os.killpg(int(status.job_id), signal.SIGTERM)
                        except ProcessLookupError:
                            pass
            events.close()
        finally:
            os.close(lock)


class Runner:
    """The detached process that runs one submission's jobs; see the module docstring.

    One thread does the work, so that nothing waits for a lock: it starts
    prepared jobs in order while fewer than ``concurrency`` run, prepares the
    next few jobs (the ``prepare`` hook, the output files) while members run,
    and waits on the members' pidfds, on a pipe that SIGUSR1 (cancel) writes to
    and on the next grace-period deadline; it pushes events before each wait.

    A job's journal lines: Running without a pid (being started: from here on it
    is never started again), Running with its pid, then its end. A job this
    runner prepared but never started has none: a later runner takes it again."""

    CANCEL_CHECK = 1.0  # seconds: the cancelled keys are read this often even without a signal

    def __init__(self, *, work_dir: Path, name: str, jobs: list[JobSpec], group: str, concurrency: int, grace: float,
                 base_env: dict[str, str], redis_url: str | None, stream: str, max_output_bytes: int | None = None,
                 events_to_stdout: bool = False):
        self.work_dir = work_dir
        self.max_output_bytes = max_output_bytes
        self.events_to_stdout = events_to_stdout
        self.name = name
        self.jobs = jobs
        self.group = group
        self.concurrency = max(1, concurrency)
        self.grace = grace
        self.base_env = base_env
        self.redis_url = redis_url
        self.stream = stream
        self.pending: collections.deque[JobSpec] = collections.deque()  # to prepare
        self.ready: collections.deque[tuple[JobSpec, int, int]] = collections.deque()  # prepared: (job, stdout fd, stderr fd)
        self.ready_limit = max(4, 2 * self.concurrency)
        self.running: dict[int, tuple[JobSpec, float, int]] = {}  # pidfd -> (job, started, pid)
        self.terminated: dict[str, float] = {}  # key -> when SIGTERM was sent
        self.killed: set[str] = set()  # keys whose group got SIGKILL after the grace period
        self.cancelled: set[str] = set()

    def record(self, job: JobSpec, status: JobStatus, *, push: bool = True) -> None:
        line = encode_event(job.key, status)
        os.write(self.journal, (line + "\n").encode())  # one write to an O_APPEND file
        if push:
            self.events.emit(line)

    # --- preparing and starting -------------------------------------------------------

    def prepare(self, job: JobSpec) -> bool:
        """Run the job's hook and open its output files; queue it to start, or record its failure."""
        try:
            if job.prepare:
                run_hook(job.prepare)
            out = _open_output(job.stdout)
            try:
                err = _open_output(job.stderr)
            except OSError:
                os.close(out)
                raise
        except Exception as error:  # any failure to prepare is the job's failure, told to the user
            now = time.time()
            self.record(job, JobStatus(JobState.FAILED, started=now, ended=now, error=f"could not prepare the job: {error}"))
            return False
        self.ready.append((job, out, err))
        return True

    def start(self, job: JobSpec, out: int, err: int) -> None:
        try:
            started = time.time()
            self.record(job, JobStatus(JobState.RUNNING, started=started), push=False)  # never started twice from here on
            try:
                pid = self.spawn(job, out, err)
            except MemberFolderGone:
                message = f"its folder {job.cwd} was deleted before it could start"
                self.record(job, JobStatus(JobState.FAILED, started=started, ended=time.time(), error=message))
                return
            except OSError as error:
                code = 127 if isinstance(error, FileNotFoundError) else 126
                message = f"cannot run {job.argv[0]!r} in {job.cwd}: {error.strerror}"
                os.write(err, f"flotilla: {message}\n".encode())
                self.record(job, JobStatus(JobState.FAILED, returncode=code, started=started, ended=time.time(), error=message))
                return
        finally:
            os.close(out)
            os.close(err)
        pidfd = os.pidfd_open(pid)  # readable once the process has exited (even if it already has)
        self.running[pidfd] = (job, started, pid)
        self.epoll.register(pidfd, select.EPOLLIN)
        self.record(job, JobStatus(JobState.RUNNING, job_id=str(pid), started=started))

    def spawn(self, job: JobSpec, out: int, err: int) -> int:
        """Start the job's process in a process group of its own (for cancel); returns
        its pid. posix_spawn costs a fraction of Popen's CPU, which counts when
        members are short. Every fd the runner opens is close-on-exec (PEP 446), so
        the member inherits only stdin (/dev/null), stdout and stderr.

        Not a session of its own: with autogroup scheduling (Linux's default) a new
        session is a new scheduling group, which makes short members ~3% slower,
        and would give each member as much CPU as the whole web server. Members
        share the runner's session, which has no terminal."""
        env = {**self.base_env, **job.env, MEMBER_MARKER: job.key}
        try:
            os.chdir(job.cwd)  # posix_spawn has no chdir action in Python 3.11
        except FileNotFoundError:
            raise MemberFolderGone from None
        if self.max_output_bytes:  # inherited at spawn: no file the member writes may grow past it
            # (the soft limit only: the runner could not raise a hard one back)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_output_bytes, self.fsize_limit[1]))
        try:
            return os.posix_spawn(
                _executable(job.argv[0], env),
                job.argv,
                env,
                file_actions=[(os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, err, 2)],  # stdin: the runner's /dev/null
                setpgroup=0,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # ignored by Python, default for any program (as Popen does)
            )
        finally:
            if self.max_output_bytes:
                resource.setrlimit(resource.RLIMIT_FSIZE, self.fsize_limit)
            os.fchdir(self.home)

    def reap(self, pidfd: int) -> None:
        job, started, pid = self.running.pop(pidfd)
        self.epoll.unregister(pidfd)
        os.close(pidfd)
        _, wait_status = os.waitpid(pid, 0)
        # Its group id stays reserved while any process of the group lives, so one
        # killpg(pgid, 0) tells whether it left anything behind.
        leftovers = self.end_leftovers(pid, job.key)
        returncode = os.waitstatus_to_exitcode(wait_status)
        ended = time.time()
        notes = []
        if returncode == -signal.SIGXFSZ and self.max_output_bytes:
            notes.append(f"stopped: it wrote a file past the output limit of {self.max_output_bytes:,} bytes")
        if leftovers:
            notes.append(f"{leftovers} process{'es' if leftovers > 1 else ''} it left running "
                         f"{'were' if leftovers > 1 else 'was'} killed")
        self.killed.discard(job.key)
        if self.terminated.pop(job.key, None) is not None:
            state = JobState.CANCELLED
        else:
            state = JobState.COMPLETED if returncode == 0 else JobState.FAILED
        results = collect_results(job.cwd, job.results_file) if state == JobState.COMPLETED and job.results_file else None
        self.record(
            job,
            JobStatus(
                state,
                results=results,
                job_id=str(pid),
                returncode=returncode if returncode >= 0 else None,
                signal=-returncode if returncode < 0 else None,
                started=started,
                ended=ended,
                error="; ".join(notes) or None,
            ),
        )

    # --- what members leave behind ------------------------------------------------------

    def children(self) -> set[int]:
        """The runner's child processes (its members, and orphans it inherited as subreaper)."""
        try:
            with open(f"/proc/self/task/{os.getpid()}/children") as handle:
                return {int(pid) for pid in handle.read().split()}
        except OSError:
            return set()

    def orphans(self) -> set[int]:
        return self.children() - {pid for _, _, pid in self.running.values()}

    def reap_orphans(self) -> None:
        """Orphans that exited on their own are reaped (they would stay zombies)."""
        for pid in self.orphans():
            _reap_if_exited(pid)

    def end_leftovers(self, pgid: int, key: str | None) -> int:
        """SIGKILL what a member left running when its main process ended: its
        process group, and orphans that carry its marker (a child that started a
        session of its own); ``key`` None: every orphan. Returns how many were
        killed. Bounded in time: a process stuck in the kernel is left to init."""
        killed: set[int] = set()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            found = _group_members(pgid) if pgid and _group_exists(pgid) else set()
            for pid in self.orphans():
                if key is None or _marker(pid) == key:
                    found.add(pid)
            alive = {pid for pid in found if not _reap_if_exited(pid) and _pid_alive(pid)}
            if not alive:
                break
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed |= alive
            time.sleep(0.001)  # let the kernel deliver; orphans of the killed come to the runner
        for pid in self.orphans():
            _reap_if_exited(pid)
        return len(killed)

    # --- cancelling -------------------------------------------------------------------

    def refresh_cancelled(self) -> None:
        """Read the cancelled keys: jobs not started yet are cancelled at once, running ones terminated."""
        self.cancelled = _read_cancelled(self.work_dir)
        if not self.cancelled:
            return
        for job in [job for job in self.pending if job.key in self.cancelled]:
            self.pending.remove(job)
            self.record(job, JobStatus(JobState.CANCELLED, ended=time.time()))
        for entry in [entry for entry in self.ready if entry[0].key in self.cancelled]:
            self.ready.remove(entry)
            job, out, err = entry
            os.close(out)
            os.close(err)
            self.record(job, JobStatus(JobState.CANCELLED, ended=time.time()))
        for job, _, pid in list(self.running.values()):
            if job.key in self.cancelled and job.key not in self.terminated:
                self.terminate(job, pid)

    def terminate(self, job: JobSpec, pid: int) -> None:
        self.terminated[job.key] = time.monotonic()
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def escalate(self) -> float | None:
        """SIGKILL the groups that outlived their grace period; seconds until the next deadline."""
        now = time.monotonic()
        next_deadline = None
        for job, _, pid in self.running.values():
            sent = self.terminated.get(job.key)
            if sent is None or job.key in self.killed:
                continue
            if now - sent >= self.grace:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.killed.add(job.key)
            else:
                left = sent + self.grace - now
                next_deadline = left if next_deadline is None else min(next_deadline, left)
        return next_deadline

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        self.home = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the caller's folder: relative paths keep their meaning
        self.fsize_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)  # its byte on the pipe wakes the loop
        self.run_lock = _lock_run(self.work_dir, wait=True)  # an earlier runner of this run finishes first
        recorded = Journals.read(self.work_dir)
        # Jobs that no earlier runner started (one that died may have prepared some).
        self.pending = collections.deque(
            job for job in self.jobs if recorded.get(job.key, ("", JOB_UNSTARTED))[1].state == JobState.QUEUED
        )
        self.journal = os.open(self.work_dir / f"{self.name}{JOURNAL_SUFFIX}", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # Straight to Redis, or to a relay that holds the credentials (a runner of a user's account).
        self.events = PipeSink(1) if self.events_to_stdout else EventSink(self.redis_url, self.stream, self.group)
        self.epoll = select.epoll()  # the selectors module's bookkeeping costs more than the calls
        self.epoll.register(wake_read, select.EPOLLIN)
        self.refresh_cancelled()
        last_check = time.monotonic()
        while self.pending or self.ready or self.running:
            if time.monotonic() - last_check >= self.CANCEL_CHECK:
                self.refresh_cancelled()
                self.reap_orphans()
                last_check = time.monotonic()
            while len(self.running) < self.concurrency and (self.ready or self.pending):
                if self.ready or self.prepare(self.pending.popleft()):
                    self.start(*self.ready.popleft())
            if self.pending and len(self.ready) < self.ready_limit and len(self.running) >= self.concurrency:
                self.prepare(self.pending.popleft())
            # Prepare ahead while members run, but look for exits between two preparations.
            timeout = 0 if self.pending and len(self.ready) < self.ready_limit else self.CANCEL_CHECK
            deadline = self.escalate()
            if deadline is not None:
                timeout = min(timeout, deadline)
            self.events.send()  # what this wake-up recorded, after the starts: a freed slot never waits for Redis
            for fd, _ in self.epoll.poll(timeout):
                if fd == wake_read:
                    os.read(wake_read, 4096)  # the signals' bytes
                    last_check = 0.0  # a cancel: read the keys now
                else:
                    self.reap(fd)
        stray = self.end_leftovers(0, None)  # orphans no member could be told from (their environment was cleared)
        if stray:
            log.warning("killed %d process(es) that members left running", stray)
        self.events.close()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        members = resource.getrusage(resource.RUSAGE_CHILDREN)
        log.info("ran %d jobs; runner cpu_s=%.3f (user %.3f, system %.3f); members cpu_s=%.3f",
                 len(self.jobs), usage.ru_utime + usage.ru_stime, usage.ru_utime, usage.ru_stime,
                 members.ru_utime + members.ru_stime)
