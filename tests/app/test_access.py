"""Login is required everywhere but the login page and health check; objects of
other users are a 404 for every view, whatever their role in the app."""

import pytest
from django.urls import reverse

from ensembles import services
from ensembles.models import AttachedFile, Experiment
from tests.conftest import local_cluster
from launchers.base import JobState, JobStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def member(experiment, ensemble):
    return services.member_save(
        experiment=experiment, ensemble=ensemble, spec={"name": "extra", "run_settings": {"exe": "/bin/true"}}
    )


@pytest.fixture
def attached(ensemble, tmp_path, settings):
    settings.FILE_ROOTS = [tmp_path]
    (tmp_path / "in.txt").write_text("a = ;alpha;\n")
    return services.file_attach_path(owner=ensemble, path=str(tmp_path / "in.txt"), action="configure")


def owned_urls(experiment, ensemble, member, attached):
    """(method, url) of every view that acts on one of alice's objects."""
    return [
        ("get", reverse("ensembles:experiment_detail", args=[experiment.pk])),
        ("get", reverse("ensembles:experiment_edit", args=[experiment.pk])),
        ("post", reverse("ensembles:experiment_edit", args=[experiment.pk])),
        ("get", reverse("ensembles:experiment_delete", args=[experiment.pk])),
        ("post", reverse("ensembles:experiment_delete", args=[experiment.pk])),
        ("get", reverse("ensembles:ensemble_create", args=[experiment.pk])),
        ("post", reverse("ensembles:ensemble_create", args=[experiment.pk])),
        ("post", reverse("ensembles:ensemble_preview_new", args=[experiment.pk])),
        ("get", reverse("ensembles:model_create", args=[experiment.pk])),
        ("get", reverse("ensembles:ensemble_edit", args=[ensemble.pk])),
        ("post", reverse("ensembles:ensemble_edit", args=[ensemble.pk])),
        ("post", reverse("ensembles:ensemble_preview", args=[ensemble.pk])),
        ("get", reverse("ensembles:ensemble_delete", args=[ensemble.pk])),
        ("post", reverse("ensembles:ensemble_delete", args=[ensemble.pk])),
        ("post", reverse("ensembles:file_attach", args=[ensemble.pk])),
        ("get", reverse("ensembles:member_create", args=[ensemble.pk])),
        ("post", reverse("ensembles:member_create", args=[ensemble.pk])),
        ("get", reverse("ensembles:member_edit", args=[member.pk])),
        ("post", reverse("ensembles:member_edit", args=[member.pk])),
        ("post", reverse("ensembles:member_delete", args=[member.pk])),
        ("post", reverse("ensembles:file_detach", args=[attached.pk])),
    ]


def test_anonymous_users_are_sent_to_the_login_page(client, experiment, ensemble, member, attached):
    urls = owned_urls(experiment, ensemble, member, attached) + [
        ("get", reverse("ensembles:experiment_list")),
        ("get", reverse("ensembles:experiment_create")),
    ]
    for method, url in urls:
        response = getattr(client, method)(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login")), url


@pytest.mark.parametrize("persona", ["bob_client", "charlie_client"])
def test_other_users_get_404_for_every_object_of_alice(request, persona, experiment, ensemble, member, attached):
    other = request.getfixturevalue(persona)
    for method, url in owned_urls(experiment, ensemble, member, attached):
        response = getattr(other, method)(url)
        assert response.status_code == 404, (method, url, response.status_code)
    # and nothing of alice's changed
    assert Experiment.objects.filter(pk=experiment.pk).exists()
    assert AttachedFile.objects.filter(pk=attached.pk).exists()
    ensemble.refresh_from_db()
    assert ensemble.name == "sweep"


def test_experiment_list_shows_only_the_users_own_experiments(alice_client, bob, experiment):
    services.experiment_create(owner=bob, name="bobs-secret")
    response = alice_client.get(reverse("ensembles:experiment_list"))
    assert b"heat" in response.content
    assert b"bobs-secret" not in response.content


def test_login_page_logs_a_user_in_and_out(client, alice):
    from tests.conftest import PASSWORD

    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(reverse("ensembles:experiment_list")).status_code == 200
    client.post(reverse("logout"))
    assert client.get(reverse("ensembles:experiment_list")).status_code == 302


def test_wrong_password_shows_an_error_on_the_login_form(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content


def test_forms_refuse_posts_without_a_csrf_token(alice):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(reverse("ensembles:experiment_create"), {"name": "x", "cluster": ""})
    assert response.status_code == 403
    assert not Experiment.objects.filter(name="x").exists()


def test_staff_reach_the_admin_and_others_do_not(alice_client, charlie_client):
    assert charlie_client.get(reverse("admin:index")).status_code == 200
    response = alice_client.get(reverse("admin:index"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_health_check_needs_no_login_and_reports_only_the_overall_status(client):
    response = client.get(reverse("healthz"))
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}  # staff see the database and Redis: test_hardening.py


@pytest.fixture
def admin_viewer(charlie):
    """charlie, allowed to view (only) Flotilla's models in the admin."""
    from django.contrib.auth.models import Permission

    charlie.user_permissions.set(Permission.objects.filter(content_type__app_label="ensembles", codename__startswith="view_"))
    return charlie


def _launched(user, name: str):
    experiment = services.experiment_create(owner=user, name=name)
    services.ensemble_save(
        experiment=experiment,
        spec={"name": "sweep", "params": [{"name": "alpha", "values": "1, 2, 3"}], "run_settings": {"exe": "/bin/true"}},
    )
    run = services.run_launch(user=user, experiment=experiment)
    services.member_runs_apply({m.pk: JobStatus(JobState.FAILED, returncode=1, started=1.0, ended=2.0) for m in run.members.all()})
    return run


def test_staff_see_runs_members_and_events_in_the_admin_read_only(alice, admin_viewer, charlie_client):
    from ensembles.models import MemberRun, StatusEvent

    run = _launched(alice, "heat")
    member = run.members.first()
    event = StatusEvent.objects.first()
    pages = {
        "experiment": [("", {}), ("", {"owner__id__exact": alice.pk, "cluster__id__exact": local_cluster().pk})],
        "run": [("", {}), ("", {"submit_state__exact": "pending", "q": "heat"}), (f"{run.pk}/change/", {})],
        "memberrun": [("", {}), ("", {"status__exact": "Failed", "run": run.pk, "q": "sweep_1"}), (f"{member.pk}/change/", {})],
        "statusevent": [("", {}), ("", {"status__exact": "Failed", "run": run.pk}), (f"{event.pk}/change/", {})],
    }
    for model, urls in pages.items():
        for suffix, query in urls:
            response = charlie_client.get(f"/admin/ensembles/{model}/{suffix}", query)
            assert response.status_code == 200, (model, suffix, query)
            assert 'name="_save"' not in response.content.decode(), (model, suffix)  # view-only pages
    listed = charlie_client.get("/admin/ensembles/memberrun/", {"run": run.pk, "q": "sweep_1"}).context["cl"].result_list
    assert [m.name for m in listed] == ["sweep_1"]
    for model, pk in (("run", run.pk), ("memberrun", member.pk), ("statusevent", event.pk)):
        assert charlie_client.get(f"/admin/ensembles/{model}/add/").status_code == 403
        assert charlie_client.post(f"/admin/ensembles/{model}/{pk}/delete/", {"post": "yes"}).status_code == 403
        assert charlie_client.post(f"/admin/ensembles/{model}/{pk}/change/", {}).status_code == 403
    assert MemberRun.objects.count() == 3 and StatusEvent.objects.count() == 6


def test_admin_lists_make_as_many_queries_for_many_rows_as_for_few(alice, bob, admin_viewer, charlie_client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries(path):
        with CaptureQueriesContext(connection) as captured:
            assert charlie_client.get(path).status_code == 200
        return len(captured.captured_queries)

    paths = ["/admin/ensembles/experiment/", "/admin/ensembles/run/", "/admin/ensembles/memberrun/", "/admin/ensembles/statusevent/"]
    _launched(alice, "one")
    few = [queries(path) for path in paths]
    for user, name in ((alice, "two"), (bob, "three"), (bob, "four")):
        _launched(user, name)
    assert [queries(path) for path in paths] == few
