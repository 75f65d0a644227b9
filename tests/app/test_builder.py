"""The ensemble builder: saving, errors next to fields, and the live preview fragment."""

import re

import pytest
from django.urls import reverse

from ensembles import services
from ensembles.models import Cluster, Ensemble, Run

pytestmark = pytest.mark.django_db


def form_data(params=(), **overrides):
    """The POST body the builder sends: params are (name, values[, as_arg]) rows."""
    data = {
        "name": "sweep",
        "description": "",
        "perm_strategy": "all_perm",
        "n_models": "",
        "seed": "7",
        "replicas": "1",
        "exe": "/usr/bin/python3",
        "exe_args": "sim.py --steps 10",
        "run_command": "",
        "run_args": "",
        "env_vars": "",
        "nodes": "",
        "time": "",
        "account": "",
        "queue": "",
        "batch_args": "",
        "key_prefixing": "on",
        "tag": ";",
        "params-TOTAL_FORMS": str(len(params)),
        "params-INITIAL_FORMS": "0",
        "params-MIN_NUM_FORMS": "0",
        "params-MAX_NUM_FORMS": "1000",
    }
    for index, row in enumerate(params):
        data[f"params-{index}-name"] = row[0]
        data[f"params-{index}-values"] = row[1]
        if len(row) > 2 and row[2]:
            data[f"params-{index}-as_arg"] = "on"
    data.update(overrides)
    return data


def count_in(response) -> int:
    return int(re.search(rb'data-count="(\d+)"', response.content).group(1))


@pytest.fixture
def preview_new(alice_client, experiment):
    url = reverse("ensembles:ensemble_preview_new", args=[experiment.pk])
    return lambda data: alice_client.post(url, data)


def test_saving_an_ensemble_keeps_parameter_order_and_args(alice_client, experiment):
    response = alice_client.post(
        reverse("ensembles:ensemble_create", args=[experiment.pk]),
        form_data([("zeta", "1, 2", True), ("alpha", "range(0, 3)")]),
    )
    ensemble = Ensemble.objects.get(experiment=experiment)
    assert response.status_code == 302
    assert [row["name"] for row in ensemble.params] == ["zeta", "alpha"]
    assert ensemble.params_as_args == ["zeta"]
    assert ensemble.run_settings["exe_args"] == ["sim.py", "--steps", "10"]
    assert len(ensemble.space()) == 6
    assert ensemble.space()[1] == {"zeta": 1, "alpha": 1}


def test_bad_value_syntax_is_an_error_next_to_that_row_and_nothing_is_saved(alice_client, experiment):
    response = alice_client.post(
        reverse("ensembles:ensemble_create", args=[experiment.pk]),
        form_data([("a", "1, 2"), ("b", "range(1)")]),
    )
    assert response.status_code == 200
    html = response.content.decode()
    row_error = re.search(r'id="params-1-errors"[^>]*>([^<]*)<', html).group(1)
    assert "range() takes" in row_error
    assert re.search(r'id="params-0-errors"[^>]*>\s*<', html)
    assert not Ensemble.objects.exists()


def test_a_parameter_defined_twice_is_refused(alice_client, experiment):
    response = alice_client.post(
        reverse("ensembles:ensemble_create", args=[experiment.pk]), form_data([("a", "1"), ("a", "2")])
    )
    assert "already a parameter" in response.content.decode()
    assert not Ensemble.objects.exists()


def test_a_duplicate_ensemble_name_is_an_error_on_the_name(alice_client, experiment, ensemble):
    response = alice_client.post(reverse("ensembles:ensemble_create", args=[experiment.pk]), form_data([("a", "1")]))
    assert "already has an ensemble named" in response.context["form"].errors["name"][0]


def test_batch_settings_need_a_batch_launcher(alice_client, experiment):
    response = alice_client.post(
        reverse("ensembles:ensemble_create", args=[experiment.pk]), form_data([("a", "1")], nodes="2")
    )
    assert "local launcher does not support batch" in " ".join(response.context["form"].non_field_errors())
    experiment.cluster = Cluster.objects.create(name="hpc", scheduler="slurm")
    experiment.save()
    response = alice_client.post(
        reverse("ensembles:ensemble_create", args=[experiment.pk]), form_data([("a", "1")], nodes="2", time="1:00:00")
    )
    assert response.status_code == 302
    assert Ensemble.objects.get().batch_settings["nodes"] == 2


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("time", "soon", "walltime"),
        ("exe", "", "required"),
        ("exe_args", 'a "b', "Cannot split"),
        ("env_vars", "NOEQUALS", "NAME=value"),
        ("env_vars", "1BAD=x", "not a valid environment variable name"),
        ("replicas", "0", "greater than or equal to 1"),
        ("tag", "a b", "without spaces"),
        ("n_models", "-1", "greater than or equal to 0"),
    ],
)
def test_invalid_settings_are_errors_next_to_their_field(alice_client, experiment, field, value, message):
    response = alice_client.post(
        reverse("ensembles:ensemble_create", args=[experiment.pk]), form_data([("a", "1")], **{field: value})
    )
    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors[field])
    assert not Ensemble.objects.exists()


def test_a_random_ensemble_saved_without_a_seed_gets_one(alice_client, experiment):
    alice_client.post(
        reverse("ensembles:ensemble_create", args=[experiment.pk]),
        form_data([("a", "range(0, 100)")], perm_strategy="random", n_models="5", seed=""),
    )
    ensemble = Ensemble.objects.get()
    assert ensemble.seed is not None
    assert list(ensemble.space()) == list(ensemble.space())


def test_editing_an_ensemble_shows_its_rows_and_saves_changes(alice_client, ensemble):
    page = alice_client.get(reverse("ensembles:ensemble_edit", args=[ensemble.pk])).content.decode()
    assert 'value="alpha"' in page and 'value="1, 2"' in page
    alice_client.post(
        reverse("ensembles:ensemble_edit", args=[ensemble.pk]),
        form_data([("alpha", "1, 2, 3")], name="sweep", version=str(ensemble.version)),
    )
    ensemble.refresh_from_db()
    assert len(ensemble.space()) == 3


def test_deleting_an_ensemble(alice_client, ensemble):
    alice_client.post(reverse("ensembles:ensemble_delete", args=[ensemble.pk]))
    assert not Ensemble.objects.exists()


# --- the live preview ---------------------------------------------------------


def test_preview_counts_members_and_shows_command_lines(preview_new):
    response = preview_new(form_data([("a", "1, 2", True), ("b", '"x y", z')]))
    assert response.status_code == 200
    assert count_in(response) == 4
    html = response.content.decode()
    assert "sweep_3" in html
    assert "/usr/bin/python3 sim.py --steps 10 -a 2" in html


def test_preview_of_a_huge_space_answers_without_materialising_it(preview_new):
    rows = [(f"p{i}", "range(0, 1000)") for i in range(5)]
    response = preview_new(form_data(rows))
    assert count_in(response) == 10**15
    html = response.content.decode()
    assert "1,000,000,000,000,000" in html
    assert html.count("<tr>") == 20 + 1  # one page of members and the header


def test_preview_pages_through_members(preview_new):
    response = preview_new(form_data([("a", "range(0, 100)")], preview_page="3"))
    html = response.content.decode()
    assert "sweep_40" in html and "sweep_59" in html and "sweep_39" not in html
    assert "Page 3 of 5" in html


def test_preview_warns_when_step_truncates(preview_new):
    response = preview_new(form_data([("a", "1, 2, 3"), ("b", "x, y")], perm_strategy="step"))
    assert count_in(response) == 2
    assert "truncated to the shortest" in response.content.decode()


def test_preview_of_a_random_sample_is_stable_for_a_seed(preview_new):
    data = form_data([("a", "range(0, 1000000)"), ("b", "range(0, 1000000)")], perm_strategy="random", n_models="10000")
    first, second = preview_new(data), preview_new(data)
    assert count_in(first) == 10000
    assert first.content == second.content


def test_preview_shows_a_scatter_for_two_numeric_parameters(preview_new):
    html = preview_new(form_data([("a", "linspace(0, 1, 50)"), ("b", "range(0, 10)"), ("c", "x, y")])).content.decode()
    assert 'data-figure="preview-figure"' in html
    no_plot = preview_new(form_data([("a", "1, 2"), ("c", "x, y")])).content.decode()
    assert "data-figure" not in no_plot


def test_preview_reports_bad_syntax_next_to_the_row_without_failing(preview_new):
    response = preview_new(form_data([("a", "1, 2"), ("b", "linspace(0, 1)")]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "data-count" not in html
    assert re.search(r'<small id="params-1-errors"[^>]*hx-swap-oob="true">[^<]*linspace\(\) takes', html)


@pytest.mark.parametrize("bad", [{"replicas": "many"}, {"n_models": "x"}, {"perm_strategy": "shuffle"}, {"seed": "1.5"}])
def test_preview_answers_bad_options_with_a_message(preview_new, bad):
    response = preview_new(form_data([("a", "1, 2")], **bad))
    assert response.status_code == 200
    assert b"preview-errors" in response.content


def test_preview_without_the_formset_management_data_is_a_400(alice_client, experiment):
    response = alice_client.post(reverse("ensembles:ensemble_preview_new", args=[experiment.pk]), {"name": "x"})
    assert response.status_code == 400


def test_preview_lists_members_added_by_hand_after_the_generated_ones(alice_client, experiment, ensemble):
    services.member_save(
        experiment=experiment,
        ensemble=ensemble,
        spec={"name": "special", "params": [{"name": "alpha", "value": 99}], "params_as_args": ["alpha"],
              "run_settings": {"exe": "/bin/echo"}},
    )
    response = alice_client.post(
        reverse("ensembles:ensemble_preview", args=[ensemble.pk]), form_data([("alpha", "1, 2")])
    )
    html = response.content.decode()
    assert count_in(response) == 3
    assert "special" in html and "/bin/echo --alpha=99" in html


def test_preview_renders_a_configured_file_for_the_chosen_member(alice_client, ensemble, tmp_path, settings):
    settings.FILE_ROOTS = [tmp_path]
    (tmp_path / "input.nml").write_text("alpha = ;alpha;\nmissing = ;NOPE;\nx = 1; y = 2;\n")
    services.file_attach_path(owner=ensemble, path=str(tmp_path / "input.nml"), action="configure")
    response = alice_client.post(
        reverse("ensembles:ensemble_preview", args=[ensemble.pk]),
        form_data([("alpha", "10, 20, 30")], preview_member="2", preview_file="0"),
    )
    html = response.content.decode()
    assert '<mark title="alpha">30</mark>' in html
    assert '<span class="unknown-tag" title="No parameter named NOPE">;NOPE;</span>' in html
    assert "x = 1; y = 2;" in html



def test_preview_writes_values_as_typed_in_command_lines_and_files(alice_client, ensemble, tmp_path, settings):
    settings.FILE_ROOTS = [tmp_path]
    (tmp_path / "input.nml").write_text("flag = ;flag;\nlr = ;lr;\n")
    services.file_attach_path(owner=ensemble, path=str(tmp_path / "input.nml"), action="configure")
    response = alice_client.post(
        reverse("ensembles:ensemble_preview", args=[ensemble.pk]),
        form_data([("flag", "true, TRUE", True), ("lr", "1e-3, 0.10", True)], preview_member="1", preview_file="0"),
    )
    html = response.content.decode()
    assert "sim.py --steps 10 --flag=true --lr=1e-3" in html
    assert "sim.py --steps 10 --flag=TRUE --lr=0.10" in html
    assert '<mark title="flag">true</mark>' in html and '<mark title="lr">0.10</mark>' in html

# --- member counts beyond float range; float ranges beyond float resolution ----

ASTRONOMICAL_ROWS = [(f"p{i}", "range(0, 1000000000000)") for i in range(200)]  # 10**2400 members


def test_preview_of_a_space_beyond_float_range_shows_its_size_as_a_power_of_ten(preview_new):
    response = preview_new(form_data(ASTRONOMICAL_ROWS))
    assert response.status_code == 200
    assert count_in(response) == 10**2400
    html = response.content.decode()
    assert "10<sup>2400</sup></output> members" in html
    assert "Page 1 of 5 × 10<sup>2398</sup>" in html
    assert html.count("<tr>") == 20 + 1
    assert '<span class="chip">p199=19</span>' in html


def test_the_last_page_of_a_space_beyond_float_range_names_its_last_member(preview_new):
    pages = 10**2400 // 20
    response = preview_new(form_data(ASTRONOMICAL_ROWS, preview_page=str(pages)))
    html = response.content.decode()
    assert "Page 5 × 10<sup>2398</sup> of 5 × 10<sup>2398</sup>" in html
    assert f"<code>sweep_{10**2400 - 1}</code>" in html
    assert f'"preview_page": {pages - 1}' in html
    assert '<span class="chip">p0=999999999999</span>' in html


def test_the_member_picker_of_a_space_beyond_float_range_allows_every_member(alice_client, ensemble, tmp_path, settings):
    settings.FILE_ROOTS = [tmp_path]
    (tmp_path / "input.nml").write_text("p0 = ;p0;\n")
    services.file_attach_path(owner=ensemble, path=str(tmp_path / "input.nml"), action="configure")
    response = alice_client.post(
        reverse("ensembles:ensemble_preview", args=[ensemble.pk]),
        form_data(ASTRONOMICAL_ROWS, preview_member="5", preview_file="0"),
    )
    html = response.content.decode()
    assert f'max="{10**2400 - 1}"' in html
    assert "Member (0 – ≈ 9.99 × 10<sup>2399</sup>)" in html
    assert '<mark title="p0">0</mark>' in html


def test_preview_of_one_member_says_member(preview_new):
    html = preview_new(form_data([("a", "1")])).content.decode()
    assert ">1</output> member</p>" in html


def test_launching_a_space_beyond_float_range_is_refused_as_too_many_members(alice_client, experiment):
    services.ensemble_save(
        experiment=experiment,
        spec={"name": "e", "params": [{"name": n, "values": v} for n, v in ASTRONOMICAL_ROWS], "run_settings": {"exe": "x"}},
    )
    response = alice_client.post(reverse("ensembles:run_launch", args=[experiment.pk]), follow=True)
    assert response.status_code == 200
    assert "are allowed in one run" in response.content.decode()
    assert not Run.objects.exists()


def test_preview_refuses_a_float_range_finer_than_the_float_resolution_next_to_its_row(preview_new):
    # 49 billion values near 2**66, where floats are 16384 apart: once 20 s of CPU per preview
    response = preview_new(form_data([("a", "range(73786976294838206464, 73786976294887358464, 0.001)")]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "data-count" not in html
    row_error = re.search(r'<small id="params-0-errors"[^>]*hx-swap-oob="true">([^<]*)<', html).group(1)
    assert "finer than floating-point numbers" in row_error
    assert "use a step of at least 16384" in row_error
