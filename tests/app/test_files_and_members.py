from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from ensembles import services, views
from ensembles.models import AttachedFile, Member

pytestmark = pytest.mark.django_db


@pytest.fixture
def roots(tmp_path, settings):
    root = tmp_path / "shared"
    root.mkdir()
    settings.FILE_ROOTS = [root]
    settings.UPLOAD_DIR = tmp_path / "uploads"
    return root


def attach(client, ensemble, **data):
    return client.post(reverse("ensembles:file_attach", args=[ensemble.pk]), data)


def test_attaching_a_server_file_inside_the_allowed_folders(alice_client, ensemble, roots):
    (roots / "in.txt").write_text("a = ;alpha;")
    response = attach(alice_client, ensemble, action="configure", path=str(roots / "in.txt"))
    assert response.status_code == 200
    assert response["HX-Trigger"] == "files-changed"
    assert AttachedFile.objects.get().path == str(roots / "in.txt")


@pytest.mark.parametrize("path", ["/etc/passwd", "relative/in.txt", "{root}/../outside.txt", "{root}/missing.txt"])
def test_paths_outside_the_allowed_folders_or_missing_are_refused(alice_client, ensemble, roots, path):
    (roots.parent / "outside.txt").write_text("x")
    response = attach(alice_client, ensemble, action="copy", path=path.format(root=roots))
    assert response.status_code == 422
    assert response.context["attach_form"].errors["path"]
    assert not AttachedFile.objects.exists()


def test_a_symlink_pointing_outside_the_allowed_folders_is_refused(alice_client, ensemble, roots):
    (roots / "sneaky").symlink_to("/etc/passwd")
    response = attach(alice_client, ensemble, action="copy", path=str(roots / "sneaky"))
    assert response.status_code == 422
    assert "outside the folders" in " ".join(response.context["attach_form"].errors["path"])


def test_a_binary_file_cannot_be_configured_but_can_be_copied(alice_client, ensemble, roots):
    (roots / "data.bin").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    response = attach(alice_client, ensemble, action="configure", path=str(roots / "data.bin"))
    assert response.status_code == 422
    assert "not UTF-8 text" in " ".join(response.context["attach_form"].errors["path"])
    assert attach(alice_client, ensemble, action="copy", path=str(roots / "data.bin")).status_code == 200


def test_uploading_a_file_and_detaching_it_removes_the_upload(alice_client, ensemble, roots, settings,
                                                              django_capture_on_commit_callbacks):
    upload = SimpleUploadedFile("input.cfg", b"steps = ;alpha;\n")
    response = alice_client.post(
        reverse("ensembles:file_attach", args=[ensemble.pk]), {"action": "configure", "upload": upload}
    )
    assert response.status_code == 200
    attached = AttachedFile.objects.get()
    assert attached.uploaded and attached.path.startswith(str(settings.UPLOAD_DIR))
    stored = attached.path
    with django_capture_on_commit_callbacks(execute=True):  # the upload is removed once the detach commits
        alice_client.post(reverse("ensembles:file_detach", args=[attached.pk]))
    assert not AttachedFile.objects.exists()
    import os

    assert not os.path.exists(stored)


def test_attaching_needs_exactly_one_of_path_or_upload(alice_client, ensemble, roots):
    response = attach(alice_client, ensemble, action="copy")
    assert response.status_code == 422
    assert "either a server path or a file" in response.content.decode()


def test_adding_a_member_by_hand(alice_client, ensemble):
    response = alice_client.post(
        reverse("ensembles:member_create", args=[ensemble.pk]),
        {"name": "special", "params": 'alpha=99\nlabel="007"', "params_as_args": "alpha", "exe": "/bin/echo"},
    )
    assert response.status_code == 302
    member = Member.objects.get()
    assert member.ensemble == ensemble
    assert member.param_dict() == {"alpha": 99, "label": "007"}
    page = alice_client.get(reverse("ensembles:member_edit", args=[member.pk])).content.decode()
    assert 'label=&quot;007&quot;' in page


@pytest.mark.parametrize(
    "data, field, message",
    [
        ({"name": "sweep_3"}, "name", "reserved for the ensemble"),
        ({"name": "sweep"}, "name", "already the name of an ensemble"),
        ({"params": "novalue"}, "params", "name=value"),
        ({"params_as_args": "ghost"}, "params_as_args", "not a parameter"),
        ({"exe": ""}, "exe", "required"),
    ],
)
def test_member_errors_are_shown_next_to_their_field(alice_client, ensemble, data, field, message):
    body = {"name": "special", "params": "alpha=1", "params_as_args": "", "exe": "/bin/echo", **data}
    response = alice_client.post(reverse("ensembles:member_create", args=[ensemble.pk]), body)
    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors[field])
    assert not Member.objects.exists()


def test_standalone_models_belong_to_the_experiment(alice_client, experiment):
    alice_client.post(reverse("ensembles:model_create", args=[experiment.pk]), {"name": "baseline", "exe": "/bin/true"})
    model = Member.objects.get()
    assert model.ensemble is None
    page = alice_client.get(reverse("ensembles:experiment_detail", args=[experiment.pk])).content.decode()
    assert "baseline" in page


HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def added(experiment, ensemble):
    return services.member_save(experiment=experiment, ensemble=ensemble, spec={"name": "extra", "run_settings": {"exe": "/bin/true"}})


@pytest.fixture
def model(experiment):
    return services.member_save(experiment=experiment, spec={"name": "baseline", "run_settings": {"exe": "/bin/true"}})


@pytest.mark.parametrize("owner_name", ["added", "model"])
def test_detaching_a_file_of_a_member_or_model_shows_its_remaining_files(request, alice_client, roots, owner_name):
    owner = request.getfixturevalue(owner_name)
    for name in ("gone.txt", "kept.txt"):
        (roots / name).write_text("x")
    gone = services.file_attach_path(owner=owner, path=str(roots / "gone.txt"), action="copy")
    services.file_attach_path(owner=owner, path=str(roots / "kept.txt"), action="copy")
    page = alice_client.get(reverse("ensembles:member_edit", args=[owner.pk])).content.decode()
    assert reverse("ensembles:file_detach", args=[gone.pk]) in page  # the member page lists its own files
    response = alice_client.post(reverse("ensembles:file_detach", args=[gone.pk]), **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert "kept.txt" in html and "gone.txt" not in html
    assert "file_attach" not in html and 'class="attach-form"' not in html  # the ensemble's attach form is not offered
    assert list(owner.files.values_list("path", flat=True)) == [str(roots / "kept.txt")]


@pytest.mark.parametrize("owner_name", ["ensemble", "added", "model"])
def test_detaching_without_htmx_goes_back_to_the_owners_page(request, alice_client, roots, owner_name):
    owner = request.getfixturevalue(owner_name)
    (roots / "in.txt").write_text("x")
    attached = services.file_attach_path(owner=owner, path=str(roots / "in.txt"), action="copy")
    response = alice_client.post(reverse("ensembles:file_detach", args=[attached.pk]))
    page = "ensembles:ensemble_edit" if owner_name == "ensemble" else "ensembles:member_edit"
    assert response.status_code == 302 and response["Location"] == reverse(page, args=[owner.pk])
    assert not AttachedFile.objects.exists()


@pytest.mark.parametrize("owner_name", ["ensemble", "added", "model"])
def test_nothing_is_detached_or_removed_when_the_answer_fails(request, alice, alice_client, roots, owner_name, monkeypatch,
                                                             django_capture_on_commit_callbacks):
    owner = request.getfixturevalue(owner_name)
    upload = SimpleUploadedFile("input.cfg", b"steps = ;alpha;\n")
    attached = services.file_attach_upload(owner=owner, uploaded_file=upload, action="copy", user=alice)

    def broken(*args, **kwargs):
        raise RuntimeError("the fragment could not be rendered")

    monkeypatch.setattr(views, "_attached_files", broken)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError):
        alice_client.post(reverse("ensembles:file_detach", args=[attached.pk]), **HTMX)
    assert AttachedFile.objects.filter(pk=attached.pk).exists()
    assert Path(attached.path).exists()
