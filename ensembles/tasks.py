"""Celery tasks: ids in, one service call, idempotent."""

from celery import shared_task


@shared_task
def ping() -> str:
    """Health check: proves a worker is consuming from the broker."""
    return "pong"
