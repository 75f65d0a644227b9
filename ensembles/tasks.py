"""Celery tasks: ids in, one service call, idempotent (each service claims its work first).
None of them waits for a simulation, and none returns a result anybody reads
(CELERY_TASK_IGNORE_RESULT), bar ping."""

from celery import shared_task

from . import services


@shared_task(ignore_result=False)
def ping() -> str:
    """Health check: proves a worker is consuming from the broker."""
    return "pong"


@shared_task
def run_submit(run_id: int) -> bool:
    return services.run_submit(run_id=run_id)


@shared_task
def run_cancel(run_id: int) -> None:
    services.run_cancel(run_id=run_id)


@shared_task
def member_cancel(member_id: int) -> None:
    services.member_cancel(member_id=member_id)


@shared_task
def run_rerun_failed(run_id: int) -> int:
    return services.run_rerun_failed(run_id=run_id)


@shared_task
def run_purge(run_id: int) -> None:
    services.run_purge(run_id=run_id)


@shared_task
def trash_empty(run_as: str, user_id: int) -> None:
    services.trash_empty(run_as=run_as, user_id=user_id)
