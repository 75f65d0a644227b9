"""Settings read from the environment: bad values stop start-up, naming the variable."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from webapp import env


@pytest.mark.parametrize(
    "reader, name, value, default",
    [
        (env.env_bool, "FLOTILLA_X", "maybe", False),
        (env.env_int, "FLOTILLA_X", "ten", 1),
        (env.env_url, "REDIS_URL", "http://127.0.0.1:6379", "redis://127.0.0.1:6379/0"),
        (env.env_url, "REDIS_URL", "redis://127.0.0.1:notaport/0", "redis://127.0.0.1:6379/0"),
        (env.env_dir, "FLOTILLA_DATA_DIR", "relative/dir", None),
    ],
)
def test_bad_values_raise_improperly_configured_naming_the_variable(monkeypatch, reader, name, value, default):
    monkeypatch.setenv(name, value)
    kwargs = {"schemes": ("redis",)} if reader is env.env_url else {}
    with pytest.raises(ImproperlyConfigured, match=name):
        reader(name, default, **kwargs)


def test_a_required_value_that_is_missing_names_the_variable(monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY must be set"):
        env.env_str("SECRET_KEY")


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("off", False), ("0", False), ("YES", True)])
def test_booleans_accept_the_usual_spellings(monkeypatch, value, expected):
    monkeypatch.setenv("FLOTILLA_X", value)
    assert env.env_bool("FLOTILLA_X") is expected


def test_file_roots_must_be_existing_absolute_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOTILLA_FILE_ROOTS", f"{tmp_path}:{tmp_path}/missing")
    with pytest.raises(ImproperlyConfigured, match="FLOTILLA_FILE_ROOTS.*not an existing folder"):
        env.env_dirs("FLOTILLA_FILE_ROOTS", [])
    monkeypatch.setenv("FLOTILLA_FILE_ROOTS", str(tmp_path))
    assert env.env_dirs("FLOTILLA_FILE_ROOTS", []) == [tmp_path.resolve()]
    monkeypatch.setenv("FLOTILLA_FILE_ROOTS", "")
    assert env.env_dirs("FLOTILLA_FILE_ROOTS", [tmp_path]) == []


def test_an_invalid_database_url_stops_settings_with_its_name(tmp_path):
    import os
    import subprocess
    import sys

    from django.conf import settings

    result = subprocess.run(
        [sys.executable, "-c", "import webapp.settings"],
        env={**os.environ, "DATABASE_URL": "nosuchdb://x", "SECRET_KEY": "x", "FLOTILLA_DATA_DIR": str(tmp_path)},
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr
