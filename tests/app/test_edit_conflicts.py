"""Concurrent edits: a save from a form built on an older version of an ensemble, member
or model (another tab or session saved since) is refused as a conflict, never an overwrite;
and the admin's change forms edit run and batch settings through fields."""

import re
import threading

import pytest
from django import forms
from django.db import connection
from django.urls import reverse

from ensembles import services
from ensembles.models import Cluster, Ensemble, Member
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

CONFLICT = "was changed in another tab or by another session"


def posted(*forms_) -> dict:
    """The POST body a browser sends for these forms as they are rendered (bound or not)."""
    data = {}
    for form in forms_:
        for name, field in form.fields.items():
            bound = form[name]
            value = bound.value()
            if isinstance(field, forms.BooleanField) and not isinstance(field.widget, forms.HiddenInput):
                if value:
                    data[bound.html_name] = "on"
            else:
                data[bound.html_name] = "" if value is None else value
    return data


def builder_data(response, **changes) -> dict:
    formset = response.context["formset"]
    return {**posted(response.context["form"], formset.management_form, *formset.forms), **changes}


def member_data(response, **changes) -> dict:
    return {**posted(response.context["form"]), **changes}


def version_in(response) -> int:
    return int(re.search(r'name="version" value="(\d+)"', response.content.decode()).group(1))


@pytest.fixture
def added(experiment, ensemble):
    return services.member_save(experiment=experiment, ensemble=ensemble, spec={"name": "extra", "run_settings": {"exe": "/bin/true"}})


@pytest.fixture
def model(experiment):
    return services.member_save(experiment=experiment, spec={"name": "baseline", "run_settings": {"exe": "/bin/true"}})


# --- the builder ---------------------------------------------------------------


def test_of_two_tabs_on_one_version_the_first_save_wins_and_the_second_is_shown_the_conflict(alice_client, ensemble):
    url = reverse("ensembles:ensemble_edit", args=[ensemble.pk])
    first, second = alice_client.get(url), alice_client.get(url)
    assert version_in(first) == version_in(second) == ensemble.version == 1

    saved = alice_client.post(url, builder_data(first, exe="/bin/cat", description="from tab one"))
    assert saved.status_code == 302
    refused = alice_client.post(url, builder_data(second, exe_args="other --flag", description="from tab two"))

    assert refused.status_code == 200
    html = refused.content.decode()
    ensemble.refresh_from_db()
    assert (ensemble.run_settings["exe"], ensemble.run_settings["exe_args"], ensemble.description) == ("/bin/cat", ["run"], "from tab one")
    assert ensemble.version == 2
    at = re.search(rf"This ensemble {CONFLICT} at (\d\d:\d\d); your changes are not saved\. Review them against the current version below and save again\.", html)
    assert at and at.group(1) == f"{ensemble.updated:%H:%M}"  # TIME_ZONE is UTC
    form = refused.context["form"]
    assert (form["exe_args"].value(), form["description"].value(), form["exe"].value()) == ("other --flag", "from tab two", "/bin/echo")
    assert re.search(rf'href="{url}" target="_blank"', html)  # the current version, in a new tab
    differences = dict(refused.context["conflict"]["differences"])
    assert differences == {"Executable": "/bin/cat", "Arguments": "run", "Description": "from tab one"}
    assert version_in(refused) == 2

    again = alice_client.post(url, builder_data(refused))
    assert again.status_code == 302
    ensemble.refresh_from_db()
    assert (ensemble.run_settings["exe"], ensemble.run_settings["exe_args"], ensemble.description) == ("/bin/echo", ["other", "--flag"], "from tab two")
    assert ensemble.version == 3


def test_a_conflict_lists_changed_parameters_and_keeps_the_users_rows(alice_client, ensemble):
    url = reverse("ensembles:ensemble_edit", args=[ensemble.pk])
    first, second = alice_client.get(url), alice_client.get(url)
    alice_client.post(url, builder_data(first, **{"params-0-values": "1, 2, 3"}))
    refused = alice_client.post(url, builder_data(second, **{"params-1-values": '"q"'}))
    assert CONFLICT in refused.content.decode()
    assert refused.context["formset"].forms[1]["values"].value() == '"q"'
    assert dict(refused.context["conflict"]["differences"]) == {"Parameters": 'alpha = 1, 2, 3; beta = "x", "y", "z"'}
    assert Ensemble.objects.get().params[1]["values"] == '"x", "y", "z"'


def test_a_form_without_a_version_is_a_conflict_not_an_overwrite(alice_client, ensemble):
    url = reverse("ensembles:ensemble_edit", args=[ensemble.pk])
    data = builder_data(alice_client.get(url), exe="/bin/cat")
    del data["version"]  # a page rendered before versions existed
    response = alice_client.post(url, data)
    assert CONFLICT in response.content.decode()
    assert Ensemble.objects.get().run_settings["exe"] == "/bin/echo"
    assert alice_client.post(url, builder_data(response)).status_code == 302


def test_the_same_save_sent_twice_is_not_a_conflict(alice_client, ensemble):
    url = reverse("ensembles:ensemble_edit", args=[ensemble.pk])
    data = builder_data(alice_client.get(url), exe="/bin/cat")
    assert alice_client.post(url, data).status_code == 302
    assert alice_client.post(url, data).status_code == 302  # a double click: it changes nothing the first did not
    assert Ensemble.objects.get().version == 3


def test_a_conflict_with_other_errors_shows_both_and_saves_nothing(alice_client, ensemble):
    url = reverse("ensembles:ensemble_edit", args=[ensemble.pk])
    first, second = alice_client.get(url), alice_client.get(url)
    alice_client.post(url, builder_data(first, exe="/bin/cat"))
    response = alice_client.post(url, builder_data(second, time="soon"))
    assert response.status_code == 200
    assert response.context["form"].errors["time"]  # the form's own error first: the service never ran
    assert Ensemble.objects.get().run_settings["exe"] == "/bin/cat"


@pytest.mark.parametrize("owner_name, kind", [("added", "member"), ("model", "model")])
def test_members_and_models_conflict_the_same_way(request, alice_client, owner_name, kind):
    member = request.getfixturevalue(owner_name)
    url = reverse("ensembles:member_edit", args=[member.pk])
    first, second = alice_client.get(url), alice_client.get(url)
    assert alice_client.post(url, member_data(first, params="x=1")).status_code == 302
    refused = alice_client.post(url, member_data(second, env_vars="MODE=fast"))

    assert refused.status_code == 200
    html = refused.content.decode()
    # A member keeps no time of its last change: the message cannot say when.
    assert f"This {kind} {CONFLICT}; your changes are not saved." in html
    member.refresh_from_db()
    assert (member.params, member.run_settings["env_vars"], member.version) == ([{"name": "x", "value": 1}], {}, 2)
    assert refused.context["form"]["env_vars"].value() == "MODE=fast"
    assert dict(refused.context["conflict"]["differences"]) == {"Parameters": "x=1", "Environment": None}

    assert alice_client.post(url, member_data(refused)).status_code == 302
    member.refresh_from_db()
    assert (member.params, member.run_settings["env_vars"], member.version) == ([], {"MODE": "fast"}, 3)


# --- the services --------------------------------------------------------------


def test_every_save_takes_the_next_version_and_a_stale_one_is_refused(experiment, ensemble):
    assert ensemble.version == 1
    services.ensemble_save(experiment=experiment, ensemble=ensemble, spec={"description": "no form: no check"})
    assert Ensemble.objects.get().version == ensemble.version == 2
    stale = Ensemble.objects.get()
    services.ensemble_save(experiment=experiment, ensemble=ensemble, spec={"replicas": 2}, expected_version=2)
    with pytest.raises(services.EditConflict) as conflict:
        services.ensemble_save(experiment=experiment, ensemble=stale, spec={"replicas": 4}, expected_version=2)
    assert conflict.value.current.version == 3 and conflict.value.changed == ["replicas"]
    assert Ensemble.objects.get().replicas == 2
    demo = services.demo_create(user=experiment.owner)
    assert [e.version for e in demo.ensembles.all()] == [1]


@pytest.mark.django_db(transaction=True)
def test_of_two_simultaneous_saves_from_one_version_exactly_one_is_kept(experiment, ensemble):
    """Each thread has its own database connection: the row lock (SQLite: its write lock)
    orders them, and the one that comes second sees the first one's version."""
    start, outcomes = threading.Barrier(2), []

    def save(exe):
        try:
            start.wait()
            services.ensemble_save(
                experiment=experiment, ensemble=Ensemble.objects.get(), spec={"run_settings": {"exe": exe}}, expected_version=1
            )
            outcomes.append(("saved", exe))
        except services.EditConflict:
            outcomes.append(("conflict", exe))
        finally:
            connection.close()

    threads = [threading.Thread(target=save, args=(exe,)) for exe in ("/bin/a", "/bin/b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(kind for kind, _ in outcomes) == ["conflict", "saved"]
    kept = next(exe for kind, exe in outcomes if kind == "saved")
    ensemble.refresh_from_db()
    assert (ensemble.run_settings["exe"], ensemble.version) == (kept, 2)


# --- the admin -----------------------------------------------------------------


@pytest.fixture
def admin_client(django_user_model):
    from django.test import Client

    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", password=PASSWORD))
    return client


def admin_data(response, **changes) -> dict:
    forms_ = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        forms_ += [inline.formset.management_form, *inline.formset.forms]
    return {**posted(*forms_), **changes}


def admin_url(obj) -> str:
    return reverse(f"admin:ensembles_{obj._meta.model_name}_change", args=[obj.pk])


def test_the_admin_edits_settings_through_fields_and_takes_the_next_version(admin_client, ensemble):
    page = admin_client.get(admin_url(ensemble))
    html = page.content.decode()
    assert 'name="run_settings"' not in html and 'name="batch_settings"' not in html  # no raw JSON
    assert re.search(r'name="exe" value="/bin/echo"', html) and re.search(r'name="exe_args" value="run"', html)
    assert re.search(r'type="hidden" name="version" value="1"', html)

    data = admin_data(page, exe_args="run 'two words'", run_command="mpirun", run_args="np=4\n--oversubscribe", env_vars="OMP_NUM_THREADS=2")
    response = admin_client.post(admin_url(ensemble), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    ensemble.refresh_from_db()
    assert ensemble.run_settings == {
        "exe": "/bin/echo",
        "exe_args": ["run", "two words"],
        "env_vars": {"OMP_NUM_THREADS": "2"},
        "run_command": "mpirun",
        "run_args": {"np": "4", "--oversubscribe": None},
    }
    assert ensemble.version == 2


def test_the_admin_edits_batch_settings_of_a_batch_experiment(admin_client, alice):
    experiment = services.experiment_create(owner=alice, name="cluster", cluster=Cluster.objects.create(name="hpc", scheduler="slurm"))
    ensemble = services.ensemble_save(experiment=experiment, spec={"name": "e", "run_settings": {"exe": "/bin/true"}})
    page = admin_client.get(admin_url(ensemble))
    response = admin_client.post(admin_url(ensemble), admin_data(page, nodes="2", time="1:30:00", queue="debug", batch_args="mem=4G\nexclusive"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    ensemble.refresh_from_db()
    assert ensemble.batch_settings == {"nodes": 2, "time": "1:30:00", "account": "", "queue": "debug", "batch_args": {"mem": "4G", "exclusive": None}}
    page = admin_client.get(admin_url(ensemble)).content.decode()
    assert 'name="time" value="1:30:00"' in page and "mem=4G\nexclusive</textarea>" in page


@pytest.mark.parametrize("field, value, message", [
    ("exe", "", "This field is required."),
    ("exe_args", "'unbalanced", "Cannot split the arguments"),
    ("env_vars", "9LIVES=1", "is not a valid environment variable name"),
    ("env_vars", "no equals sign", "line 1: write NAME=value"),
    ("run_args", "bad name!=1", "is not a valid option name"),
    ("nodes", "0", "greater than or equal to 1"),
])
def test_the_admin_refuses_bad_settings_next_to_the_field(admin_client, ensemble, field, value, message):
    page = admin_client.get(admin_url(ensemble))
    response = admin_client.post(admin_url(ensemble), admin_data(page, **{field: value}))
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert message in " ".join(form.errors[field])
    assert re.search(rf'class="form-row errors field-{field}">\s*<ul class="errorlist"', response.content.decode())
    assert Ensemble.objects.get().version == 1


def test_the_admin_shows_a_model_rule_on_the_settings_on_top(admin_client, ensemble):
    page = admin_client.get(admin_url(ensemble))
    response = admin_client.post(admin_url(ensemble), admin_data(page, time="1:00:00"))  # batch settings, local launcher
    assert response.status_code == 200
    assert "The local launcher does not support batch workloads" in " ".join(response.context["adminform"].form.non_field_errors())
    assert Ensemble.objects.get().batch_settings is None


def test_the_admin_walltime_is_checked_next_to_its_field(admin_client, alice):
    experiment = services.experiment_create(owner=alice, name="cluster", cluster=Cluster.objects.create(name="hpc", scheduler="slurm"))
    ensemble = services.ensemble_save(experiment=experiment, spec={"name": "e", "run_settings": {"exe": "/bin/true"}})
    page = admin_client.get(admin_url(ensemble))
    response = admin_client.post(admin_url(ensemble), admin_data(page, time="soon"))
    assert "use a walltime such as" in " ".join(response.context["adminform"].form.errors["time"])


def test_an_admin_save_makes_a_builder_form_built_earlier_conflict(admin_client, alice_client, ensemble):
    builder_url = reverse("ensembles:ensemble_edit", args=[ensemble.pk])
    builder = alice_client.get(builder_url)
    page = admin_client.get(admin_url(ensemble))
    assert admin_client.post(admin_url(ensemble), admin_data(page, exe="/bin/cat")).status_code == 302
    refused = alice_client.post(builder_url, builder_data(builder, description="mine"))
    assert CONFLICT in refused.content.decode()
    assert dict(refused.context["conflict"]["differences"]) == {"Executable": "/bin/cat", "Description": None}
    assert Ensemble.objects.get().run_settings["exe"] == "/bin/cat"


def test_a_builder_save_makes_an_admin_form_built_earlier_conflict(admin_client, alice_client, ensemble):
    page = admin_client.get(admin_url(ensemble))
    builder_url = reverse("ensembles:ensemble_edit", args=[ensemble.pk])
    alice_client.post(builder_url, builder_data(alice_client.get(builder_url), exe="/bin/cat"))
    refused = admin_client.post(admin_url(ensemble), admin_data(page, replicas="3"))
    assert refused.status_code == 200
    errors = " ".join(refused.context["adminform"].form.non_field_errors())
    assert f"This ensemble {CONFLICT} at" in errors and "differs from yours in: Replicas, Executable" in errors
    assert (Ensemble.objects.get().replicas, Ensemble.objects.get().run_settings["exe"]) == (1, "/bin/cat")
    assert admin_client.post(admin_url(ensemble), admin_data(refused)).status_code == 302  # now over version 2
    ensemble.refresh_from_db()
    assert (ensemble.replicas, ensemble.run_settings["exe"], ensemble.version) == (3, "/bin/echo", 3)


def test_the_admin_edits_a_members_settings_and_checks_its_version(admin_client, alice_client, added):
    page = admin_client.get(admin_url(added))
    assert admin_client.post(admin_url(added), admin_data(page, env_vars="A=1")).status_code == 302
    added.refresh_from_db()
    assert (added.run_settings["env_vars"], added.version) == ({"A": "1"}, 2)
    refused = admin_client.post(admin_url(added), admin_data(page, exe="/bin/false"))  # the page of version 1
    assert "This member " + CONFLICT in " ".join(refused.context["adminform"].form.non_field_errors())
    assert Member.objects.get().run_settings["exe"] == "/bin/true"


def test_the_admin_lists_ensembles_and_members_with_their_owner(admin_client, ensemble, added, bob):
    services.ensemble_save(experiment=services.experiment_create(owner=bob, name="b"), spec={"name": "other", "run_settings": {"exe": "/bin/true"}})
    listed = admin_client.get("/admin/ensembles/ensemble/", {"experiment__owner__id__exact": bob.pk}).context["cl"].result_list
    assert [e.name for e in listed] == ["other"]
    assert "alice" in admin_client.get("/admin/ensembles/member/").content.decode()
    assert admin_client.get("/admin/ensembles/run/", {"experiment__owner__id__exact": bob.pk}).status_code == 200
    experiment_page = admin_client.get(reverse("admin:ensembles_experiment_change", args=[ensemble.experiment_id])).content.decode()
    assert 'name="ensembles-0-name"' not in experiment_page  # ensembles are listed there, edited on their own page


def test_the_admin_adds_an_ensemble_through_the_same_fields(admin_client, experiment):
    page = admin_client.get(reverse("admin:ensembles_ensemble_add"))
    data = admin_data(page, experiment=str(experiment.pk), name="fresh", params='[{"name": "x", "values": "1, 2"}]', exe="/bin/true", exe_args="-v")
    response = admin_client.post(reverse("admin:ensembles_ensemble_add"), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    created = Ensemble.objects.get(name="fresh")
    assert (created.run_settings["exe_args"], created.batch_settings, created.version) == (["-v"], None, 1)
