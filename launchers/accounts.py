"""Who member-side work runs as. Plain Python: no Django.

``FLOTILLA_RUN_AS=server``: members run as the server's account; the server
does their file work itself (``ServerSide``). ``FLOTILLA_RUN_AS=user``: every
member-side action (generating its folder, running it, cancelling it, reading
its outputs for the server) runs as the Unix account mapped to the Flotilla
user (``Account``), through ``sudo -n -u <account>`` and the member-side agent
(``launchers/agent.py``), a fresh program that holds no secret of the server's.
``AccountLauncher`` is the local launcher driven that way.
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

from .base import JobSpec, JobStatus, Launcher, LauncherError

AGENT = Path("launchers") / "agent.py"
RELAY = Path(__file__).with_name("relay.py")
COMMAND_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # all that sudo and the agent get


def _gone_is_fine(function, path, exc_info):
    """shutil.rmtree's onerror (Python 3.11 has no onexc): what vanished meanwhile is no error."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


class ServerSide:
    """File work for members that run as the server's account: done in this process."""

    account = None

    def open_files(self, paths: list[str]) -> list[int | None]:
        descriptors = []
        for path in paths:
            try:
                descriptors.append(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
            except OSError:
                descriptors.append(None)
        return descriptors

    def list_folder(self, folder: str, *, offset: int, limit: int) -> dict:
        """``{"total": n, "entries": [...]}``: entries ``offset`` to ``offset + limit`` of the
        folder by name, links not followed; only those entries are looked at."""
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return {"total": 0, "entries": [], "exists": False}
        entries = []
        for name in names[offset : offset + limit]:
            path = os.path.join(folder, name)
            try:
                info = os.lstat(path)
                is_link = stat.S_ISLNK(info.st_mode)
                target = os.readlink(path) if is_link else ""
            except OSError:
                continue  # removed while we listed
            entries.append({"name": name, "is_dir": stat.S_ISDIR(info.st_mode), "is_link": is_link, "size": info.st_size,
                            "target": target})
        return {"total": len(names), "entries": entries, "exists": True}

    def rename(self, moves: list[tuple[str, str]]) -> list[bool]:
        """Move folders aside ([(source, target)]); for each, whether its source existed."""
        moved = []
        for source, target in moves:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(source, target)
                moved.append(True)
            except FileNotFoundError:
                moved.append(False)
        return moved

    def remove(self, folders: list[str]) -> None:
        """Delete folders and everything in them; one already gone is no error. Links are
        removed, never followed (shutil.rmtree works by descriptors, safe against swaps)."""
        for folder in folders:
            if os.path.islink(folder):
                os.unlink(folder)
                continue
            shutil.rmtree(folder, onerror=_gone_is_fine)


class Account(ServerSide):
    """A Unix account that member-side work runs as, through sudo and the agent.

    ``python`` and ``agent_dir`` (the folder holding ``launchers/agent.py``)
    must be readable and executable by the account; the agent needs the
    standard library only."""

    def __init__(self, account: str, *, python: str = sys.executable, agent_dir: str | os.PathLike, timeout: float = 60.0):
        self.account = account
        self.python = python
        self.agent_dir = Path(agent_dir)
        self.timeout = timeout

    def command(self, verb: str) -> list[str]:
        return ["sudo", "-n", "-u", self.account, "--", self.python, "-I", str(self.agent_dir / AGENT), verb]

    def failure(self, stderr: bytes, returncode: int) -> LauncherError:
        """What the user is told when the agent (or sudo) failed."""
        message = stderr.decode(errors="replace").strip()
        if message.startswith("sudo:"):
            return LauncherError(f"Flotilla cannot act as the Unix account {self.account!r} ({message}); "
                                 "an administrator must allow it (see the README's security section).")
        return LauncherError(message or f"the member-side agent exited with {returncode}")

    def call(self, verb: str, request: dict, *, payload=None):
        """Run the agent with a request (and ``payload``: a callable that writes the rest of its stdin)."""
        try:
            process = subprocess.Popen(self.command(verb), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, env=COMMAND_ENV, close_fds=True)
        except OSError as error:
            raise LauncherError(f"cannot run sudo: {error}") from None
        try:
            if payload is None:
                stdout, stderr = process.communicate(json.dumps(request).encode() + b"\n", timeout=self.timeout)
            else:
                try:
                    process.stdin.write(json.dumps(request).encode() + b"\n")
                    payload(process.stdin)
                except BrokenPipeError:  # the agent gave up: its message says why
                    pass
                stdout, stderr = process.communicate(timeout=self.timeout)  # (closes stdin)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise LauncherError(f"the member-side agent of {self.account!r} did not answer within {self.timeout:.0f} s") from None
        if process.returncode != 0:
            raise self.failure(stderr, process.returncode)
        return json.loads(stdout) if stdout else None

    def open_files(self, paths: list[str]) -> list[int | None]:
        """The agent opens the files as the account and passes their descriptors over a socket."""
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(self.command("open"), stdin=subprocess.PIPE, stdout=theirs, stderr=subprocess.PIPE,
                                       env=COMMAND_ENV, close_fds=True)
        except OSError as error:
            ours.close()
            raise LauncherError(f"cannot run sudo: {error}") from None
        finally:
            theirs.close()
        try:
            process.stdin.write(json.dumps({"paths": paths}).encode() + b"\n")
            process.stdin.close()
            ours.settimeout(self.timeout)
            message, ancillary, _, _ = ours.recvmsg(65536, socket.CMSG_SPACE(len(paths) * 4), socket.MSG_CMSG_CLOEXEC)
            stderr = process.stderr.read()
            process.wait(self.timeout)
        except (OSError, subprocess.TimeoutExpired) as error:
            process.kill()
            raise LauncherError(f"the member-side agent of {self.account!r} did not answer: {error}") from None
        finally:
            ours.close()
        if process.returncode != 0 or not message:
            raise self.failure(stderr, process.returncode)
        received = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received.frombytes(data[: len(data) - len(data) % received.itemsize])
        descriptors = iter(received)
        return [next(descriptors) if opened else None for opened in json.loads(message)]

    def list_folder(self, folder: str, *, offset: int, limit: int) -> dict:
        return self.call("list", {"folder": folder, "offset": offset, "limit": limit})

    def rename(self, moves: list[tuple[str, str]]) -> list[bool]:
        return self.call("rename", {"moves": moves})

    def remove(self, folders: list[str]) -> None:
        self.call("remove", {"folders": folders})

    def stage(self, folder: str, files: dict[str, str]) -> None:
        """Copy server files ({source: name in folder}) into ``folder``, as the account."""
        sources = list(files)
        listing = [{"name": files[source], "size": os.path.getsize(source)} for source in sources]

        def write_contents(stream):
            for source, item in zip(sources, listing):
                with open(source, "rb") as content:
                    left = item["size"]  # exactly what was announced, even if the file grew meanwhile
                    while left:
                        chunk = content.read(min(left, 1024 * 1024)) or b"\0" * min(left, 1024 * 1024)
                        stream.write(chunk)
                        left -= len(chunk)

        self.call("stage", {"folder": folder, "files": listing}, payload=write_contents)


class AccountLauncher(Launcher):
    """The local launcher, every step of it run as ``account`` by the agent.

    Inputs only the server can read (``private_roots``: uploads) are staged
    into the run's folder first, as the account. The runner's events come back
    through a relay (``launchers/relay.py``), a process of the server's that
    holds the Redis credentials the runner must not have."""

    name = "local"

    def __init__(self, account: Account, *, work_dir: str | os.PathLike, redis_url: str | None, stream: str,
                 grace: float, max_output_bytes: int | None, base_env: dict[str, str], private_roots: list[str]):
        self.account = account
        self.work_dir = str(work_dir)
        self.redis_url = redis_url
        self.stream = stream
        self.private_roots = [str(Path(root)) for root in private_roots]
        self.options = {"work_dir": self.work_dir, "stream": stream, "grace": grace, "max_output_bytes": max_output_bytes,
                        "base_env": base_env}

    def _call(self, call: str, **request):
        return self.account.call("launcher", {"launcher": self.options, "call": call, **request})

    @staticmethod
    def _jobs(jobs: list[JobSpec]) -> list[dict]:
        return [dataclasses.asdict(job) for job in jobs]

    def _private(self, path: str) -> bool:
        return any(path == root or path.startswith(root + os.sep) for root in self.private_roots)

    def _staged(self, jobs: list[JobSpec]) -> list[JobSpec]:
        """The jobs with their private inputs replaced by copies staged in the run's folder."""
        inputs = os.path.join(self.work_dir, "inputs")
        staged: dict[str, str] = {}
        for job in jobs:
            files = (job.prepare or {}).get("kwargs", {}).get("files", {})
            for action in ("copy", "symlink", "configure"):
                for source in files.get(action, []):
                    if self._private(source) and source not in staged:
                        staged[source] = f"{hashlib.sha256(source.encode()).hexdigest()[:16]}/{os.path.basename(source)}"
        if not staged:
            return jobs
        self.account.stage(inputs, staged)
        result = []
        for job in jobs:
            kwargs = dict(job.prepare["kwargs"])
            kwargs["files"] = {
                key: [os.path.join(inputs, staged[path]) if path in staged else path for path in value] if key != "tag" else value
                for key, value in kwargs["files"].items()
            }
            kwargs["roots"] = [root for root in kwargs["roots"] if not self._private(root)] + [inputs]
            result.append(dataclasses.replace(job, prepare={**job.prepare, "kwargs": kwargs}))
        return result

    def submit(self, jobs: list[JobSpec], *, group: str, concurrency: int | None = None) -> None:
        if not jobs:
            return
        jobs = self._staged(jobs)
        request = {"launcher": self.options, "call": "submit", "jobs": self._jobs(jobs), "group": group, "concurrency": concurrency}
        config = {"command": self.account.command("launcher"), "request": json.dumps(request), "env": COMMAND_ENV,
                  "redis_url": self.redis_url, "stream": self.stream, "group": group}
        try:
            relay = subprocess.run([sys.executable, "-I", str(RELAY)], input=json.dumps(config).encode(),
                                   capture_output=True, env={}, timeout=self.account.timeout)
        except (OSError, subprocess.SubprocessError) as error:
            raise LauncherError(f"could not start the event relay: {error}") from None
        try:
            answer = json.loads(relay.stdout)
        except ValueError:
            raise LauncherError(f"the event relay failed: {relay.stderr.decode(errors='replace').strip()}") from None
        if "error" in answer:
            raise self.account.failure(answer["error"].encode(), 1)

    def status(self, keys: list[str]) -> dict[str, JobStatus]:
        return {key: JobStatus.from_dict(status) for key, status in self._call("status", keys=keys).items()}

    def cancel(self, jobs: list[JobSpec], *, group: str) -> None:
        self._call("cancel", jobs=self._jobs(jobs), group=group)

    def runner_alive(self) -> bool:
        return bool(self._call("runner_alive"))

    def unstarted(self, jobs: list[JobSpec]) -> list[JobSpec]:
        keys = set(self._call("unstarted", jobs=self._jobs(jobs)))
        return [job for job in jobs if job.key in keys]


def install_agent(folder: str | os.PathLike) -> Path:
    """Copy the member-side code (this package, the generation hook and what it uses) into
    ``folder``/<content hash>/, readable by every account, and return that
    folder (for FLOTILLA_AGENT_DIR when the installation itself is not readable)."""
    project = Path(__file__).resolve().parent.parent
    sources = sorted(Path(__file__).parent.glob("*.py")) + [project / "ensembles" / name for name in ("generation.py", "expansion.py")]
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:16]
    target = Path(folder) / digest
    if not (target / AGENT).exists():
        staging = Path(folder) / f".{digest}-{os.getpid()}"
        for source in sources:
            destination = staging / source.relative_to(project)
            destination.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            destination.write_bytes(source.read_bytes())
            destination.chmod(0o644)
        (staging / "ensembles" / "__init__.py").write_text("")
        (staging / "ensembles" / "__init__.py").chmod(0o644)
        for path in [staging, *staging.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        os.rename(staging, target)
    return target

