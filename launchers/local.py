"""Local launcher: members run as processes on this machine.

``submit`` writes a runner spec and starts a detached runner process
(``python -m launchers.local <spec>``) in its own session, so restarting the
web server or the Celery worker does not touch running members. The runner
starts at most ``concurrency`` members at a time (running each job's
``prepare`` hook first, e.g. generating its directory), each in its own process
group, with stdout/stderr going to the member's ``.out``/``.err`` files.

For every job it writes a status file (pid, start, end, exit code or signal)
that is never deleted, and pushes an event to a Redis stream at once when a
member starts or exits. A job is claimed by creating its status file
exclusively before it starts, so a job submitted twice never runs twice.

Cancel writes ``<status>.cancel``: a queued job never starts; the runner sends
SIGTERM to a running job's group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from .base import JobSpec, JobState, JobStatus, Launcher, LauncherError, read_status, run_hook, write_json_atomic

log = logging.getLogger("flotilla.launcher.local")

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
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
    """Pushes job events to a Redis stream; never lets Redis trouble stop a job.

    With ``background``, events go through a queue to a sender thread that sends
    whatever has accumulated in one pipelined round trip, so starting members
    never waits for Redis; ``close()`` sends the rest."""

    def __init__(self, redis_url: str | None, stream: str, *, background: bool = False):
        self.stream = stream
        self.client = None
        self.queue: queue.SimpleQueue | None = None
        if redis_url:
            import redis

            self.client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        if self.client is not None and background:
            self.queue = queue.SimpleQueue()
            self.sender = threading.Thread(target=self._send_batches, daemon=True)
            self.sender.start()

    def emit(self, key: str, group: str, status: JobStatus) -> None:
        if self.client is None:
            return
        fields = {"key": key, "group": group, "status": json.dumps(status.to_dict())}
        if self.queue is not None:
            self.queue.put(fields)
        else:
            self._send([fields])

    def _send(self, batch: list[dict]) -> None:
        try:
            pipeline = self.client.pipeline(transaction=False)
            for fields in batch:
                pipeline.xadd(self.stream, fields, maxlen=200_000, approximate=True)
            pipeline.execute()
        except Exception as error:  # the status files stay the source of truth
            log.warning("could not push %d event(s): %s", len(batch), error)

    def _send_batches(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < 1000:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            done = batch[-1] is None
            batch = [fields for fields in batch if fields is not None]
            if batch:
                self._send(batch)
            if done:
                return

    def close(self) -> None:
        if self.queue is not None:
            self.queue.put(None)
            self.sender.join(timeout=10)


def _claim(job: JobSpec, status: JobStatus) -> bool:
    """Create the job's status file, exclusively: whoever creates it owns the job."""
    try:
        fd = os.open(job.status_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        json.dump(status.to_dict(), out)
    return True


def _cancelled(job: JobSpec) -> bool:
    return os.path.exists(job.status_file + ".cancel")


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
        python: str = sys.executable,
    ):
        self.work_dir = Path(work_dir)
        self.redis_url = redis_url
        self.stream = stream
        self.grace = grace
        self.base_env = member_base_env() if base_env is None else base_env
        self.python = python

    # --- runners --------------------------------------------------------------

    def _runner_pids(self) -> list[int]:
        pids = []
        for pid_file in self.work_dir.glob("runner-*.pid"):
            try:
                pid = int(pid_file.read_text())
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if pid_file.stem.encode() in handle.read() and _pid_alive(pid):
                        pids.append(pid)
            except (OSError, ValueError):
                continue
        return pids

    def runner_alive(self) -> bool:
        return bool(self._runner_pids())

    def submit(self, jobs: list[JobSpec], *, group: str, concurrency: int | None = None) -> None:
        if not jobs:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        name = f"runner-{uuid.uuid4().hex[:12]}"
        spec = {
            "group": group,
            "concurrency": concurrency or os.cpu_count() or 1,
            "grace": self.grace,
            "redis_url": self.redis_url,
            "stream": self.stream,
            "base_env": self.base_env,
            "jobs": [job.to_dict() for job in jobs],
        }
        spec_path = self.work_dir / f"{name}.json"
        write_json_atomic(spec_path, spec)
        env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
        try:
            with open(self.work_dir / f"{name}.log", "ab") as runner_log:
                # Own session: Ctrl-C or a restart of the caller does not reach members.
                subprocess.Popen(
                    [self.python, "-m", "launchers.local", str(spec_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=runner_log,
                    stderr=runner_log,
                    env=env,
                    cwd=PACKAGE_ROOT,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as error:
            raise LauncherError(f"could not start the local runner: {error}") from None

    # --- observing --------------------------------------------------------------

    def status(self, jobs: list[JobSpec]) -> dict[str, JobStatus]:
        """From the status files. A job that was running when its runner died,
        and whose process is gone, is Lost: nobody saw how it ended."""
        runner_alive = None
        result = {}
        for job in jobs:
            status = read_status(job.status_file)
            if status is None and os.path.exists(job.status_file):
                # Claimed, but unreadable: being rewritten, or its runner died mid-write.
                if runner_alive is None:
                    runner_alive = self.runner_alive()
                status = JobStatus(JobState.QUEUED if runner_alive else JobState.LOST, ended=time.time())
            elif status is None:
                status = JobStatus(JobState.QUEUED)
            elif status.state == JobState.RUNNING and not (status.job_id and _pid_alive(int(status.job_id))):
                if runner_alive is None:
                    runner_alive = self.runner_alive()
                if not runner_alive:
                    status = JobStatus(JobState.LOST, job_id=status.job_id, started=status.started, ended=time.time())
            result[job.key] = status
        return result

    def unstarted(self, jobs: list[JobSpec]) -> list[JobSpec]:
        """Jobs never claimed by any runner (to resubmit if their runner died)."""
        return [job for job in jobs if not os.path.exists(job.status_file)]

    # --- cancelling ----------------------------------------------------------------

    def cancel(self, jobs: list[JobSpec], *, group: str) -> None:
        events = EventSink(self.redis_url, self.stream)
        running = []
        for job in jobs:
            Path(job.status_file + ".cancel").touch()
            status = JobStatus(JobState.CANCELLED, ended=time.time())
            if _claim(job, status):  # never started: it never will
                events.emit(job.key, group, status)
            else:
                running.append(job)
        if not running:
            return
        runners = self._runner_pids()
        for pid in runners:
            try:
                os.kill(pid, signal.SIGUSR1)  # the runner terminates, then kills after the grace period
            except ProcessLookupError:
                pass
        if not runners:  # nobody to escalate: terminate the groups directly
            for job in running:
                status = read_status(job.status_file)
                if status and status.state == JobState.RUNNING:
                    try:
                        os.killpg(int(status.job_id), signal.SIGTERM)
                    except ProcessLookupError:
                        pass


class Runner:
    """The detached process that runs one spec's jobs; see the module docstring."""

    def __init__(self, spec_path: Path):
        spec = json.loads(spec_path.read_text())
        self.name = spec_path.stem
        self.pid_file = spec_path.with_suffix(".pid")
        self.group = spec["group"]
        self.concurrency = max(1, int(spec["concurrency"]))
        self.grace = float(spec["grace"])
        self.base_env = spec["base_env"]
        self.jobs = [JobSpec(**job) for job in spec["jobs"]]
        self.events = EventSink(spec["redis_url"], spec["stream"], background=True)
        self.lock = threading.Lock()
        self.next_job = 0
        self.running: dict[str, tuple[JobSpec, subprocess.Popen]] = {}
        self.terminated: dict[str, float] = {}  # key -> when SIGTERM was sent
        self.cancel_requested = threading.Event()
        self.cancelled: set[str] = set()  # keys with a cancel marker, refreshed on SIGUSR1

    def record(self, job: JobSpec, status: JobStatus) -> None:
        # Rewritten in place (a new file costs ~10x more on some disks); a reader that
        # catches it half-written sees no status, as if the job were still starting.
        with open(job.status_file, "w") as out:
            json.dump(status.to_dict(), out)
        self.events.emit(job.key, self.group, status)

    def refresh_cancelled(self) -> None:
        found = {job.key for job in self.jobs if _cancelled(job)}
        with self.lock:
            self.cancelled = found

    def take(self) -> JobSpec | None:
        with self.lock:
            if self.next_job >= len(self.jobs):
                return None
            job = self.jobs[self.next_job]
            self.next_job += 1
            return job

    def run_one(self, job: JobSpec) -> None:
        started = time.time()
        if not _claim(job, JobStatus(JobState.RUNNING, started=started)):
            return  # started (or cancelled) before, by this or another runner
        if job.key in self.cancelled:
            self.record(job, JobStatus(JobState.CANCELLED, ended=time.time()))
            return
        if job.prepare:
            try:
                run_hook(job.prepare)
            except Exception as error:  # any failure to prepare is the job's failure, told to the user
                message = f"could not prepare the job: {error}"
                self.record(job, JobStatus(JobState.FAILED, started=started, ended=time.time(), error=message))
                return
        try:
            with open(job.stdout, "ab") as out, open(job.stderr, "ab") as err:
                process = subprocess.Popen(
                    job.argv,
                    cwd=job.cwd,
                    env={**self.base_env, **job.env},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # its own process group, for cancel
                    close_fds=True,
                )
        except OSError as error:
            code = 127 if isinstance(error, FileNotFoundError) else 126
            with open(job.stderr, "ab") as err:
                err.write(f"flotilla: cannot run {job.argv[0]!r}: {error.strerror}\n".encode())
            self.record(job, JobStatus(JobState.FAILED, returncode=code, started=started, ended=time.time()))
            return
        with self.lock:
            self.running[job.key] = (job, process)
        self.record(job, JobStatus(JobState.RUNNING, job_id=str(process.pid), started=started))
        if job.key in self.cancelled:
            self.cancel_requested.set()  # cancelled while starting
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
        while (job := self.take()) is not None:
            try:
                self.run_one(job)
            except Exception:
                log.exception("job %s", job.key)

    def canceller(self) -> None:
        """Terminate the groups of cancelled running jobs; kill them after the grace period."""
        while True:
            if self.cancel_requested.wait(timeout=1.0):
                self.refresh_cancelled()
            self.cancel_requested.clear()
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
        self.pid_file.write_text(str(os.getpid()))
        signal.signal(signal.SIGUSR1, lambda signum, frame: self.cancel_requested.set())
        self.refresh_cancelled()
        threading.Thread(target=self.canceller, daemon=True).start()
        workers = [threading.Thread(target=self.worker) for _ in range(min(self.concurrency, len(self.jobs)))]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        self.events.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    Runner(Path(sys.argv[1])).run()
