"""The Celery app. Tasks live in ensembles/tasks.py; every one takes ids only."""

import gc
import os

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("flotilla")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _freeze_what_was_imported(**kwargs):
    """A pool process keeps what it was forked with (Django, the app) for life: keep
    the garbage collector off it, so that a collection during a task scans only
    the task's objects (a full one otherwise costs tens of milliseconds)."""
    gc.freeze()
