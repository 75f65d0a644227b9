"""The bridge between runs in the database and launchers (plain Python, in launchers/)."""

from __future__ import annotations

from django.conf import settings

from launchers.base import JobSpec, JobState, Launcher, LauncherError
from launchers.local import LocalLauncher

from .models import MemberRun, MemberStatus, Run

STATE_TO_STATUS = {
    JobState.QUEUED: MemberStatus.QUEUED,
    JobState.RUNNING: MemberStatus.RUNNING,
    JobState.COMPLETED: MemberStatus.COMPLETED,
    JobState.FAILED: MemberStatus.FAILED,
    JobState.CANCELLED: MemberStatus.CANCELLED,
    JobState.LOST: MemberStatus.LOST,
}


def launcher_for(run: Run) -> Launcher:
    if run.launcher == "local":
        return LocalLauncher(
            work_dir=run.work_dir, redis_url=settings.REDIS_URL, stream=settings.EVENT_STREAM, grace=settings.CANCEL_GRACE_SECONDS
        )
    raise LauncherError(f"The {run.launcher} launcher is not available yet; use the local launcher.")


# What job_spec reads of a member (with files_key and status): load members with .only(*JOB_FIELDS).
JOB_FIELDS = ("run", "kind", "entity", "name", "params", "param_names", "argv", "env", "cwd", "status")


def job_spec(member: MemberRun, *, files: dict | None = None, roots: list[str] = ()) -> JobSpec:
    """The member as a launcher job; with ``files``, the job generates its directory
    (ensembles.generation.prepare_member) just before it starts."""
    prepare = None
    if files is not None:
        prepare = {
            "hook": "ensembles.generation:prepare_member",
            "kwargs": {
                "directory": member.cwd,
                "name": member.name,
                "params": member.ordered_params,
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
    )
