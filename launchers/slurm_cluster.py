"""A private single-node Slurm for tests, benchmarks and development. Plain Python.

Everything lives under one directory: the munge key and socket, slurm.conf,
the controller's state, the spool, pid files and logs. Nothing in /etc, no
systemd, no host name lookup; the daemons listen on free ports and the cluster
has a name of its own, so several clusters can run on one machine and a system
Slurm is never touched. Every client command needs the cluster's ``env``
(``SLURM_CONF``). Facts behind the settings: ../shared/SLURM.md.

    python -m launchers.slurm_cluster start var/slurm   # prints `export SLURM_CONF=...`
    python -m launchers.slurm_cluster status var/slurm
    python -m launchers.slurm_cluster stop var/slurm

Starting an existing directory keeps its state (job ids continue). Daemons are
found and stopped by their pid files only, and a pid file counts only if its
process is alive, not a zombie, and was started with this cluster's files.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CPUS = 16  # more than the machine has: many small test jobs run at once
COMMAND_TIMEOUT = 30.0


class SlurmClusterError(RuntimeError):
    pass


def slurm_installed() -> bool:
    """Whether the daemons and client commands of slurm-wlm and munge are on this machine."""
    return all(_which(name) for name in (*DAEMONS, "mungekey", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "sdiag"))


def _which(name: str) -> str | None:
    # Daemons live in /usr/sbin, which an unprivileged user's PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SlurmCluster:
    """One private cluster in ``directory``. ``start()`` waits until a job can be scheduled."""

    def __init__(self, directory: str | os.PathLike, *, name: str | None = None, cpus: int = CPUS):
        self.directory = Path(directory).resolve()
        # Slurm folds cluster names to lower case; the default differs per directory.
        digest = hashlib.sha1(str(self.directory).encode()).hexdigest()[:8]
        self.requested_name = (name or f"flotilla{digest}").lower()
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,39}", self.requested_name):
            raise SlurmClusterError(f"{self.requested_name!r} is not a valid cluster name (letters, digits, _ and -)")
        self.cpus = cpus
        self.conf = self.directory / "slurm.conf"
        self.munge_socket = self.directory / "munge" / "munge.socket.2"

    # --- what clients need ------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """The environment every client command of this cluster needs (on top of PATH etc.)."""
        return {"SLURM_CONF": str(self.conf)}

    @property
    def name(self) -> str:
        """The cluster name in its slurm.conf (kept from an earlier start)."""
        return self._conf_value("ClusterName") or self.requested_name

    @property
    def ports(self) -> tuple[int, int]:
        return int(self._conf_value("SlurmctldPort") or 0), int(self._conf_value("SlurmdPort") or 0)

    def command(self, argv: list[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT, input: str | None = None):
        """Run a client command against this cluster; returns the CompletedProcess."""
        result = subprocess.run(
            argv, env={**os.environ, **self.env}, input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode:
            raise SlurmClusterError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def _conf_value(self, key: str) -> str | None:
        try:
            text = self.conf.read_text()
        except FileNotFoundError:
            return None
        match = re.search(rf"^{key}=(\S+)", text, re.MULTILINE)
        return match.group(1) if match else None

    # --- files ------------------------------------------------------------------------

    def _paths(self) -> dict[str, Path]:
        d = self.directory
        return {
            "munge_key": d / "munge" / "munge.key",
            "munge_pid": d / "munge" / "munged.pid",
            "munge_log": d / "munge" / "munged.log",
            "munge_seed": d / "munge" / "munged.seed",
            "state": d / "state",
            "spool": d / "spool",
            "run": d / "run",
            "log": d / "log",
            "plugstack": d / "plugstack.conf",
        }

    def pid_file(self, daemon: str) -> Path:
        return self._paths()["munge_pid"] if daemon == "munged" else self.directory / "run" / f"{daemon}.pid"

    def _prepare_files(self) -> None:
        paths = self._paths()
        for key in ("state", "spool", "run", "log"):
            paths[key].mkdir(parents=True, exist_ok=True)
        munge_dir = paths["munge_key"].parent
        munge_dir.mkdir(parents=True, exist_ok=True)
        munge_dir.chmod(0o755)  # munged refuses one others can write to; other accounts reach the socket
        self.directory.chmod(0o755)  # jobs of other accounts read slurm.conf through it
        if not paths["munge_key"].exists():
            subprocess.run([_which("mungekey"), "--create", f"--keyfile={paths['munge_key']}"], check=True,
                           capture_output=True, timeout=COMMAND_TIMEOUT)
            paths["munge_key"].chmod(0o400)
        paths["plugstack"].touch()
        if not self.conf.exists():  # kept on later starts: same name and ports, so the saved state matches
            self.conf.write_text(self._slurm_conf(_free_port(), _free_port()))
        for path in (self.conf, paths["plugstack"]):
            path.chmod(0o644)  # every account's commands read them

    def _slurm_conf(self, ctld_port: int, slurmd_port: int) -> str:
        paths = self._paths()
        user = "root" if os.geteuid() == 0 else getpass.getuser()  # as root, jobs may run as any account
        memory = _real_memory_mb()
        return "\n".join([
            f"# A private cluster made by launchers/slurm_cluster.py; its files are all in {self.directory}",
            f"ClusterName={self.requested_name}",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={paths['state']}",
            f"SlurmdSpoolDir={paths['spool']}",
            f"SlurmctldPidFile={self.pid_file('slurmctld')}",
            f"SlurmdPidFile={self.pid_file('slurmd')}",
            f"SlurmctldLogFile={paths['log'] / 'slurmctld.log'}",
            f"SlurmdLogFile={paths['log'] / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={paths['log'] / 'jobcomp.log'}",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerParameters=batch_sched_delay=0",  # the default 3 s delay makes every job wait
            "EnforcePartLimits=ALL",  # an impossible job is refused instead of pending forever
            "MinJobAge=600",  # finished jobs stay visible to squeue -t all for 10 minutes
            "KillWait=5",
            "MailProg=/bin/true",
            f"PlugStackConfig={paths['plugstack']}",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",  # advertise more CPUs than the machine has
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    # --- daemons ----------------------------------------------------------------------

    def pid(self, daemon: str) -> int | None:
        """The daemon's pid if its pid file names a live process of this cluster, else None."""
        try:
            pid = int(self.pid_file(daemon).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _is_our_daemon(pid, daemon, str(self.directory)) else None

    def running(self) -> bool:
        return all(self.pid(daemon) for daemon in DAEMONS)

    def start(self, *, timeout: float = 60.0) -> SlurmCluster:
        """Start what is not running and wait until the node is idle and the scheduler has
        run a cycle (jobs submitted before that wait for it). Returns self."""
        if not slurm_installed():
            raise SlurmClusterError("Slurm is not installed (apt-get install slurm-wlm munge)")
        self._prepare_files()
        paths = self._paths()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin", "LANG": "C.UTF-8", **self.env}
        commands = {
            "munged": [_which("munged"), "--force", f"--socket={self.munge_socket}", f"--key-file={paths['munge_key']}",
                       f"--pid-file={paths['munge_pid']}", f"--log-file={paths['munge_log']}",
                       f"--seed-file={paths['munge_seed']}"],
            # -f: the conf path in the command line is also how pid() tells this cluster's daemons from others'
            "slurmctld": [_which("slurmctld"), "-f", str(self.conf)],
            "slurmd": [_which("slurmd"), "-f", str(self.conf), "-N", "localhost"],
        }
        deadline = time.monotonic() + timeout
        for daemon in DAEMONS:
            if self.pid(daemon):
                continue
            self.pid_file(daemon).unlink(missing_ok=True)  # stale: its process is gone or is another program
            result = subprocess.run(commands[daemon], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                    text=True, timeout=COMMAND_TIMEOUT, start_new_session=True)
            if result.returncode:
                raise SlurmClusterError(f"{daemon} did not start ({result.returncode}): "
                                        f"{(result.stderr or result.stdout).strip()} {self._log_tail(daemon)}")
            self._wait(lambda: self.pid(daemon), deadline, f"{daemon} to write its pid file")
        self._wait(self._ready, deadline, "the node to be idle and the scheduler's first cycle")
        return self

    def _ready(self) -> bool:
        node = self.command(["sinfo", "-h", "-n", "localhost", "-o", "%T"], check=False)
        if node.returncode or node.stdout.strip().rstrip("*") != "idle":
            return False
        stats = self.command(["sdiag"], check=False)
        cycles = re.search(r"Main schedule statistics.*?Total cycles:\s*(\d+)", stats.stdout, re.DOTALL)
        return bool(cycles and int(cycles.group(1)) > 0)

    def _wait(self, condition, deadline: float, what: str) -> None:
        while not condition():
            if time.monotonic() > deadline:
                raise SlurmClusterError(f"timed out waiting for {what} in {self.directory}")
            time.sleep(0.05)

    def _log_tail(self, daemon: str) -> str:
        log = self._paths()["munge_log"] if daemon == "munged" else self._paths()["log"] / f"{daemon}.log"
        try:
            return "; log: " + " | ".join(log.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return ""

    def stop(self, *, cancel_jobs: bool = True, timeout: float = 30.0) -> None:
        """Cancel every job (unless ``cancel_jobs`` is False: they stay in the saved state
        and their running steps go on), shut the daemons down, then stop munged."""
        deadline = time.monotonic() + timeout
        told = False  # scontrol shutdown stops slurmctld and slurmd, not munged
        if self.pid("slurmctld"):
            if cancel_jobs:
                self.cancel_all(timeout=max(1.0, deadline - time.monotonic()))
            told = self.command(["scontrol", "shutdown"], check=False).returncode == 0
        for daemon in ("slurmctld", "slurmd", "munged"):
            self._end(daemon, deadline if told and daemon != "munged" else time.monotonic())

    def cancel_all(self, *, timeout: float = 20.0) -> None:
        """scancel every job, and wait until none is left running or completing."""
        ids = self.command(["squeue", "-h", "-o", "%i"], check=False).stdout.split()
        if ids:
            self.command(["scancel", *ids], check=False)
        deadline = time.monotonic() + timeout

        def settled():
            active = self.command(["squeue", "-h", "-t", "PD,R,CG,CF,S,ST,SO,RS,SI", "-o", "%i"], check=False)
            return active.returncode == 0 and not active.stdout.strip()

        try:
            self._wait(settled, deadline, "the cancelled jobs to end")
        except SlurmClusterError:
            pass  # shut down anyway: what is left ends with the daemons or is reported by them

    def _end(self, daemon: str, deadline: float) -> None:
        """Wait for the daemon to exit until ``deadline``, then TERM it, then KILL it: by its
        pid file only."""
        signals = [signal.SIGTERM, signal.SIGKILL]
        while (pid := self.pid(daemon)) is not None:
            if time.monotonic() >= deadline:
                if not signals:
                    raise SlurmClusterError(f"{daemon} (pid {pid}) does not stop")
                try:
                    os.kill(pid, signals.pop(0))
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + 5.0
            time.sleep(0.05)
        self.pid_file(daemon).unlink(missing_ok=True)

    def describe(self) -> str:
        state = {daemon: self.pid(daemon) for daemon in DAEMONS}
        ctld, slurmd = self.ports
        running = ", ".join(f"{daemon} {pid or 'stopped'}" for daemon, pid in state.items())
        return f"cluster {self.name} in {self.directory}: ports {ctld}/{slurmd}; {running}"


def _real_memory_mb() -> int:
    """RealMemory for slurm.conf: what slurmd -C reports (a little under MemTotal)."""
    try:
        output = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT).stdout
        match = re.search(r"RealMemory=(\d+)", output)
        if match:
            return int(match.group(1))
    except (OSError, subprocess.SubprocessError, TypeError):
        pass
    return 1024


def _is_our_daemon(pid: int, daemon: str, directory: str) -> bool:
    """Alive, not a zombie, the expected program, started with this cluster's files."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    state = stat[stat.rfind(")") + 2 :].split(" ", 1)[0]
    if state in ("Z", "X"):
        return False
    program = os.path.basename(cmdline[0].decode(errors="replace")) if cmdline else ""
    inside = (directory.rstrip("/") + "/").encode()  # /tmp/a is not /tmp/ab
    return program == daemon and any(inside in arg for arg in cmdline[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launchers.slurm_cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("directory", help="the cluster's private directory (created on first start)")
    parser.add_argument("--name", help="ClusterName on first start (default: derived from the directory)")
    parser.add_argument("--cpus", type=int, default=CPUS, help="CPUs the node advertises on first start")
    parser.add_argument("--keep-jobs", action="store_true", help="stop: leave jobs in the saved state")
    args = parser.parse_args(argv)
    cluster = SlurmCluster(args.directory, name=args.name, cpus=args.cpus)
    try:
        if args.action == "start":
            began = time.monotonic()
            cluster.start()
            print(f"# {cluster.describe()}; ready in {time.monotonic() - began:.1f} s", file=sys.stderr)
            print(f"export SLURM_CONF={cluster.conf}")
        elif args.action == "stop":
            cluster.stop(cancel_jobs=not args.keep_jobs)
            print(f"# {cluster.describe()}", file=sys.stderr)
        else:
            print(cluster.describe())
            return 0 if cluster.running() else 3
    except SlurmClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
