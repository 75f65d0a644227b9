"""Attaching server files: the browser of the allowed folders, relative paths, and
names that would clash in a member's folder."""

import os
import re
import time
from urllib.parse import quote

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from ensembles import generation, services
from ensembles.models import AttachedFile

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def roots(tmp_path, settings):
    """One allowed folder, ``shared``, beside a folder that is not allowed, ``private``."""
    root = tmp_path / "shared"
    (root / "inputs" / "deep").mkdir(parents=True)
    (root / "inputs" / "mesh.dat").write_bytes(b"x" * 2048)
    (root / "inputs" / "deep" / "more.txt").write_text("more")
    (root / "zeta.cfg").write_text("a = ;alpha;\n")
    (root / "Alpha.txt").write_text("A")
    (root / ".secret-settings").write_text("hidden")
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret.txt").write_text("secret")
    settings.FILE_ROOTS = [root]
    return root


def browse(client, **params):
    return client.get(reverse("ensembles:file_browse"), params, **HTMX)


def attach(client, ensemble, **data):
    return client.post(reverse("ensembles:file_attach", args=[ensemble.pk]), data, **HTMX)


def path_error(response) -> str:
    return " ".join(response.context["attach_form"].errors.get("path", []))


def picks(html: str) -> list[str]:
    """The paths the browser offers to put in the path field, in order."""
    return re.findall(r'data-attach-path="([^"]*)"', html)


# --- the browser ------------------------------------------------------------------


def test_the_browser_lists_a_folder_folders_first_with_sizes(alice_client, roots):
    response = browse(alice_client)  # one allowed folder: it opens there
    assert response.status_code == 200
    listing = response.context["listing"]
    assert listing.folder == roots.resolve()
    assert [(e.name, e.is_dir) for e in listing.entries] == [("inputs", True), ("Alpha.txt", False), ("zeta.cfg", False)]
    assert [e.size for e in listing.entries] == [None, 1, 12]
    assert all(e.modified for e in listing.entries)
    html = response.content.decode()
    assert picks(html) == [str(roots), str(roots / "inputs"), str(roots / "Alpha.txt"), str(roots / "zeta.cfg")]
    assert f'hx-get="{reverse("ensembles:file_browse")}?path={quote(str(roots / "inputs"))}"' in html


def test_entering_a_folder_shows_its_entries_and_a_breadcrumb_back_up(alice_client, roots):
    response = browse(alice_client, path=str(roots / "inputs" / "deep"))
    assert response.status_code == 200
    listing = response.context["listing"]
    assert [e.name for e in listing.entries] == ["more.txt"]
    assert [label for label, _ in listing.crumbs] == [str(roots), "inputs", "deep"]
    html = response.content.decode()
    for folder in (roots, roots / "inputs"):  # every level above is a link
        assert f'?path={quote(str(folder))}"' in html
    assert "<strong>deep</strong>" in html


def test_a_relative_folder_is_browsed_inside_the_root(alice_client, roots):
    assert browse(alice_client, path="inputs").context["listing"].folder == (roots / "inputs").resolve()


def test_hidden_entries_are_left_out_unless_asked_for(alice_client, roots):
    response = browse(alice_client)
    assert ".secret-settings" not in response.content.decode()
    assert "1 hidden entry" in response.content.decode()
    shown = browse(alice_client, path=str(roots), hidden="1").context["listing"]
    assert ".secret-settings" in [e.name for e in shown.entries]


def test_the_filter_narrows_the_listing(alice_client, roots):
    listing = browse(alice_client, path=str(roots), q="ALP").context["listing"]
    assert [e.name for e in listing.entries] == ["Alpha.txt"]


def test_several_roots_are_listed_first(alice_client, roots, tmp_path, settings):
    other = tmp_path / "other"
    other.mkdir()
    settings.FILE_ROOTS = [roots, other]
    listing = browse(alice_client).context["listing"]
    assert listing.folder is None
    assert [e.path for e in listing.entries] == [str(roots.resolve()), str(other.resolve())]


@pytest.mark.parametrize(
    "path",
    ["/etc", "{root}/..", "{root}/../private", "..", "../private", "inputs/../../private", "{root}/escape", "escape",
     "{root}/missing", "{root}/zeta.cfg"],
)
def test_the_browser_refuses_anything_outside_the_roots_or_not_a_folder(alice_client, roots, path):
    (roots / "escape").symlink_to(roots.parent / "private", target_is_directory=True)
    response = browse(alice_client, path=path.format(root=roots))
    assert response.status_code == 422
    html = response.content.decode()
    assert "secret.txt" not in html and "passwd" not in html
    assert re.search(r"outside the folders|does not exist|not a folder|in none of the folders", response.context["browse_error"])
    assert 'role="alert"' in html


def test_a_link_leading_out_is_shown_but_not_offered(alice_client, roots):
    (roots / "escape").symlink_to(roots.parent / "private", target_is_directory=True)
    (roots / "gone").symlink_to(roots / "nowhere")
    (roots / "inside-link").symlink_to(roots / "zeta.cfg")
    (roots / "loop").symlink_to(roots / "loop")
    response = browse(alice_client)
    entries = {e.name: e for e in response.context["listing"].entries}
    assert entries["escape"].refused == "a link leading outside the allowed folders"
    assert entries["escape"].size is None and entries["escape"].modified is not None  # the link's own time, not the target's
    assert entries["gone"].refused == entries["loop"].refused == "a broken link"
    assert not entries["inside-link"].refused
    offered = picks(response.content.decode())
    assert str(roots / "inside-link") in offered
    assert str(roots / "escape") not in offered and str(roots / "gone") not in offered


def test_the_browser_needs_a_login(client, roots):
    response = client.get(reverse("ensembles:file_browse"))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_without_roots_only_uploads_are_offered(alice_client, ensemble, roots, settings):
    settings.FILE_ROOTS = []
    response = browse(alice_client)
    assert response.status_code == 422
    assert "only uploads are possible" in response.context["browse_error"]
    page = alice_client.get(reverse("ensembles:ensemble_edit", args=[ensemble.pk])).content.decode()
    assert "only uploads are possible" in page
    assert 'name="path"' not in page and "Browse the server folders" not in page


def test_the_form_names_the_allowed_folders(alice_client, ensemble, roots):
    page = alice_client.get(reverse("ensembles:ensemble_edit", args=[ensemble.pk])).content.decode()
    assert f"<code>{roots}</code>" in page
    assert "Browse the server folders" in page


def test_a_huge_folder_is_capped(alice_client, roots):
    big = roots / "big"
    big.mkdir()
    for i in range(100_000):
        os.close(os.open(big / f"f{i:06d}.dat", os.O_CREAT | os.O_WRONLY))
    (big / "zz-folder").mkdir()
    started = time.perf_counter()
    response = browse(alice_client, path=str(big))
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    listing = response.context["listing"]
    assert len(listing.entries) == generation.BROWSE_LIMIT == 500
    assert listing.entries[0].name == "zz-folder"  # folders first, over the whole folder
    assert [e.name for e in listing.entries[1:3]] == ["f000000.dat", "f000001.dat"]
    assert listing.matched == 100_001
    assert "Showing the first 500 of 100,001 entries" in response.content.decode()
    print(f"browsing 100,001 entries: {elapsed * 1000:.0f} ms")


def test_a_folder_past_the_scan_limit_says_so(alice_client, roots, monkeypatch):
    monkeypatch.setattr(generation, "BROWSE_SCAN_LIMIT", 2)
    response = browse(alice_client, path=str(roots))
    assert response.context["listing"].scan_capped
    assert "holds more entries than are read" in response.content.decode()


# --- attaching by a path relative to an allowed folder ---------------------------


def test_a_path_relative_to_an_allowed_folder_is_attached(alice_client, ensemble, roots):
    response = attach(alice_client, ensemble, action="copy", path="inputs/mesh.dat")
    assert response.status_code == 200
    assert AttachedFile.objects.get().path == str((roots / "inputs" / "mesh.dat").resolve())


def test_a_relative_path_is_looked_up_in_every_root_and_ambiguity_is_refused(alice_client, ensemble, roots, tmp_path, settings):
    other = tmp_path / "other"
    (other / "inputs").mkdir(parents=True)
    (other / "inputs" / "only-here.dat").write_text("o")
    settings.FILE_ROOTS = [roots, other]
    assert attach(alice_client, ensemble, action="copy", path="inputs/only-here.dat").status_code == 200
    assert AttachedFile.objects.get().path == str((other / "inputs" / "only-here.dat").resolve())

    (other / "inputs" / "mesh.dat").write_text("another mesh")
    response = attach(alice_client, ensemble, action="copy", path="inputs/mesh.dat")
    assert response.status_code == 422
    assert path_error(response) == (
        f"inputs/mesh.dat is in more than one allowed folder ({roots.resolve()}, {other.resolve()}): give its absolute path."
    )


@pytest.mark.parametrize("path", ["../private/secret.txt", "inputs/../../private/secret.txt", "escape/secret.txt"])
def test_a_relative_path_cannot_climb_out(alice_client, ensemble, roots, path):
    (roots / "escape").symlink_to(roots.parent / "private", target_is_directory=True)
    response = attach(alice_client, ensemble, action="copy", path=path)
    assert response.status_code == 422
    assert "outside the folders" in path_error(response)
    assert not AttachedFile.objects.exists()


def test_after_an_attach_the_browser_stays_in_its_folder(alice_client, ensemble, roots):
    response = attach(alice_client, ensemble, action="copy", path=str(roots / "inputs" / "mesh.dat"), browse=str(roots / "inputs"))
    assert response.status_code == 200
    assert response.context["listing"].folder == (roots / "inputs").resolve()
    assert 'id="file-browser" class="file-browser"' in response.content.decode()


# --- names that would clash in a member's folder ---------------------------------


@pytest.fixture
def elsewhere(roots):
    """A second zeta.cfg and a folder holding one, in another folder of the root."""
    (roots / "b").mkdir()
    (roots / "b" / "zeta.cfg").write_text("b = ;alpha;\n")
    (roots / "case").mkdir()
    (roots / "case" / "zeta.cfg").write_text("c = 1\n")
    (roots / "case" / "other.txt").write_text("o")
    return roots


@pytest.mark.parametrize("first", ["copy", "symlink", "configure"])
@pytest.mark.parametrize("second", ["copy", "symlink", "configure"])
def test_two_files_landing_on_one_name_are_refused_whatever_their_actions(alice_client, ensemble, elsewhere, first, second):
    assert attach(alice_client, ensemble, action=first, path=str(elsewhere / "zeta.cfg")).status_code == 200
    response = attach(alice_client, ensemble, action=second, path=str(elsewhere / "b" / "zeta.cfg"))
    assert response.status_code == 422
    assert path_error(response) == (
        f"zeta.cfg is already attached ({first} of {elsewhere / 'zeta.cfg'}). Detach it first, or rename one of them."
    )
    assert AttachedFile.objects.count() == 1


def test_the_same_file_cannot_be_attached_twice(alice_client, ensemble, elsewhere):
    attach(alice_client, ensemble, action="copy", path=str(elsewhere / "zeta.cfg"))
    response = attach(alice_client, ensemble, action="symlink", path="zeta.cfg")
    assert "zeta.cfg is already attached (copy of" in path_error(response)


@pytest.mark.parametrize("action", ["copy", "configure"])
def test_a_folder_whose_contents_land_clashes_by_its_top_level_names(alice_client, ensemble, elsewhere, action):
    assert attach(alice_client, ensemble, action="copy", path=str(elsewhere / "zeta.cfg")).status_code == 200
    response = attach(alice_client, ensemble, action=action, path=str(elsewhere / "case"))
    assert response.status_code == 422
    assert path_error(response) == (
        "The contents of case/ clash with what each member folder already gets: "
        f"zeta.cfg is already attached (copy of {elsewhere / 'zeta.cfg'}). Detach it first, or rename one of them."
    )


def test_a_file_clashing_with_a_copied_folders_contents_is_refused(alice_client, ensemble, elsewhere):
    assert attach(alice_client, ensemble, action="copy", path=str(elsewhere / "case")).status_code == 200
    response = attach(alice_client, ensemble, action="symlink", path=str(elsewhere / "b" / "zeta.cfg"))
    assert path_error(response) == (
        f"zeta.cfg is already attached (copy of the contents of {elsewhere / 'case'}/). Detach it first, or rename one of them."
    )


def test_a_symlinked_folder_lands_by_its_own_name(alice_client, ensemble, elsewhere):
    assert attach(alice_client, ensemble, action="symlink", path=str(elsewhere / "case")).status_code == 200
    assert attach(alice_client, ensemble, action="copy", path=str(elsewhere / "zeta.cfg")).status_code == 200  # no clash
    (elsewhere / "b" / "case").write_text("a file named like the link")
    response = attach(alice_client, ensemble, action="copy", path=str(elsewhere / "b" / "case"))
    assert path_error(response).startswith(f"case is already attached (symlink of {elsewhere / 'case'})")


def test_a_hand_added_member_clashes_with_its_ensembles_files_both_ways(alice_client, experiment, ensemble, elsewhere):
    extra = services.member_save(experiment=experiment, ensemble=ensemble, spec={"name": "extra", "run_settings": {"exe": "/bin/true"}})
    services.file_attach_path(owner=ensemble, path=str(elsewhere / "zeta.cfg"), action="configure")
    with pytest.raises(ValidationError) as refused:
        services.file_attach_path(owner=extra, path=str(elsewhere / "b" / "zeta.cfg"), action="copy")
    assert refused.value.message_dict["path"] == [
        f"zeta.cfg is already attached (configure of {elsewhere / 'zeta.cfg'}, attached to its ensemble sweep). "
        "Detach it first, or rename one of them."
    ]
    services.file_attach_path(owner=extra, path=str(elsewhere / "Alpha.txt"), action="copy")
    (elsewhere / "b" / "Alpha.txt").write_text("B")
    response = attach(alice_client, ensemble, action="symlink", path=str(elsewhere / "b" / "Alpha.txt"))
    assert path_error(response) == (
        f"Alpha.txt is already attached (copy of {elsewhere / 'Alpha.txt'}, attached to the member extra, which gets the "
        "ensemble's files too). Detach it first, or rename one of them."
    )


def test_a_standalone_model_does_not_get_an_ensembles_files(experiment, ensemble, elsewhere):
    model = services.member_save(experiment=experiment, spec={"name": "baseline", "run_settings": {"exe": "/bin/true"}})
    services.file_attach_path(owner=ensemble, path=str(elsewhere / "zeta.cfg"), action="copy")
    services.file_attach_path(owner=model, path=str(elsewhere / "b" / "zeta.cfg"), action="copy")
    with pytest.raises(ValidationError, match="zeta.cfg is already attached"):
        services.file_attach_path(owner=model, path=str(elsewhere / "zeta.cfg"), action="symlink")


def test_an_upload_clashing_with_an_attached_file_is_refused_and_not_kept(alice_client, ensemble, elsewhere, settings):
    attach(alice_client, ensemble, action="copy", path=str(elsewhere / "zeta.cfg"))
    upload = SimpleUploadedFile("zeta.cfg", b"uploaded\n")
    response = alice_client.post(
        reverse("ensembles:file_attach", args=[ensemble.pk]), {"action": "copy", "upload": upload}, **HTMX
    )
    assert response.status_code == 422
    assert " ".join(response.context["attach_form"].errors["upload"]).startswith("zeta.cfg is already attached (copy of")
    assert AttachedFile.objects.count() == 1
    assert not any(files for _, _, files in os.walk(settings.UPLOAD_DIR))  # the refused upload is not left behind


def test_an_uploaded_file_is_named_as_such_in_a_clash(alice, alice_client, ensemble, elsewhere):
    services.file_attach_upload(owner=ensemble, uploaded_file=SimpleUploadedFile("zeta.cfg", b"u"), action="copy", user=alice)
    response = attach(alice_client, ensemble, action="copy", path=str(elsewhere / "zeta.cfg"))
    assert path_error(response).startswith("zeta.cfg is already attached (copy of the uploaded zeta.cfg)")


@pytest.mark.parametrize(
    "name, message",
    [
        ("flotilla_params.json", "'flotilla_params.json' is written by Flotilla for every member"),
        ("sweep_0.out", "sweep_0.out is the name of the member sweep_0's output"),
        ("sweep_12.err", "sweep_12.err is the name of the member sweep_12's output"),
        ("extra.out", "extra.out is the name of the member extra's output"),
    ],
)
def test_flotillas_own_names_are_refused_also_inside_a_copied_folder(alice_client, experiment, ensemble, roots, name, message):
    services.member_save(experiment=experiment, ensemble=ensemble, spec={"name": "extra", "run_settings": {"exe": "/bin/true"}})
    (roots / "plain").mkdir()
    (roots / "plain" / name).write_text("x")
    (roots / "holder").mkdir()
    (roots / "holder" / name).write_text("x")
    assert message in path_error(attach(alice_client, ensemble, action="copy", path=str(roots / "plain" / name)))
    folder = path_error(attach(alice_client, ensemble, action="copy", path=str(roots / "holder")))
    assert folder.startswith("The contents of holder/ clash") and message in folder
    assert not AttachedFile.objects.exists()


def test_another_users_ensemble_is_refused(bob_client, ensemble, roots):
    response = attach(bob_client, ensemble, action="copy", path="zeta.cfg")
    assert response.status_code == 404
    assert not AttachedFile.objects.exists()


def test_after_a_detach_the_browser_stays_in_its_folder(alice_client, ensemble, roots):
    attached = services.file_attach_path(owner=ensemble, path=str(roots / "zeta.cfg"), action="copy")
    response = alice_client.post(reverse("ensembles:file_detach", args=[attached.pk]), {"browse": str(roots / "inputs")}, **HTMX)
    assert response.status_code == 200
    assert response.context["listing"].folder == (roots / "inputs").resolve()
    assert not AttachedFile.objects.exists()


def test_every_clash_of_a_folder_is_named(alice_client, ensemble, elsewhere):
    (elsewhere / "b" / "other.txt").write_text("b")
    for name in ("zeta.cfg", "other.txt"):
        assert attach(alice_client, ensemble, action="copy", path=str(elsewhere / "b" / name)).status_code == 200
    response = attach(alice_client, ensemble, action="configure", path=str(elsewhere / "case"))
    assert path_error(response) == (
        f"The contents of case/ clash with what each member folder already gets: other.txt is already attached (copy of "
        f"{elsewhere / 'b' / 'other.txt'}); zeta.cfg is already attached (copy of {elsewhere / 'b' / 'zeta.cfg'}). "
        "Detach them first, or rename one of them."
    )
