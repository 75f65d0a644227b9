"""Findings of the security review: each test names the behaviour that closes one."""

import re
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.urls import reverse

from ensembles import services
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def rows_in(html: str) -> int:
    return len(re.findall(r'<tr id="member-\d+"', html))


@pytest.fixture
def run(alice, experiment, ensemble):
    return services.run_launch(user=alice, experiment=experiment)


# --- 1. the members filter: a parameter name is a JSON key, never a lookup ------


@pytest.mark.parametrize(
    "param, value",
    [
        ("alpha__isnull", "1"),
        ("isnull", "x"),
        ("isnull", "true"),
        ("a__b", "1"),
        ("contains", "1"),
        ("has_key", "alpha"),
        ("exact", "1"),
        ("alpha__gt", "0"),
        ("0", "1"),
        ("alpha\x00", "1"),
        ("alpha", "1\x00"),
        ("'; DROP TABLE x; --", "1"),
        ('$."alpha"', "1"),
    ],
)
@pytest.mark.parametrize("view", ["run_members", "run_detail"])
def test_a_parameter_filter_that_looks_like_a_lookup_matches_no_member(alice_client, run, view, param, value):
    response = alice_client.get(reverse(f"ensembles:{view}", args=[run.pk]), {"param": param, "value": value})
    assert response.status_code == 200
    assert rows_in(response.content.decode()) == 0


@pytest.mark.parametrize("sort", ["params__isnull", "-params__alpha", "?", "isnull", "position__isnull", "pk"])
def test_an_unknown_sort_falls_back_to_the_position(alice_client, run, sort):
    response = alice_client.get(reverse("ensembles:run_members", args=[run.pk]), {"sort": sort})
    assert response.status_code == 200
    names = re.findall(r">(sweep_\d+)<", response.content.decode())
    assert names == [f"sweep_{i}" for i in range(6)]


def test_parameters_named_like_lookups_filter_by_their_own_values(alice_client, alice, experiment):
    services.ensemble_save(
        experiment=experiment,
        spec={
            "name": "odd",
            "params": [{"name": "isnull", "values": "1, 2"}, {"name": "a__b", "values": '"x", "y"'}],
            "run_settings": {"exe": "/bin/true"},
        },
    )
    run = services.run_launch(user=alice, experiment=experiment)
    url = reverse("ensembles:run_members", args=[run.pk])
    assert rows_in(alice_client.get(url, {"param": "isnull", "value": "2"}).content.decode()) == 2
    assert rows_in(alice_client.get(url, {"param": "a__b", "value": "y"}).content.decode()) == 2


# --- 2. login throttling --------------------------------------------------------


def _login(client, username, password):
    return client.post(reverse("login"), {"username": username, "password": password})


def _logged_in(client) -> bool:
    return "_auth_user_id" in client.session


def test_five_wrong_passwords_lock_the_username_out_from_that_address(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = _login(client, "alice", "wrong")
        assert response.status_code == 200 and "correct username and password" in response.content.decode()
    response = _login(client, "alice", "wrong")
    assert response.status_code == 429
    response = _login(client, "alice", PASSWORD)  # even the right password, during the cool-off
    assert response.status_code == 429
    html = response.content.decode()
    assert "Too many failed log-ins" in html and 'role="alert"' in html and 'name="password"' in html
    assert not _logged_in(client)


def test_a_lock_out_is_per_username_and_address(client, alice, bob, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _login(client, "alice", "wrong")
    assert _login(client, "alice", PASSWORD).status_code == 429
    other_user = Client()
    assert _login(other_user, "bob", PASSWORD).status_code == 302 and _logged_in(other_user)
    other_address = Client(REMOTE_ADDR="10.1.2.3")
    assert _login(other_address, "alice", PASSWORD).status_code == 302 and _logged_in(other_address)


def test_the_lock_out_ends_after_the_cool_off(client, alice, settings):
    from axes.models import AccessAttempt

    for _ in range(settings.AXES_FAILURE_LIMIT):
        _login(client, "alice", "wrong")
    assert _login(client, "alice", PASSWORD).status_code == 429
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    assert _login(client, "alice", PASSWORD).status_code == 302 and _logged_in(client)


def test_a_successful_login_resets_the_failure_count(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _login(client, "alice", "wrong")
    assert _login(client, "alice", PASSWORD).status_code == 302
    client.post(reverse("logout"))
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _login(client, "alice", "wrong").status_code == 200
    assert _login(client, "alice", PASSWORD).status_code == 302 and _logged_in(client)


@pytest.mark.django_db(transaction=True)
def test_the_lock_out_holds_under_asgi_too(async_client, alice, settings):
    """daphne runs the middleware chain asynchronously: django-axes takes another path there."""

    async def scenario():
        for _ in range(settings.AXES_FAILURE_LIMIT):
            await async_client.post(reverse("login"), {"username": "alice", "password": "wrong"})
        return await async_client.post(reverse("login"), {"username": "alice", "password": PASSWORD})

    response = async_to_sync(scenario)()
    assert response.status_code == 429 and "Too many failed log-ins" in response.content.decode()


# --- 3. Content-Security-Policy -------------------------------------------------


def test_pages_carry_a_content_security_policy_without_inline_scripts(alice_client, client):
    for response in (alice_client.get(reverse("ensembles:experiment_list")), client.get(reverse("login"))):
        policy = response["Content-Security-Policy"]
        directives = {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}
        assert directives["default-src"] == ["'self'"]
        assert "'unsafe-inline'" not in directives["script-src"]
        assert directives["connect-src"] == ["'self'"]  # the websockets of this origin only
        assert directives["frame-ancestors"] == ["'none'"] and directives["object-src"] == ["'none'"]
        assert '"allowEval": false' in response.content.decode()  # htmx evaluates no attribute either


def test_templates_have_no_inline_scripts_or_handlers():
    """'unsafe-inline' is not allowed for scripts: no <script> body, on* handler, javascript: URL or hx-on."""
    from django.conf import settings

    for template in Path(settings.BASE_DIR, "templates").rglob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), template
        assert not re.search(r"\son[a-z]+\s*=", text), template
        assert not re.search(r"\shx-on", text), template
        assert "javascript:" not in text, template


def test_the_delete_page_cancels_back_to_the_object(alice_client, experiment, ensemble):
    html = alice_client.get(reverse("ensembles:experiment_delete", args=[experiment.pk])).content.decode()
    assert re.search(rf'href="{reverse("ensembles:experiment_detail", args=[experiment.pk])}"[^>]*>Cancel', html)
    html = alice_client.get(reverse("ensembles:ensemble_delete", args=[ensemble.pk])).content.decode()
    assert re.search(rf'href="{reverse("ensembles:ensemble_edit", args=[ensemble.pk])}"[^>]*>Cancel', html)


# --- 4. /healthz ---------------------------------------------------------------


def test_health_check_tells_anonymous_and_non_staff_clients_only_the_overall_status(client, alice_client):
    for who in (client, alice_client):
        response = who.get(reverse("healthz"))
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


def test_health_check_tells_staff_the_details(charlie_client):
    response = charlie_client.get(reverse("healthz"))
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "web": "ok", "database": "ok", "redis": "ok"}


def test_an_unhealthy_service_is_a_503_that_names_nothing_to_anonymous_clients(client, charlie_client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    response = client.get(reverse("healthz"))
    assert response.status_code == 503
    assert response.json() == {"status": "error"}
    details = charlie_client.get(reverse("healthz"))
    assert details.status_code == 503
    assert details.json()["redis"].startswith("error") and details.json()["database"] == "ok"


# --- 5. the member folder listing is paged ---------------------------------------


def test_a_member_folder_is_listed_a_page_at_a_time(alice_client, run):
    member = run.members.get(name="sweep_0")
    folder = Path(member.cwd)
    folder.mkdir(parents=True)
    for i in range(450):
        (folder / f"f{i:04d}.dat").write_text("x")
    (folder / "sweep_0.out").write_text("hello")
    (folder / "sweep_0.err").write_text("oops")
    (folder / "sub").mkdir()
    page = alice_client.get(reverse("ensembles:member_run_detail", args=[member.pk])).content.decode()
    listed = re.findall(r">(f\d{4}\.dat)</a>", page)
    assert listed == [f"f{i:04d}.dat" for i in range(200)]
    assert "453 entries" in page
    next_url = reverse("ensembles:member_run_files", args=[member.pk]) + "?page=2"
    assert f'hx-get="{next_url}"' in page
    # the logs stay downloadable whatever page their files are on
    for stream, text in (("out", b"hello"), ("err", b"oops")):
        link = reverse("ensembles:member_run_file", args=[member.pk, f"sweep_0.{stream}"])
        assert f'href="{link}"' in page
        assert b"".join(alice_client.get(link).streaming_content) == text

    last = alice_client.get(reverse("ensembles:member_run_files", args=[member.pk]), {"page": 3}, HTTP_HX_REQUEST="true")
    html = last.content.decode()
    assert "<html" not in html and 'id="member-files"' in html
    assert re.findall(r">(f\d{4}\.dat)</a>", html) == [f"f{i:04d}.dat" for i in range(400, 450)]
    assert "sub/" in html and ">sweep_0.err</a>" in html and ">sweep_0.out</a>" in html
    assert "Page 3 of 3" in html and "?page=2" in html and "?page=4" not in html
    # pages past the end show the last one; nonsense shows the first
    assert alice_client.get(reverse("ensembles:member_run_files", args=[member.pk]), {"page": 99}).context["files"].page == 3
    assert alice_client.get(reverse("ensembles:member_run_files", args=[member.pk]), {"page": "x"}).context["files"].page == 1


def test_the_member_folder_listing_is_only_for_the_owner(bob_client, run):
    member = run.members.get(name="sweep_0")
    assert bob_client.get(reverse("ensembles:member_run_files", args=[member.pk])).status_code == 404


def test_a_member_folder_not_generated_yet_says_so(alice_client, run):
    member = run.members.get(name="sweep_0")
    page = alice_client.get(reverse("ensembles:member_run_detail", args=[member.pk])).content.decode()
    assert "Not generated yet." in page


# --- 6. the configured-file preview re-checks the allowed folders ---------------


def _form(**overrides):
    from tests.app.test_builder import form_data

    return form_data([("alpha", "1, 2")], **overrides)


@pytest.fixture
def swapped_folder(tmp_path, settings):
    """A file attached from a folder inside the allowed root; the folder is then swapped for a link to /etc."""
    root = tmp_path / "root"
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "passwd").write_text("alpha = ;alpha;\n")
    settings.FILE_ROOTS = [root]
    return root


def _swap_to_etc(root):
    (root / "conf").rename(root / "conf-old")
    (root / "conf").symlink_to("/etc")


def test_a_configured_file_whose_folder_now_leads_outside_the_roots_is_not_shown(alice_client, ensemble, swapped_folder):
    services.file_attach_path(owner=ensemble, path=str(swapped_folder / "conf" / "passwd"), action="configure")
    url = reverse("ensembles:ensemble_preview", args=[ensemble.pk])
    assert '<mark title="alpha">1</mark>' in alice_client.post(url, _form()).content.decode()
    _swap_to_etc(swapped_folder)
    html = alice_client.post(url, _form()).content.decode()
    assert "root:" not in html
    assert "now outside the folders files may be attached from" in html


def test_a_configured_folder_swapped_for_a_link_outside_the_roots_is_not_walked(alice_client, ensemble, swapped_folder):
    services.file_attach_path(owner=ensemble, path=str(swapped_folder / "conf"), action="configure")
    _swap_to_etc(swapped_folder)
    html = alice_client.post(reverse("ensembles:ensemble_preview", args=[ensemble.pk]), _form()).content.decode()
    assert "root:" not in html
    assert "now outside the folders files may be attached from" in html


def test_a_file_attached_through_a_folder_link_is_refused_once_the_link_leads_to_etc(alice_client, ensemble, swapped_folder):
    (swapped_folder / "link").symlink_to(swapped_folder / "conf")
    services.file_attach_path(owner=ensemble, path=str(swapped_folder / "link" / "passwd"), action="configure")
    attached = ensemble.files.get()
    attached.path = str(swapped_folder / "link" / "passwd")  # as stored before paths were resolved at attach time
    attached.save()
    (swapped_folder / "link").unlink()
    (swapped_folder / "link").symlink_to("/etc")
    html = alice_client.post(reverse("ensembles:ensemble_preview", args=[ensemble.pk]), _form()).content.decode()
    assert "root:" not in html
    assert "now outside the folders files may be attached from" in html


def test_the_attached_files_list_flags_a_file_that_now_leads_outside_the_roots(alice_client, ensemble, swapped_folder):
    services.file_attach_path(owner=ensemble, path=str(swapped_folder / "conf" / "passwd"), action="configure")
    page = alice_client.get(reverse("ensembles:ensemble_edit", args=[ensemble.pk])).content.decode()
    assert "now outside the folders" not in page
    _swap_to_etc(swapped_folder)
    page = alice_client.get(reverse("ensembles:ensemble_edit", args=[ensemble.pk])).content.decode()
    assert "now outside the folders files may be attached from" in page


def test_the_preview_checks_the_file_it_actually_opened(tmp_path):
    from ensembles import selectors

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f.txt").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with open(tmp_path / "link" / "f.txt", "rb") as handle:
        assert selectors._opened_path(handle, tmp_path / "link" / "f.txt") == (tmp_path / "real" / "f.txt").resolve()


def test_an_uploaded_configured_file_still_previews(alice_client, ensemble):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("in.txt", b"a = ;alpha;\n")
    services.file_attach_upload(owner=ensemble, uploaded_file=upload, action="configure", user=ensemble.experiment.owner)
    html = alice_client.post(reverse("ensembles:ensemble_preview", args=[ensemble.pk]), _form()).content.decode()
    assert '<mark title="alpha">1</mark>' in html
