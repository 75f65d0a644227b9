from django.apps import AppConfig


class EnsemblesConfig(AppConfig):
    name = "ensembles"
    default_auto_field = "django.db.models.BigAutoField"
