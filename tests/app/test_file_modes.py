"""Flotilla's data is for the server's account only: no file or folder it creates is
readable by other accounts (the SQLite file holds password hashes and sessions)."""

import io
import os
import stat

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse

from ensembles.models import AttachedFile
from webapp.env import data_dir


def _private(path) -> bool:
    return stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0


def test_the_data_folder_and_the_sqlite_database_are_private(db):
    assert _private(data_dir())  # as the settings made it (app tests point DATA_DIR at a tmp_path)
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        assert _private(database["NAME"])


def test_uploads_and_their_folders_are_private(alice_client, ensemble):
    upload = SimpleUploadedFile("input.cfg", b"steps = ;alpha;\n")
    response = alice_client.post(reverse("ensembles:file_attach", args=[ensemble.pk]), {"action": "configure", "upload": upload})
    assert response.status_code in (200, 302)
    path = AttachedFile.objects.get(ensemble=ensemble).path
    assert _private(path)
    folder = os.path.dirname(path)
    while folder != str(settings.UPLOAD_DIR.parent):
        assert _private(folder), folder
        folder = os.path.dirname(folder)


def test_the_initial_admin_password_is_kept_private_and_never_printed(db):
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    output = io.StringIO()
    call_command("ensure_admin", stdout=output)
    password_file = settings.DATA_DIR / "initial-admin-password.txt"
    password = password_file.read_text().strip()
    assert password and password not in output.getvalue()
    assert str(password_file) in output.getvalue()
    assert _private(password_file)
    password_file.unlink()
