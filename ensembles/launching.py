"""The bridge between runs in the database and launchers (plain Python, in launchers/)."""

from __future__ import annotations

import pwd
import subprocess
from pathlib import Path

from django.conf import settings

from launchers.accounts import Account, AccountLauncher, ServerSide
from launchers.base import JobSpec, JobState, Launcher, LauncherError
from launchers.local import LocalLauncher, member_base_env
from launchers import slurm
from launchers.slurm import SlurmLauncher

from .models import MemberRun, MemberStatus, Run

SERVER_SIDE = ServerSide()
STATE_TO_STATUS = {
    JobState.QUEUED: MemberStatus.QUEUED,
    JobState.RUNNING: MemberStatus.RUNNING,
    JobState.COMPLETED: MemberStatus.COMPLETED,
    JobState.FAILED: MemberStatus.FAILED,
    JobState.CANCELLED: MemberStatus.CANCELLED,
    JobState.LOST: MemberStatus.LOST,
}


def account(name: str) -> Account:
    return Account(name, python=settings.AGENT_PYTHON, agent_dir=settings.AGENT_DIR)


def account_root(name: str) -> Path:
    """Where the account's member folders and run folders live (FLOTILLA_ACCOUNT_ROOT)."""
    return Path(settings.ACCOUNT_ROOT.format(home=pwd.getpwnam(name).pw_dir, account=name))


def member_side(run: Run) -> ServerSide:
    """Who does the file work of the run's members: the server, or their Unix account."""
    return account(run.run_as) if run.run_as else SERVER_SIDE


# The schedulers whose clusters Flotilla drives today, and the command that shows one
# is installed (SmartSim's detection order for "auto": PBS, then LSF, then Slurm).
AVAILABLE_SCHEDULERS = frozenset({"local", "slurm"})
DETECTION_ORDER = (("pbs", "qsub"), ("lsf", "bsub"), ("slurm", "sbatch"))


def launcher_for(run: Run) -> Launcher:
    if run.launcher == "slurm":
        return _slurm_launcher(run)
    if run.launcher != "local":
        raise LauncherError(f"The {run.launcher} launcher is not available yet.")
    options = {"work_dir": run.work_dir, "stream": settings.EVENT_STREAM, "grace": settings.CANCEL_GRACE_SECONDS,
               "max_output_bytes": settings.MAX_OUTPUT_BYTES}
    if run.run_as:
        base_env = member_base_env()
        entry = pwd.getpwnam(run.run_as)
        base_env.update(HOME=entry.pw_dir, USER=run.run_as, LOGNAME=run.run_as, SHELL=entry.pw_shell)
        return AccountLauncher(account(run.run_as), redis_url=settings.REDIS_URL, base_env=base_env,
                               private_roots=[str(settings.UPLOAD_DIR)], **options)
    return LocalLauncher(redis_url=settings.REDIS_URL, **options)


def read_site_limits(cluster) -> dict[str, int]:
    """The cluster's limits as its scheduler states them: {"MaxArraySize": n, "MaxJobCount": n}."""
    if cluster.scheduler != "slurm":
        raise LauncherError(f"Limits can be read from Slurm clusters only, not from {cluster.get_scheduler_display()}.")
    try:
        result = subprocess.run(["scontrol", "show", "config"], env={**member_base_env(), **cluster.env},
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LauncherError(f"scontrol could not be run: {error}") from None
    if result.returncode:
        raise LauncherError(result.stderr.strip() or f"scontrol exited with {result.returncode}")
    return slurm.site_limits(result.stdout)


def _slurm_launcher(run: Run) -> SlurmLauncher:
    if run.run_as:
        raise LauncherError("Slurm members cannot run as their owner's account yet (FLOTILLA_RUN_AS=user).")
    return SlurmLauncher(work_dir=run.work_dir, env=run.cluster.env, max_array_size=run.cluster.max_array_size or 1001)


# What job_spec reads of a member (with files_key and status): load members with .only(*JOB_FIELDS).
JOB_FIELDS = ("run", "ensemble", "kind", "entity", "name", "params", "param_names", "params_text", "argv", "env", "cwd", "status")


def job_spec(member: MemberRun, *, files: dict | None = None, roots: list[str] = (), results_file: str = "",
             resources: dict | None = None) -> JobSpec:
    """The member as a launcher job; with ``files``, the job generates its directory
    (ensembles.generation.prepare_member) just before it starts; with ``results_file``,
    its runner reads that file's numbers when it completes; ``resources``: its batch
    settings, for a scheduler."""
    prepare = None
    if files is not None:
        prepare = {
            "hook": "ensembles.generation:prepare_member",
            "kwargs": {
                "directory": member.cwd,
                "name": member.name,
                "params": member.ordered_params,
                "texts": member.params_text or {},  # the values as typed, for configured files
                "files": files,
                "roots": list(roots),
            },
        }
    return JobSpec(
        key=str(member.pk),
        name=member.name,
        argv=member.argv,
        cwd=member.cwd,
        env=member.env,
        stdout=member.stdout,
        stderr=member.stderr,
        prepare=prepare,
        results_file=results_file,
        resources=resources or {},
    )
