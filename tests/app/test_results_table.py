"""Results in the member table (columns, sorting, the filter expression, exports, live
rows) and two runs of one experiment compared side by side."""

import csv
import io
import json
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from ensembles import realtime, selectors, services
from ensembles.models import MemberRun, MemberStatus, Run, SubmitState

pytestmark = pytest.mark.django_db


def make_run(experiment, members: list[dict], *, number: int = 1) -> Run:
    """A run whose members are given as {"params", "results", "status", "time", "name"}."""
    run = Run.objects.create(experiment=experiment, number=number, launcher="local", submit_state=SubmitState.SUBMITTED,
                             work_dir=f"/tmp/results-{experiment.pk}-{number}")
    now = timezone.now()
    rows = []
    for i, member in enumerate(members):
        params = member.get("params", {})
        time = member.get("time")
        rows.append(MemberRun(
            run=run, entity="sweep", name=member.get("name", f"sweep_{i}"), position=i, params=params,
            param_names=list(params), argv=["/bin/true"], env={}, cwd=f"/tmp/sweep_{i}",
            status=member.get("status", MemberStatus.COMPLETED), results=member.get("results"),
            started=now - timedelta(seconds=time) if time is not None else None, ended=now if time is not None else None,
        ))
    MemberRun.objects.bulk_create(rows)
    return run


def names_in(html: str) -> list[str]:
    """The member names of the table's rows, in order."""
    return re.findall(r'<tr id="member-\d+"[^>]*>\s*<td><a href="[^"]+">([^<]+)</a>', html)


def header_of(html: str) -> list[str]:
    """The labels of the table's sortable column heads, in order."""
    return re.findall(r'<button type="button" class="sort-button"[^>]*>([^<]+)<', html)


@pytest.fixture
def energies(experiment):
    """Six members: energies that sort differently as numbers and as texts, one missing, one failed."""
    return make_run(experiment, [
        {"params": {"alpha": 1, "beta": "x"}, "results": {"energy": 10, "steps": 3}, "time": 4},
        {"params": {"alpha": 1, "beta": "y"}, "results": {"energy": 9.5, "steps": 3}, "time": 1},
        {"params": {"alpha": 1, "beta": "z"}, "results": {"energy": 2.25, "steps": 2}, "time": 2},
        {"params": {"alpha": 2, "beta": "x"}, "results": None, "status": MemberStatus.FAILED},
        {"params": {"alpha": 2, "beta": "y"}, "results": {"energy": -1, "steps": 1}, "time": 3},
        {"params": {"alpha": 2, "beta": "z"}, "results": {"energy": 100, "steps": 5}, "time": 5},
    ])


def members_html(client, run, **query) -> str:
    response = client.get(reverse("ensembles:run_members", args=[run.pk]), query)
    assert response.status_code == 200, response.content.decode()[:500]
    return response.content.decode()


# --- columns -----------------------------------------------------------------------


def test_each_parameter_and_result_of_the_run_is_a_column(alice_client, energies):
    html = alice_client.get(reverse("ensembles:run_detail", args=[energies.pk])).content.decode()
    assert header_of(html) == ["Name", "Time", "Returncode", "alpha", "beta", "energy", "steps"]
    row = re.search(r'<tr id="member-\d+".*?</tr>', html, flags=re.S).group(0)
    assert re.findall(r'<td class="(?:param|result)[^"]*"[^>]*>([^<]*)</td>', row) == ["1", "x", "10", "3"]
    failed = re.findall(r'<tr id="member-\d+".*?</tr>', html, flags=re.S)[3]
    assert re.findall(r'<td class="result[^"]*"[^>]*>([^<]*)</td>', failed) == ["", ""]  # no results: empty cells


def test_result_names_come_in_name_order_whatever_order_members_wrote_them(alice_client, experiment):
    run = make_run(experiment, [{"results": {"zeta": 1, "beta": 2}}, {"results": {"alpha": 3}}])
    assert header_of(members_html(alice_client, run))[3:] == ["alpha", "beta", "zeta"]
    assert selectors.run_export_columns(run)[-3:] == ["results.alpha", "results.beta", "results.zeta"]


def test_results_show_six_significant_digits_with_the_full_value_as_title(alice_client, experiment):
    run = make_run(experiment, [{"results": {"energy": 0.123456789}}])
    assert '<td class="result num" title="0.123456789">0.123457</td>' in members_html(alice_client, run)


# --- sorting -----------------------------------------------------------------------


def test_results_sort_as_numbers_with_missing_values_last_both_ways(alice_client, energies):
    assert names_in(members_html(alice_client, energies, sort="results.energy")) == [
        "sweep_4", "sweep_2", "sweep_1", "sweep_0", "sweep_5", "sweep_3"]
    assert names_in(members_html(alice_client, energies, sort="-results.energy")) == [
        "sweep_5", "sweep_0", "sweep_1", "sweep_2", "sweep_4", "sweep_3"]


def test_a_sorted_column_says_so_and_its_next_click_sorts_the_other_way(alice_client, energies):
    html = members_html(alice_client, energies, sort="results.energy")
    head = re.search(r'<th scope="col" aria-sort="ascending"[^>]*>.*?</th>', html, flags=re.S).group(0)
    assert "energy" in head and json.loads(re.search(r"hx-vals='([^']*)'", head).group(1)) == {"sort": "-results.energy"}
    assert '<input type="hidden" name="sort" value="results.energy" form="member-filters">' in html


def test_parameters_sort_numbers_first_then_texts_byte_wise_then_missing(alice_client, experiment):
    run = make_run(experiment, [
        {"name": "ten", "params": {"v": 10}}, {"name": "nine", "params": {"v": 9}}, {"name": "lower_b", "params": {"v": "b"}},
        {"name": "upper_b", "params": {"v": "B"}}, {"name": "yes", "params": {"v": True}}, {"name": "none", "params": {"w": 1}},
    ])
    assert names_in(members_html(alice_client, run, sort="params.v")) == ["nine", "ten", "upper_b", "lower_b", "yes", "none"]
    assert names_in(members_html(alice_client, run, sort="-params.v")) == ["ten", "nine", "yes", "lower_b", "upper_b", "none"]


def test_the_members_own_columns_sort_with_missing_values_last(alice_client, energies):
    assert names_in(members_html(alice_client, energies, sort="time")) == [
        "sweep_1", "sweep_2", "sweep_4", "sweep_0", "sweep_5", "sweep_3"]
    assert names_in(members_html(alice_client, energies, sort="-time"))[-1] == "sweep_3"
    assert names_in(members_html(alice_client, energies, sort="-position"))[0] == "sweep_5"


@pytest.mark.parametrize("sort", ["nonsense", "results.missing", "params.", "-", "results.energy.x", "params.energy"])
def test_an_unknown_sort_is_the_launch_order(alice_client, energies, sort):
    html = members_html(alice_client, energies, sort=sort)
    assert names_in(html) == [f"sweep_{i}" for i in range(6)]
    assert 'name="sort" value="position"' in html


def test_sorting_and_filtering_survive_paging(alice_client, energies):
    html = members_html(alice_client, energies, sort="-results.energy", q="energy > 0", size=2, page=2)
    assert names_in(html) == ["sweep_1", "sweep_2"] and "Page 2 of 2" in html
    assert 'name="sort" value="-results.energy"' in html  # the pager includes the form, and with it the sort


# --- the filter expression ---------------------------------------------------------


@pytest.mark.parametrize(
    "q, expected",
    [
        ("energy > 9.5", [0, 5]),
        ("energy >= 9.5", [0, 1, 5]),
        ("energy != 10", [1, 2, 4, 5]),  # a member without the result is not "different"
        ("alpha <= 1 and energy > 3", [0, 1]),
        ("alpha = 2 or beta = x", [0, 3, 4, 5]),
        ("(alpha = 2 or beta = x) and energy < 50", [0, 4]),
        ("beta != x", [1, 2, 4, 5]),
        ("beta = 'z'", [2, 5]),
        ("beta > x", [1, 2, 4, 5]),
        ("status = failed", [3]),
        ("status != Failed and steps = 3", [0, 1]),
        ("name = sweep_4", [4]),
        ("time >= 3", [0, 4, 5]),
        ("returncode = 0", []),
        ("params.alpha = 1 and results.steps < 3", [2]),
    ],
)
def test_the_filter_expression_selects_members(alice_client, energies, q, expected):
    assert names_in(members_html(alice_client, energies, q=q)) == [f"sweep_{i}" for i in expected]


def test_booleans_and_texts_that_look_like_numbers_match_as_typed(alice_client, experiment):
    run = make_run(experiment, [
        {"name": "on", "params": {"flag": True, "code": "007"}}, {"name": "off", "params": {"flag": False, "code": 7}},
        {"name": "word", "params": {"flag": "True", "code": "seven"}},
    ])
    assert names_in(members_html(alice_client, run, q="flag = true")) == ["on"]
    assert names_in(members_html(alice_client, run, q="flag = True")) == ["on", "word"]
    assert names_in(members_html(alice_client, run, q="code = 7")) == ["off"]
    assert names_in(members_html(alice_client, run, q="code = 007")) == ["on", "off"]  # the text "007", the number 7
    assert names_in(members_html(alice_client, run, q="code = '7'")) == []


def test_result_names_any_member_wrote_can_be_filtered_and_sorted(alice_client, experiment):
    run = make_run(experiment, [{"name": "a", "results": {'say "hi"': 2, "x.y": 1, "my energy": 5}},
                                {"name": "b", "results": {'say "hi"': 1, "x.y": 2, "my energy": 4}}])
    assert names_in(members_html(alice_client, run, q=r'"say \"hi\"" > 1')) == ["a"]
    assert names_in(members_html(alice_client, run, q="x.y > 1")) == ["b"]
    assert names_in(members_html(alice_client, run, q="'my energy' < 5")) == ["b"]
    assert names_in(members_html(alice_client, run, sort='results.say "hi"')) == ["b", "a"]


@pytest.mark.parametrize(
    "q, message",
    [
        ("enrgy > 1", "Unknown name &#x27;enrgy&#x27;: the run&#x27;s parameters are alpha, beta; its results energy, steps"),
        ("energy >", "Expected a value after &#x27;energy&#x27; &gt;, got the end."),
        ("energy > high", "Results are numbers: compare &#x27;energy&#x27; with a number"),
        ("status = Done", "Unknown status &#x27;Done&#x27;: one of New, Queued"),
        ("status > Failed", "&#x27;status&#x27; can only be compared with = or !="),
        ("time > long", "&#x27;time&#x27; is a number (seconds)"),
    ],
)
def test_a_bad_filter_is_a_422_with_its_error_for_beside_the_field(alice_client, energies, q, message):
    response = alice_client.get(reverse("ensembles:run_members", args=[energies.pk]), {"q": q})
    html = response.content.decode()
    assert response.status_code == 422
    assert response["HX-Retarget"] == "#member-filter-error" and response["HX-Reswap"] == "outerHTML"
    assert html.startswith('<small id="member-filter-error" class="field-error" role="alert">') and message in html
    assert "<table" not in html  # the table keeps what the last good filter found


def test_a_good_filter_clears_the_error_beside_the_field(alice_client, energies):
    html = members_html(alice_client, energies, q="energy > 0")
    assert '<small id="member-filter-error" class="field-error" role="alert" hx-swap-oob="true"></small>' in html


def test_the_run_page_with_a_bad_filter_shows_the_error_and_counts_the_whole_run(alice_client, energies):
    response = alice_client.get(reverse("ensembles:run_detail", args=[energies.pk]), {"q": "energy >> 1"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "Expected a value after" in html and "Fix the filter to see members." in html
    assert 'data-status="Completed" data-count="5"' in html


def test_old_parameter_links_are_read_as_an_expression(alice_client, energies):
    page = alice_client.get(reverse("ensembles:run_detail", args=[energies.pk]), {"param": "beta", "value": "z"})
    html = page.content.decode()
    assert page.status_code == 200 and names_in(html) == ["sweep_2", "sweep_5"]
    assert 'name="q" value="beta = z"' in html
    assert names_in(members_html(alice_client, energies, param="alpha", value="2")) == ["sweep_3", "sweep_4", "sweep_5"]
    assert names_in(members_html(alice_client, energies, param="beta", value="")) == [f"sweep_{i}" for i in range(6)]
    assert names_in(members_html(alice_client, energies, param="gone", value="1")) == []  # as before: no member


def test_the_status_filter_and_the_expression_combine(alice_client, energies):
    assert names_in(members_html(alice_client, energies, status="Completed", q="alpha = 2")) == ["sweep_4", "sweep_5"]


# --- live rows -----------------------------------------------------------------------


def test_rows_pushed_live_carry_the_same_columns_as_the_page(alice_client, energies):
    page = members_html(alice_client, energies)
    member = energies.members.get(name="sweep_1")
    pushed = realtime.run_update_html(energies.pk, [member.pk])
    row = re.search(rf'<tr id="member-{member.pk}".*?</tr>', pushed, flags=re.S).group(0)
    on_page = re.search(rf'<tr id="member-{member.pk}".*?</tr>', page, flags=re.S).group(0)
    assert 'hx-swap-oob="true"' in row and row.replace(' hx-swap-oob="true"', "") == on_page
    assert 'hx-trigger="load"' not in pushed


def test_a_result_no_other_member_has_makes_pages_reload_their_table(energies):
    member = energies.members.get(name="sweep_3")  # re-run, say, and completed with a result of its own
    MemberRun.objects.filter(pk=member.pk).update(status=MemberStatus.COMPLETED, results={"energy": 1, "residual": 0.5})
    pushed = realtime.run_update_html(energies.pk, [member.pk])
    assert 'id="members-reload"' in pushed and "<template>" not in pushed  # the table's head gains "residual"
    other = energies.members.get(name="sweep_4")
    assert "<template>" in realtime.run_update_html(energies.pk, [other.pk])  # known names: rows as usual


def test_the_first_results_of_a_run_make_pages_reload_their_table(experiment):
    run = make_run(experiment, [{"status": MemberStatus.RUNNING}, {"status": MemberStatus.RUNNING}])
    first = run.members.get(name="sweep_0")
    MemberRun.objects.filter(pk=first.pk).update(status=MemberStatus.COMPLETED, results={"energy": 1.0})
    assert 'id="members-reload"' in realtime.run_update_html(run.pk, [first.pk])


# --- exports -------------------------------------------------------------------------


def export(client, run, fmt, **query):
    response = client.get(reverse("ensembles:run_export", args=[run.pk, fmt]), query)
    assert response.status_code == 200
    return b"".join(response.streaming_content).decode()


def test_exports_have_a_column_per_result_and_honour_the_filter_and_order(alice_client, energies):
    rows = list(csv.DictReader(io.StringIO(export(alice_client, energies, "csv", q="energy > 5", sort="-results.energy"))))
    assert list(rows[0])[-4:] == ["params.alpha", "params.beta", "results.energy", "results.steps"]
    assert [(row["name"], row["results.energy"]) for row in rows] == [("sweep_5", "100"), ("sweep_0", "10"), ("sweep_1", "9.5")]
    data = json.loads(export(alice_client, energies, "json", q="status = Failed"))
    assert [row["name"] for row in data] == ["sweep_3"] and data[0]["results"] is None
    everything = list(csv.DictReader(io.StringIO(export(alice_client, energies, "csv"))))
    assert [row["name"] for row in everything] == [f"sweep_{i}" for i in range(6)]


def test_an_export_with_a_bad_filter_is_refused_with_the_reason(alice_client, energies):
    response = alice_client.get(reverse("ensembles:run_export", args=[energies.pk, "csv"]), {"q": "nope = 1"})
    assert response.status_code == 400 and "Unknown name 'nope'" in response.content.decode()


def test_the_table_links_an_export_of_what_it_shows(alice_client, energies):
    html = members_html(alice_client, energies, q="energy > 5", sort="-results.energy", status="Completed")
    link = reverse("ensembles:run_export", args=[energies.pk, "csv"]) + "?status=Completed&amp;q=energy+%3E+5&amp;sort=-results.energy"
    assert f'href="{link}"' in html
    assert "export-filtered" not in members_html(alice_client, energies)  # unfiltered: the page's own links export it all


# --- comparing two runs --------------------------------------------------------------


@pytest.fixture
def two_runs(experiment):
    first = make_run(experiment, [
        {"params": {"alpha": 1}, "results": {"energy": 1.0}, "time": 2},
        {"params": {"alpha": 2}, "results": {"energy": 2.0}, "time": 4},
        {"params": {"alpha": 3}, "status": MemberStatus.FAILED, "time": 1},
        {"name": "old_only", "params": {"alpha": 9}, "results": {"energy": 9.0}, "time": 3},
    ], number=1)
    second = make_run(experiment, [
        {"params": {"alpha": 1}, "results": {"energy": 1.5, "steps": 7}, "time": 1},
        {"params": {"alpha": 2}, "results": {"energy": 1.0}, "time": 3},
        {"params": {"alpha": 30}, "results": {"energy": 3.0}, "time": 5},  # sweep_2 changed its value
        {"name": "new_only", "params": {"alpha": 4}, "status": MemberStatus.CANCELLED},
    ], number=2)
    return first, second


def compare(client, run, other, **query):
    return client.get(reverse("ensembles:run_compare", args=[run.pk]), {"other": other.pk, **query})


def test_compare_matches_members_by_name_and_parameter_values(alice_client, two_runs):
    first, second = two_runs
    comparison = compare(alice_client, first, second).context["comparison"]
    points = [(p.name, [m.status if m else None for m in p.members], p.only_in) for p in comparison.points]
    assert points == [
        ("sweep_0", ["Completed", "Completed"], None),
        ("sweep_1", ["Completed", "Completed"], None),
        ("sweep_2", ["Failed", None], 1),  # alpha 3 in run 1, alpha 30 in run 2: two points
        ("sweep_2", [None, "Completed"], 2),
        ("new_only", [None, "Cancelled"], 2),  # in launch order, then by name
        ("old_only", ["Completed", None], 1),
    ]
    assert comparison.columns.results == ("energy", "steps")
    energy = [[shown for shown, _, _ in p.result_cells[:3]] for p in comparison.points[:2]]
    assert energy == [["1", "1.5", "+0.5"], ["2", "1", "-1"]]
    assert [shown for shown, _, _ in comparison.points[0].result_cells[3:]] == ["", "7", ""]  # steps only in run 2


def test_compare_shows_counts_and_run_time_statistics(alice_client, two_runs):
    first, second = two_runs
    response = compare(alice_client, first, second)
    one, two = response.context["comparison"].sides
    assert (one.total, one.counts["Completed"], one.counts["Failed"]) == (4, 3, 1)
    assert (two.counts["Completed"], two.counts["Cancelled"]) == (3, 1)
    assert [round(v, 3) for v in (one.runtime_min, one.runtime_median, one.runtime_max, one.runtime_total)] == [1, 2.5, 4, 10]
    assert [round(v, 3) for v in (two.runtime_min, two.runtime_median, two.runtime_max, two.runtime_total)] == [1, 3, 5, 9]
    html = response.content.decode()
    assert "only in run 1" in html and "only in run 2" in html and "+0.5" in html
    assert ("Failed", [1, 0]) in response.context["comparison"].status_rows


def test_compare_pages_by_member_name(alice_client, experiment):
    first = make_run(experiment, [{"params": {"i": i}, "results": {"e": i}} for i in range(5)], number=1)
    second = make_run(experiment, [{"params": {"i": i}, "results": {"e": 2 * i}} for i in range(5)], number=2)
    comparison = selectors.run_compare(first, second, page=2, page_size=2)
    assert [p.name for p in comparison.points] == ["sweep_2", "sweep_3"] and (comparison.pages, comparison.names) == (3, 5)
    html = compare(alice_client, first, second).content.decode()
    assert "5 member names" in html


def test_the_run_page_offers_the_experiments_other_runs_to_compare_with(alice_client, two_runs):
    first, second = two_runs
    html = alice_client.get(reverse("ensembles:run_detail", args=[first.pk])).content.decode()
    assert f'action="{reverse("ensembles:run_compare", args=[first.pk])}"' in html
    assert f'<option value="{second.pk}">Run 2' in html
    picker = alice_client.get(reverse("ensembles:run_compare", args=[first.pk]))
    assert picker.status_code == 200 and "Pick a run of heat" in picker.content.decode()


def test_compare_refuses_another_users_run_and_runs_of_two_experiments(alice_client, bob_client, bob, two_runs):
    first, second = two_runs
    assert compare(bob_client, first, second).status_code == 404
    bobs = make_run(services.experiment_create(owner=bob, name="bobs"), [{"params": {"alpha": 1}}])
    assert compare(alice_client, first, bobs).status_code == 404  # not even said to exist
    assert compare(bob_client, bobs, first).status_code == 404
    elsewhere = make_run(services.experiment_create(owner=first.experiment.owner, name="other"), [{}])
    response = compare(alice_client, first, elsewhere)
    assert response.status_code == 400 and "only runs of one experiment can be compared" in response.content.decode()
    for other in (first.pk, "x", "-1"):
        response = alice_client.get(reverse("ensembles:run_compare", args=[first.pk]), {"other": other})
        assert response.status_code == 400 and "Pick another run" in response.content.decode()


# --- costs ------------------------------------------------------------------------


def _wide_run(experiment, size: int, number: int) -> Run:
    return make_run(experiment, [
        {"params": {"alpha": i % 7, "beta": f"b{i % 3}"}, "results": {"energy": i / 3, "steps": i} if i % 4 else None,
         "status": MemberStatus.COMPLETED if i % 4 else MemberStatus.FAILED, "time": i % 5 + 1}
        for i in range(size)
    ], number=number)


def _queries(callable_) -> int:
    with CaptureQueriesContext(connection) as context:
        callable_()
    return len(context)


def test_a_runs_columns_are_read_again_only_once_a_member_has_completed(alice_client, experiment):
    run = make_run(experiment, [{"status": MemberStatus.RUNNING}, {"results": {"energy": 1}}])
    url = reverse("ensembles:run_members", args=[run.pk])
    first, again = _queries(lambda: alice_client.get(url)), _queries(lambda: alice_client.get(url))
    assert again == first - 1  # the columns come from the cache
    MemberRun.objects.filter(run=run, name="sweep_0").update(status=MemberStatus.COMPLETED, results={"extra": 2})
    assert header_of(members_html(alice_client, run))[3:] == ["energy", "extra"]


def test_queries_do_not_grow_with_the_members(alice_client, experiment, django_assert_max_num_queries):
    small, large = _wide_run(experiment, 8, 1), _wide_run(experiment, 400, 2)
    small_b, large_b = _wide_run(experiment, 8, 3), _wide_run(experiment, 400, 4)
    query = {"q": "energy > 1 and beta != b1", "sort": "-results.energy", "size": "5"}
    changed = {run.pk: list(run.members.values_list("pk", flat=True)[:50]) for run in (small, large)}
    pages = {
        "page": lambda run, other: alice_client.get(reverse("ensembles:run_detail", args=[run.pk]), query),
        "table": lambda run, other: alice_client.get(reverse("ensembles:run_members", args=[run.pk]), query),
        "compare": lambda run, other: compare(alice_client, run, other, page=2),
        "push": lambda run, other: realtime.run_update_html(run.pk, changed[run.pk]),
    }
    bounds = {"page": 12, "table": 8, "compare": 14, "push": 4}
    for name, view in pages.items():
        counts = [_queries(lambda: view(small, small_b)), _queries(lambda: view(large, large_b))]
        assert counts[0] == counts[1], name
        with django_assert_max_num_queries(bounds[name]):
            view(large, large_b)
