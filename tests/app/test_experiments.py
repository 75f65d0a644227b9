import pytest
from django.urls import reverse

from ensembles.models import Experiment

pytestmark = pytest.mark.django_db


def test_creating_an_experiment_redirects_to_it(alice_client, alice):
    response = alice_client.post(
        reverse("ensembles:experiment_create"), {"name": "lj-fluid", "description": "LJ", "cluster": ""}
    )
    experiment = Experiment.objects.get(owner=alice, name="lj-fluid")
    assert response.status_code == 302
    assert response["Location"] == reverse("ensembles:experiment_detail", args=[experiment.pk])


def test_a_duplicate_name_is_an_error_next_to_the_name(alice_client, experiment):
    response = alice_client.post(reverse("ensembles:experiment_create"), {"name": "heat", "cluster": ""})
    assert response.status_code == 200
    assert "You already have an experiment named" in response.context["form"].errors["name"][0]
    assert Experiment.objects.filter(name="heat").count() == 1


def test_two_users_may_use_the_same_experiment_name(bob_client, bob, experiment):
    bob_client.post(reverse("ensembles:experiment_create"), {"name": "heat", "cluster": ""})
    assert Experiment.objects.filter(name="heat").count() == 2


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "", "x" * 101, "sp ace"])
def test_names_that_are_not_safe_folder_names_are_refused(alice_client, name):
    response = alice_client.post(reverse("ensembles:experiment_create"), {"name": name, "cluster": ""})
    assert response.status_code == 200
    assert response.context["form"].errors["name"]
    assert not Experiment.objects.exists()


def test_an_unknown_cluster_is_refused(alice_client):
    response = alice_client.post(reverse("ensembles:experiment_create"), {"name": "x", "cluster": "9999"})
    assert response.context["form"].errors["cluster"]


def test_editing_and_deleting_an_experiment(alice_client, experiment):
    alice_client.post(
        reverse("ensembles:experiment_edit", args=[experiment.pk]), {"name": "heat2", "description": "", "cluster": ""}
    )
    experiment.refresh_from_db()
    assert (experiment.name, experiment.cluster) == ("heat2", None)
    assert b"Delete experiment" in alice_client.get(reverse("ensembles:experiment_delete", args=[experiment.pk])).content
    alice_client.post(reverse("ensembles:experiment_delete", args=[experiment.pk]))
    assert not Experiment.objects.filter(pk=experiment.pk).exists()


def test_experiment_page_lists_its_ensembles_with_member_counts(alice_client, experiment, ensemble):
    response = alice_client.get(reverse("ensembles:experiment_detail", args=[experiment.pk]))
    assert response.status_code == 200
    assert response.context["ensembles"][0].member_count == 6


def test_experiment_list_counts_only_standalone_models_as_models(alice_client, experiment, ensemble):
    from ensembles import services

    for name, owner in (("extra", ensemble), ("more", ensemble), ("baseline", None)):
        services.member_save(experiment=experiment, ensemble=owner, spec={"name": name, "run_settings": {"exe": "/bin/true"}})
    response = alice_client.get(reverse("ensembles:experiment_list"))
    listed = response.context["experiments"][0]
    assert (listed.ensemble_count, listed.model_count) == (1, 1)
    assert "<td>1</td>\n      <td>1</td>" in response.content.decode()


def test_an_experiment_with_an_active_run_is_not_deleted_until_the_run_is_stopped(alice_client, experiment, ensemble):
    from unittest import mock

    from django.utils import timezone

    from ensembles import services

    with mock.patch("ensembles.services._enqueue"):
        run = services.run_launch(user=experiment.owner, experiment=experiment)
    response = alice_client.post(reverse("ensembles:experiment_delete", args=[experiment.pk]), follow=True)
    assert Experiment.objects.filter(pk=experiment.pk).exists()
    assert "Run 1 of this experiment is still active: stop it first" in response.content.decode()
    run.finished = timezone.now()
    run.save()
    alice_client.post(reverse("ensembles:experiment_delete", args=[experiment.pk]))
    assert not Experiment.objects.filter(pk=experiment.pk).exists()
