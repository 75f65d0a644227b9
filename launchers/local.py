"""Local launcher: members run as processes on this machine.

``submit`` forks a detached runner (its own session, adopted by init), so
restarting the web server or the Celery worker does not touch running members,
and the runner starts at once with everything the caller had imported. The
runner starts at most ``concurrency`` members at a time (running each job's
``prepare`` hook first, e.g. generating its directory), each in its own process
group, with stdout/stderr going to the member's ``.out``/``.err`` files.

The run's work directory holds the source of truth:

- ``runner.lock``: held (flock) by the runner working on the run. A second
  runner for the same run waits for it, so the run's concurrency limit holds
  and no job is claimed by two runners. The kernel releases it when the runner
  dies, however it dies.
- ``*.journal``: one append-only file per runner, named in submission order; a
  JSON line per change of a job's state (``{"key": ..., <JobStatus>}``): Queued
  when the runner claims it to prepare it, Running without a pid just before it
  starts, Running with its pid, then how it ended. A job with more than a Queued
  line is never started again, so a job submitted twice never runs twice; one
  that a dead runner only prepared is taken again by the next runner.
- ``cancelled``: the keys of cancelled jobs, a line each. A queued job never
  starts; the runner sends SIGTERM to a running job's group, then SIGKILL after
  a grace period.

Every journal line is also pushed to a Redis stream at once, batched into one
entry per round trip (``{"group": <the submission's group>, "events": "<line>\\n<line>..."}``).
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path

from .base import JobSpec, JobState, JobStatus, Launcher, LauncherError, decode_event, encode_event, run_hook

log = logging.getLogger("flotilla.launcher.local")

LOCK_FILE = "runner.lock"
CANCELLED_FILE = "cancelled"
JOURNAL_SUFFIX = ".journal"
# Server secrets and settings never reach members' environments.
PRIVATE_ENV = {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE"}
PRIVATE_ENV_PREFIXES = ("FLOTILLA_", "CELERY_")


def member_base_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = dict(os.environ if environ is None else environ)
    return {
        key: value
        for key, value in environ.items()
        if key not in PRIVATE_ENV and not key.startswith(PRIVATE_ENV_PREFIXES)
    }


class EventSink:
    """Pushes journal lines to a Redis stream; never lets Redis trouble stop a job.

    A sender thread sends whatever has accumulated as one stream entry, so
    starting members never waits for Redis and a burst costs a few round trips,
    not one per event; ``close()`` sends the rest."""

    LINGER = 0.01  # seconds between round trips in a burst

    def __init__(self, redis_url: str | None, stream: str, group: str):
        self.redis_url = redis_url
        self.stream = stream
        self.group = group
        self.queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.sender = threading.Thread(target=self._send_batches, daemon=True)
        if redis_url:
            self.sender.start()

    def emit(self, line: str) -> None:
        if self.redis_url:
            self.queue.put(line)

    def _send_batches(self) -> None:
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=2)
        done = False
        last_sent = 0.0
        while not done:
            batch = [self.queue.get()]
            # After a quiet spell an event goes at once; in a burst, at most one round trip per LINGER.
            time.sleep(max(0.0, last_sent + self.LINGER - time.monotonic()))
            while len(batch) < 5000:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            done = batch[-1] is None
            lines = [line for line in batch if line is not None]
            if not lines:
                continue
            last_sent = time.monotonic()
            try:
                client.xadd(self.stream, {"group": self.group, "events": "\n".join(lines)}, maxlen=100_000, approximate=True)
            except Exception as error:  # the journals stay the source of truth
                log.warning("could not push %d event(s): %s", len(lines), error)

    def close(self) -> None:
        if self.sender.is_alive():
            self.queue.put(None)
            self.sender.join(timeout=10)


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
    fd = os.open(work_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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


def _start_detached(main, log_path: Path) -> int:
    """Run ``main()`` in a forked process that belongs to nobody (its own session,
    adopted by init), with its output going to ``log_path``; returns its pid."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        status = 1
        try:
            os.close(read_end)
            os.setsid()
            grandchild = os.fork()
            if grandchild:
                os.write(write_end, str(grandchild).encode())
                status = 0
            else:
                os.close(write_end)
                _become_runner(log_path)
                main()
                status = 0
        except BaseException:
            traceback.print_exc()  # to the runner's log (or the caller's stderr, if it failed before)
        finally:
            os._exit(status)  # never return into the caller's code (a Celery task, a test...)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as pipe:
        pid = pipe.read()
    if not pid:
        raise LauncherError("could not start the local runner")
    return int(pid)


def _become_runner(log_path: Path) -> None:
    """Shed what the forked process inherited: signal handlers, output, open files."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    null = os.open(os.devnull, os.O_RDONLY)
    output = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the caller's sockets: never touched, never written
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # the caller's may be anything (e.g. a capture buffer)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.root.handlers = [handler]  # the caller's handlers are dropped, not closed: they are not ours
    logging.root.setLevel(logging.INFO)


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
    ):
        self.work_dir = Path(work_dir)
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
        runner = Runner(
            work_dir=self.work_dir,
            name=name,
            jobs=jobs,
            group=group,
            concurrency=concurrency or os.cpu_count() or 1,
            grace=self.grace,
            base_env=self.base_env,
            redis_url=self.redis_url,
            stream=self.stream,
        )
        try:
            pid = _start_detached(runner.run, self.work_dir / f"{name}.log")
        except OSError as error:
            raise LauncherError(f"could not start the local runner: {error}") from None
        (self.work_dir / f"{name}.pid").write_text(str(pid))

    # --- observing --------------------------------------------------------------

    def status(self, jobs: list[JobSpec]) -> dict[str, JobStatus]:
        """From the journals. A job that was running when its runner died, and
        whose process is gone, is Lost: nobody saw how it ended."""
        recorded = Journals.read(self.work_dir)
        runners = None
        result = {}
        for job in jobs:
            journal, status = recorded.get(job.key, ("", JobStatus(JobState.QUEUED)))
            if status.state == JobState.RUNNING and not (status.job_id and _pid_alive(int(status.job_id))):
                if runners is None:
                    runners = self._runner_pids()
                if journal not in runners:
                    status = JobStatus(JobState.LOST, job_id=status.job_id, started=status.started, ended=time.time())
            result[job.key] = status
        return result

    def unstarted(self, jobs: list[JobSpec]) -> list[JobSpec]:
        """Jobs that no live runner has and none ever started (safe to submit again)."""
        recorded = Journals.read(self.work_dir)
        runners = self._runner_pids() if any(s.state == JobState.QUEUED for _, s in recorded.values()) else {}
        result = []
        for job in jobs:
            journal, status = recorded.get(job.key, ("", None))
            if status is None or (status.state == JobState.QUEUED and journal not in runners):
                result.append(job)
        return result

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

    A preparer thread claims jobs in order and prepares them (the ``prepare``
    hook, the output files) a few jobs ahead of the workers, so that members
    start one after another without waiting for the disk; worker threads start
    the prepared jobs in the same order, at most ``concurrency`` at a time, and
    wait for them.

    A job's journal lines: Queued (claimed and being prepared: a later runner
    takes it again if this one dies), Running without a pid (being started: from
    here on it is never started again), Running with its pid, then its end."""

    def __init__(self, *, work_dir: Path, name: str, jobs: list[JobSpec], group: str, concurrency: int, grace: float,
                 base_env: dict[str, str], redis_url: str | None, stream: str):
        self.work_dir = work_dir
        self.name = name
        self.jobs = jobs
        self.group = group
        self.concurrency = max(1, concurrency)
        self.grace = grace
        self.base_env = base_env
        self.redis_url = redis_url
        self.stream = stream
        self.lock = threading.Lock()
        self.job_ready = threading.Condition(self.lock)  # for workers: a job was prepared, or the preparers ended
        self.room = threading.Condition(self.lock)  # for preparers: a prepared job was taken
        self.pending: collections.deque[JobSpec] = collections.deque()  # to prepare
        self.ready: collections.deque[tuple[JobSpec, int, int]] = collections.deque()  # prepared: (job, stdout fd, stderr fd)
        self.ready_limit = max(4, 2 * self.concurrency)
        self.preparing = True  # until the preparer has taken every job
        self.running: dict[str, tuple[JobSpec, subprocess.Popen]] = {}
        self.terminated: dict[str, float] = {}  # key -> when SIGTERM was sent
        self.cancel_requested = threading.Event()
        self.cancelled: set[str] = set()

    def record(self, job: JobSpec, status: JobStatus, *, push: bool = True) -> None:
        line = encode_event(job.key, status)
        os.write(self.journal, (line + "\n").encode())  # one write to an O_APPEND file: lines never interleave
        if push:
            self.events.emit(line)

    def refresh_cancelled(self) -> None:
        """Read the cancelled keys; jobs not started yet are cancelled at once."""
        cancelled = _read_cancelled(self.work_dir)
        with self.lock:
            self.cancelled = cancelled
            dropped = [job for job in self.pending if job.key in cancelled]
            dropped_ready = [entry for entry in self.ready if entry[0].key in cancelled]
            if dropped or dropped_ready:
                self.pending = collections.deque(job for job in self.pending if job.key not in cancelled)
                self.ready = collections.deque(entry for entry in self.ready if entry[0].key not in cancelled)
                self.room.notify_all()
                self.job_ready.notify_all()
        for job, *files in dropped_ready:
            for fd in files:
                os.close(fd)
            dropped.append(job)
        for job in dropped:
            self.record(job, JobStatus(JobState.CANCELLED, ended=time.time()))

    def preparer(self) -> None:
        try:
            while True:
                with self.lock:
                    while len(self.ready) >= self.ready_limit and self.pending:
                        self.room.wait()
                    if not self.pending:
                        return
                    job = self.pending.popleft()
                try:
                    if files := self.prepare(job):
                        with self.lock:
                            self.ready.append((job, *files))
                            self.job_ready.notify()
                except Exception:
                    log.exception("job %s", job.key)
        finally:
            with self.lock:
                self.preparing = False
                self.job_ready.notify_all()

    def prepare(self, job: JobSpec) -> tuple[int, int] | None:
        """Run the job's hook and open its output files; None if it failed (and was recorded so)."""
        self.record(job, JobStatus(JobState.QUEUED), push=False)  # claimed for preparation
        try:
            if job.prepare:
                run_hook(job.prepare)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            out = os.open(job.stdout, flags, 0o644)
            try:
                return out, os.open(job.stderr, flags, 0o644)
            except OSError:
                os.close(out)
                raise
        except Exception as error:  # any failure to prepare is the job's failure, told to the user
            now = time.time()
            self.record(job, JobStatus(JobState.FAILED, started=now, ended=now, error=f"could not prepare the job: {error}"))
            return None

    def take(self) -> tuple[JobSpec, int, int] | None:
        """The next prepared job and its output files (None once every job is taken)."""
        with self.lock:
            while not self.ready and (self.pending or self.preparing):
                self.job_ready.wait()
            if not self.ready:
                return None
            self.room.notify()
            return self.ready.popleft()

    def run_one(self, job: JobSpec, out: int, err: int) -> None:
        try:
            if job.key in self.cancelled:  # cancelled while it was being prepared
                self.record(job, JobStatus(JobState.CANCELLED, ended=time.time()))
                return
            started = time.time()
            self.record(job, JobStatus(JobState.RUNNING, started=started), push=False)  # never started twice from here on
            try:
                process = subprocess.Popen(
                    job.argv,
                    cwd=job.cwd,
                    env={**self.base_env, **job.env},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # its own process group, for cancel
                )
            except OSError as error:
                code = 127 if isinstance(error, FileNotFoundError) else 126
                os.write(err, f"flotilla: cannot run {job.argv[0]!r}: {error.strerror}\n".encode())
                self.record(job, JobStatus(JobState.FAILED, returncode=code, started=started, ended=time.time()))
                return
        finally:
            os.close(out)
            os.close(err)
        with self.lock:
            self.running[job.key] = (job, process)
            cancelled = job.key in self.cancelled
        self.record(job, JobStatus(JobState.RUNNING, job_id=str(process.pid), started=started))
        if cancelled:
            self.cancel_requested.set()  # cancelled while it was starting
        returncode = process.wait()
        ended = time.time()
        with self.lock:
            self.running.pop(job.key, None)
            cancelled = self.terminated.pop(job.key, None) is not None
        if cancelled:
            state = JobState.CANCELLED
        else:
            state = JobState.COMPLETED if returncode == 0 else JobState.FAILED
        self.record(
            job,
            JobStatus(
                state,
                job_id=str(process.pid),
                returncode=returncode if returncode >= 0 else None,
                signal=-returncode if returncode < 0 else None,
                started=started,
                ended=ended,
            ),
        )

    def worker(self) -> None:
        while (taken := self.take()) is not None:
            try:
                self.run_one(*taken)
            except Exception:
                log.exception("job %s", taken[0].key)

    def canceller(self) -> None:
        """Terminate the groups of cancelled running jobs; kill them after the grace period."""
        while True:
            # Woken by SIGUSR1; the file is read every second too, in case a signal came too early.
            self.cancel_requested.wait(timeout=1.0)
            self.cancel_requested.clear()
            self.refresh_cancelled()
            if not self.cancelled:
                continue
            now = time.time()
            with self.lock:
                running = list(self.running.values())
            for job, process in running:
                with self.lock:
                    sent = self.terminated.get(job.key)
                    if sent is None and job.key in self.cancelled:
                        self.terminated[job.key] = now
                try:
                    if sent is None and job.key in self.terminated:
                        os.killpg(process.pid, signal.SIGTERM)
                    elif sent is not None and now - sent >= self.grace:
                        os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def run(self) -> None:
        signal.signal(signal.SIGUSR1, lambda signum, frame: self.cancel_requested.set())
        self.run_lock = _lock_run(self.work_dir, wait=True)  # an earlier runner of this run finishes first
        recorded = Journals.read(self.work_dir)
        # Jobs claimed but never started by a runner that died are taken again.
        self.pending = collections.deque(
            job for job in self.jobs if job.key not in recorded or recorded[job.key][1].state == JobState.QUEUED
        )
        self.journal = os.open(self.work_dir / f"{self.name}{JOURNAL_SUFFIX}", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.events = EventSink(self.redis_url, self.stream, self.group)
        self.refresh_cancelled()
        threading.Thread(target=self.canceller, daemon=True).start()
        threads = [threading.Thread(target=self.preparer)]
        threads += [threading.Thread(target=self.worker) for _ in range(min(self.concurrency, len(self.pending)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.events.close()
