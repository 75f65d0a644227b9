"""FLOTILLA_RUN_AS=user with two real Unix accounts: members run as their owner's
account, through sudo and the member-side agent, and can reach nothing of the
server's or of the other account's. Needs root (to create the accounts) and sudo;
CI has both (FLOTILLA_REQUIRE_RUN_AS=1 makes their absence a failure)."""

import json
import os
import pwd
import shutil
import stat
import subprocess
import uuid

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from ensembles import launching, services
from ensembles.models import MemberRun, Run, TERMINAL_STATUSES, UnixAccount
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

PROBE = r"""
import json, os, sys
targets = json.loads(sys.argv[1])
seen = {}
for name, path in targets.items():
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").read(1)
        seen[name] = "read"
    except OSError as error:
        seen[name] = type(error).__name__
ppid = os.getppid()
for name in ("environ", "cmdline"):
    try:
        seen["parent_" + name] = open(f"/proc/{ppid}/{name}", "rb").read().decode(errors="replace")
    except OSError as error:
        seen["parent_" + name] = type(error).__name__
seen["environ"] = dict(os.environ)
seen["uid"] = os.getuid()
print(json.dumps(seen))
"""


def _require_root_and_sudo():
    problem = None
    if os.geteuid() != 0:
        problem = "needs root to create Unix test accounts"
    elif not shutil.which("sudo") or not shutil.which("useradd"):
        problem = "needs sudo and useradd (apt-get install sudo passwd)"
    if problem:
        if os.environ.get("FLOTILLA_REQUIRE_RUN_AS"):
            pytest.fail(problem)
        pytest.skip(problem)


@pytest.fixture(scope="module")
def unix_accounts():
    _require_root_and_sudo()
    names = [f"flt{uuid.uuid4().hex[:8]}{suffix}" for suffix in "ab"]
    for name in names:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    yield names
    for name in names:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False)
        subprocess.run(["userdel", "--remove", name], check=False, stderr=subprocess.DEVNULL)


@pytest.fixture
def user_mode(settings, unix_accounts, alice, bob):
    settings.RUN_AS = "user"
    UnixAccount.objects.create(user=alice, name=unix_accounts[0])
    UnixAccount.objects.create(user=bob, name=unix_accounts[1])
    return {"alice": unix_accounts[0], "bob": unix_accounts[1]}


def _finished(run):
    members = list(MemberRun.objects.filter(run=run, latest=True).order_by("position"))
    return members and all(m.status in TERMINAL_STATUSES for m in members) and members


def test_a_member_runs_as_its_owner_and_reaches_nothing_of_the_server_or_of_another_user(
    stack, user_mode, alice, bob, member_agent, stack_env
):
    python = member_agent["FLOTILLA_AGENT_PYTHON"]
    # Bob's run: his output, his configured upload.
    bob_experiment = services.experiment_create(owner=bob, name="bobs")
    bob_ensemble = services.ensemble_save(experiment=bob_experiment, spec={
        "name": "secret", "params": [{"name": "n", "values": "1"}],
        "run_settings": {"exe": python, "exe_args": ["-c", "print(open('input.cfg').read())"]},
    })
    services.file_attach_upload(owner=bob_ensemble, uploaded_file=SimpleUploadedFile("input.cfg", b"bob's secret ;n;\n"),
                                action="configure", user=bob)
    bob_run = services.run_launch(user=bob, experiment=bob_experiment)
    bob_member = wait_for(lambda: _finished(bob_run), message="bob's run ended")[0]
    assert bob_member.status == "Completed", bob_member.error
    bob_upload = bob_ensemble.files.get().path

    # The server's own secrets, as `make run` keeps them.
    secret_key = settings.DATA_DIR / "secret_key"
    secret_key.write_text(stack_env["SECRET_KEY"])
    password_file = settings.DATA_DIR / "initial-admin-password.txt"
    password_file.write_text("admin-password\n")
    targets = {
        "bobs_member_folder": bob_member.cwd,
        "bobs_stdout": bob_member.stdout,
        "bobs_upload": bob_upload,
        "bobs_run_folder": Run.objects.get(pk=bob_run.pk).work_dir,
        "secret_key": str(secret_key),
        "admin_password": str(password_file),
        "data_dir": str(settings.DATA_DIR),
        "uploads": str(settings.UPLOAD_DIR),
        "worker_environ": f"/proc/{stack['worker'].popen.pid}/environ",
        "monitor_environ": f"/proc/{stack['monitor'].popen.pid}/environ",
    }
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        targets["database"] = database["NAME"]

    alice_experiment = services.experiment_create(owner=alice, name="probe")
    services.ensemble_save(experiment=alice_experiment, spec={
        "name": "probe", "params": [{"name": "n", "values": "1"}],
        "run_settings": {"exe": python, "exe_args": ["-c", PROBE, json.dumps(targets)]},
    })
    run = services.run_launch(user=alice, experiment=alice_experiment)
    member = wait_for(lambda: _finished(run), message="alice's probe ended")[0]
    assert member.status == "Completed", member.error

    side = launching.member_side(Run.objects.get(pk=run.pk))  # the dashboard reads it as alice's account
    (descriptor,) = side.open_files([member.stdout])
    with os.fdopen(descriptor, "rb") as output:
        seen = json.loads(output.read())

    assert seen["uid"] == pwd.getpwnam(user_mode["alice"]).pw_uid
    assert {name: seen[name] for name in targets} == {name: "PermissionError" for name in targets}
    secrets = [stack_env["SECRET_KEY"], stack_env["DATABASE_URL"], settings.REDIS_URL, "SECRET_KEY", "DATABASE_URL", "REDIS_URL"]
    for where in ("parent_environ", "parent_cmdline"):
        assert "runner_main.py" in seen["parent_cmdline"]
        assert not [secret for secret in secrets if secret in seen[where]], where
    assert not set(seen["environ"]) & {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    assert seen["environ"]["HOME"] == pwd.getpwnam(user_mode["alice"]).pw_dir

    # Each account owns its folders, and nobody else may enter them.
    for folder, account in ((member.cwd, user_mode["alice"]), (bob_member.cwd, user_mode["bob"])):
        info = os.stat(folder)
        assert pwd.getpwuid(info.st_uid).pw_name == account
        assert stat.S_IMODE(info.st_mode) & 0o077 == 0
    root = launching.account_root(user_mode["alice"])
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    secret_key.unlink()
    password_file.unlink()


def test_a_user_without_a_unix_account_cannot_launch(settings, alice, experiment, ensemble):
    settings.RUN_AS = "user"
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="no Unix account"):
        services.run_launch(user=alice, experiment=experiment)
    assert not Run.objects.exists()


def test_cancel_and_the_log_tail_work_through_the_account(stack, user_mode, alice, member_agent):
    python = member_agent["FLOTILLA_AGENT_PYTHON"]
    experiment = services.experiment_create(owner=alice, name="long")
    services.ensemble_save(experiment=experiment, spec={
        "name": "sleepy", "params": [{"name": "n", "values": "1, 2"}],
        "run_settings": {"exe": python, "exe_args": ["-c", "import time; print('started', flush=True); time.sleep(60)"]},
    })
    run = services.run_launch(user=alice, experiment=experiment, concurrency=1)
    first = wait_for(lambda: (m := MemberRun.objects.filter(run=run).order_by("position").first()) and m.status == "Running" and m)
    side = launching.member_side(run)
    (descriptor,) = side.open_files([first.stdout])
    wait_for(lambda: os.pread(descriptor, 100, 0) == b"started\n", message="the log shows the member's output")
    os.close(descriptor)
    services.run_cancel(run_id=run.pk)
    members = wait_for(lambda: _finished(run), message="cancelled")
    assert [m.status for m in members] == ["Cancelled", "Cancelled"]

    # A re-run moves the earlier attempt's folder aside, as the account, and starts afresh.
    wait_for(lambda: Run.objects.get(pk=run.pk).finished, message="run finished")
    assert services.run_rerun_failed(run_id=run.pk) == 2
    second = wait_for(lambda: (m := MemberRun.objects.filter(run=run, latest=True).order_by("position").first())
                      and m.status == "Running" and m)
    first.refresh_from_db()
    assert ".attempts" in first.cwd and second.attempt == 2
    assert [e["name"] for e in side.list_folder(first.cwd, offset=0, limit=10)["entries"]] == [
        "flotilla_params.json", f"{first.name}.err", f"{first.name}.out"]
    services.run_cancel(run_id=run.pk)
    wait_for(lambda: _finished(run), message="the second attempts cancelled")
    wait_for(lambda: Run.objects.get(pk=run.pk).finished, message="the re-run finished")

    # Deleting the run removes its folders (every attempt) and journals as the account.
    run.refresh_from_db()
    assert services.run_delete(run=run).startswith("Run 1 deleted")
    home = launching.account_root(user_mode["alice"])
    listing = launching.account(user_mode["alice"]).list_folder(str(home / ".trash"), offset=0, limit=10)
    assert sorted(e["name"] for e in listing["entries"]) == [f"run-{run.pk}", f"run-{run.pk}.work"]
    services.run_purge(run_id=run.pk)
    assert not Run.objects.filter(pk=run.pk).exists()
    assert launching.account(user_mode["alice"]).list_folder(str(home / ".trash"), offset=0, limit=10)["exists"] is False
    assert launching.account(user_mode["alice"]).list_folder(str(home / "long" / "runs"), offset=0, limit=10)["total"] == 0
