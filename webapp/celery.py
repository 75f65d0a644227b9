"""The Celery app. Tasks live in ensembles/tasks.py; every one takes ids only."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("flotilla")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
