"""Launching a chosen part of an experiment, several active runs that share no entity,
deleting runs (their folders and rows, in the background) and re-runs that undo their
folder moves when they fail. No worker: tasks are called here as the worker would."""

import re
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from ensembles import services
from ensembles.models import MemberRun, MemberStatus, Run, StatusEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def second(experiment):
    """A second ensemble and a standalone model beside the `sweep` ensemble of 6 members."""
    services.ensemble_save(experiment=experiment, spec={"name": "other", "params": [{"name": "n", "values": "1, 2"}],
                                                        "run_settings": {"exe": "/bin/true"}})
    services.member_save(experiment=experiment, spec={"name": "baseline", "run_settings": {"exe": "/bin/true"}})


def launch(alice, experiment, entities=None):
    return services.run_launch(user=alice, experiment=experiment, entities=entities)


def finish(run, status=MemberStatus.COMPLETED):
    run.members.update(status=status, ended=timezone.now())
    Run.objects.filter(pk=run.pk).update(finished=timezone.now(), submit_state="submitted")
    run.refresh_from_db()


def make_folders(run):
    """What the runner would have generated: each member's folder with its output."""
    for member in run.members.all():
        Path(member.cwd).mkdir(parents=True, exist_ok=True)
        Path(member.stdout).write_text(f"{member.name} of run {run.number}\n")
    Path(run.work_dir).mkdir(parents=True, exist_ok=True)


# --- launching a part of an experiment ---------------------------------------


def test_a_launch_of_chosen_entities_creates_only_their_members(alice, experiment, ensemble, second):
    run = launch(alice, experiment, ["other", "baseline"])
    assert list(run.members.order_by("position").values_list("name", flat=True)) == ["other_0", "other_1", "baseline"]
    assert run.entities == ["other", "baseline"]


def test_runs_sharing_no_entity_are_active_at_once_and_an_overlap_is_refused(alice, experiment, ensemble, second):
    first = launch(alice, experiment, ["sweep"])
    other = launch(alice, experiment, ["other", "baseline"])
    assert (first.number, other.number) == (1, 2)
    with pytest.raises(ValidationError, match="Run 2 is still active with baseline: stop it"):
        launch(alice, experiment, ["baseline"])
    with pytest.raises(ValidationError, match="Run 1 is still active with sweep"):
        launch(alice, experiment)  # everything: sweep is busy
    finish(first)
    assert launch(alice, experiment, ["sweep"]).number == 3


def test_the_launch_form_ticks_free_entities_and_marks_busy_ones(alice, alice_client, experiment, ensemble, second):
    launch(alice, experiment, ["other"])
    html = alice_client.get(reverse("ensembles:experiment_detail", args=[experiment.pk])).content.decode()
    boxes = dict(re.findall(r'<input type="checkbox" name="entities" value="(\w+)"([^>]*)>', html))
    assert set(boxes) == {"sweep", "other", "baseline"}
    assert "checked" in boxes["sweep"] and "checked" in boxes["baseline"] and "checked" not in boxes["other"]
    assert "(in run 1)" in html


def test_the_launch_form_launches_what_is_ticked_and_refuses_nothing_ticked(alice_client, experiment, ensemble, second):
    url = reverse("ensembles:run_launch", args=[experiment.pk])
    response = alice_client.post(url, {"subset": "True"}, follow=True)
    assert "Choose at least one ensemble or model to launch." in response.content.decode()
    response = alice_client.post(url, {"subset": "True", "entities": ["gone"]}, follow=True)
    assert "gone is not an ensemble or model of this experiment" in response.content.decode()
    assert not Run.objects.exists()
    alice_client.post(url, {"subset": "True", "entities": ["baseline"]})
    assert list(Run.objects.get().members.values_list("name", flat=True)) == ["baseline"]


def test_a_rerun_is_refused_while_another_active_run_holds_its_entity(alice, experiment, ensemble):
    first = launch(alice, experiment)
    finish(first, MemberStatus.FAILED)
    launch(alice, experiment)  # run 2 of the same ensemble, active
    with pytest.raises(ValidationError, match="Run 2 is still active with sweep"):
        services.run_rerun(run=first)
    with pytest.raises(ValidationError, match="Run 2 is still active with sweep"):
        services.run_rerun_failed(run_id=first.pk)
    assert first.members.count() == 6


# --- deleting runs -------------------------------------------------------------


def test_deleting_an_active_run_is_refused(alice, alice_client, experiment, ensemble):
    run = launch(alice, experiment)
    response = alice_client.post(reverse("ensembles:run_delete", args=[run.pk]), follow=True)
    assert "Run 1 is still active: stop it first, then delete it." in response.content.decode()
    assert Run.objects.filter(pk=run.pk, deleting=False).exists()


def test_a_deleted_run_is_gone_at_once_and_its_files_and_rows_in_the_background(
    alice, alice_client, experiment, ensemble, django_capture_on_commit_callbacks
):
    kept, doomed = launch(alice, experiment), None
    finish(kept)
    doomed = launch(alice, experiment)
    finish(doomed)
    make_folders(kept)
    make_folders(doomed)
    with django_capture_on_commit_callbacks() as sent:
        response = alice_client.post(reverse("ensembles:run_delete", args=[doomed.pk]), follow=True)
    assert "Run 2 deleted; its files are being removed." in response.content.decode()
    assert len(sent) == 1  # run_purge
    assert alice_client.get(reverse("ensembles:run_detail", args=[doomed.pk])).status_code == 404
    member = doomed.members.first()
    assert alice_client.get(reverse("ensembles:member_run_detail", args=[member.pk])).status_code == 404
    assert "Run 2" not in alice_client.get(reverse("ensembles:experiment_detail", args=[experiment.pk])).content.decode()
    assert not Path(doomed.folder).exists() and not Path(doomed.work_dir).exists()  # moved to the trash at once

    services.run_purge(run_id=doomed.pk)  # the task
    assert not Run.objects.filter(pk=doomed.pk).exists()
    assert not MemberRun.objects.filter(run_id=doomed.pk).exists() and not StatusEvent.objects.filter(run_id=doomed.pk).exists()
    trash = Path(doomed.folder).parents[2] / ".trash"
    assert not trash.exists()
    for member in kept.members.all():  # the other run keeps every file
        assert Path(member.stdout).read_text() == f"{member.name} of run 1\n"
    services.run_purge(run_id=doomed.pk)  # a duplicate task changes nothing


def test_run_numbers_and_folders_are_never_reused_after_a_delete(alice, experiment, ensemble):
    first = launch(alice, experiment)
    finish(first)
    services.run_delete(run=first)
    services.run_purge(run_id=first.pk)
    again = launch(alice, experiment)
    assert again.number == 2 and again.folder.endswith("/runs/2")


def test_a_renamed_experiment_keeps_its_run_folders_from_a_new_one_of_its_old_name(alice, experiment, ensemble):
    old = launch(alice, experiment)
    services.experiment_update(experiment=experiment, name="renamed", description="", cluster=experiment.cluster)
    newcomer = services.experiment_create(owner=alice, name="heat")
    services.ensemble_save(experiment=newcomer, spec={"name": "sweep", "run_settings": {"exe": "/bin/true"}})
    fresh = launch(alice, newcomer)
    assert fresh.number == 1 and fresh.folder != old.folder and fresh.folder.startswith(old.folder + "-")


def test_a_lost_delete_is_sent_again_by_the_monitor(alice, experiment, ensemble, django_capture_on_commit_callbacks):
    run = launch(alice, experiment)
    finish(run)
    Run.objects.filter(pk=run.pk).update(deleting=True, enqueued_at=None)  # the broker was down
    with django_capture_on_commit_callbacks() as sent:
        services.runs_reconcile()
    assert len(sent) == 1 and Run.objects.get(pk=run.pk).enqueued_at is not None
    with django_capture_on_commit_callbacks() as sent:
        services.runs_reconcile()  # sent recently: not again
    assert not sent


def test_deleting_an_experiment_moves_its_run_folders_to_the_trash_and_empties_it(
    alice, alice_client, experiment, ensemble, django_capture_on_commit_callbacks
):
    run = launch(alice, experiment)
    finish(run)
    make_folders(run)
    with django_capture_on_commit_callbacks() as sent:
        alice_client.post(reverse("ensembles:experiment_delete", args=[experiment.pk]))
    assert not Run.objects.exists() and not Path(run.folder).exists()
    assert len(sent) == 1  # trash_empty
    trash = Path(run.folder).parents[2] / ".trash"
    assert (trash / f"run-{run.pk}").is_dir()
    services.trash_empty(run_as="", user_id=alice.pk)
    assert not trash.exists()


# --- re-runs: folder moves undone when the transaction fails --------------------


def test_a_rerun_that_fails_puts_the_old_attempts_folders_back(alice, experiment, ensemble, monkeypatch):
    run = launch(alice, experiment)
    finish(run, MemberStatus.FAILED)
    make_folders(run)

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(MemberRun.objects, "bulk_create", broken)
    with pytest.raises(RuntimeError):
        services.run_rerun_failed(run_id=run.pk)
    for member in run.members.all():
        assert member.latest and Path(member.stdout).read_text() == f"{member.name} of run 1\n"
    assert not list(Path(run.folder, "sweep").glob(".attempts/*"))


def test_editing_the_experiment_between_launches_keeps_its_run_numbers(alice, alice_client, experiment, ensemble):
    finish(launch(alice, experiment))
    stale = type(experiment).objects.get(pk=experiment.pk)  # a page's copy, read before the next launch
    finish(launch(alice, experiment))
    services.experiment_update(experiment=stale, name="heat", description="edited", cluster=stale.cluster)
    assert launch(alice, experiment).number == 3


@pytest.mark.parametrize("persona", ["bob_client", "charlie_client"])
def test_another_user_can_neither_see_nor_delete_a_run(request, persona, alice, experiment, ensemble):
    run = launch(alice, experiment)
    finish(run)
    client = request.getfixturevalue(persona)
    assert client.get(reverse("ensembles:run_delete", args=[run.pk])).status_code == 404
    assert client.post(reverse("ensembles:run_delete", args=[run.pk])).status_code == 404
    assert Run.objects.filter(pk=run.pk, deleting=False).exists()
