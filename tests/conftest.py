"""Shared fixtures: the personas alice, bob (same role, different owner) and charlie (staff)."""

import pytest
from django.conf import settings

from ensembles import services

PASSWORD = "correct-horse-battery"


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password=PASSWORD)


@pytest.fixture
def charlie(django_user_model):
    """Staff: uses the Django admin, but in the app sees only his own experiments."""
    return django_user_model.objects.create_user("charlie", password=PASSWORD, is_staff=True)


def _client_for(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice_client(alice):
    return _client_for(alice)


@pytest.fixture
def bob_client(bob):
    return _client_for(bob)


@pytest.fixture
def charlie_client(charlie):
    return _client_for(charlie)


@pytest.fixture
def experiment(alice):
    return services.experiment_create(owner=alice, name="heat", description="Heat diffusion")


@pytest.fixture
def ensemble(experiment):
    return services.ensemble_save(
        experiment=experiment,
        spec={
            "name": "sweep",
            "params": [{"name": "alpha", "values": "1, 2"}, {"name": "beta", "values": '"x", "y", "z"'}],
            "params_as_args": ["alpha"],
            "run_settings": {"exe": "/bin/echo", "exe_args": ["run"]},
        },
    )


@pytest.fixture(scope="session")
def test_database_url(django_db_setup) -> str:
    """A DATABASE_URL for child processes (daphne, Celery, the monitor) to use the test database."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
