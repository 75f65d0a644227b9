"""Results in the member table in a real browser: filter and sort them, see rows that
finish live with their results, and compare two runs."""

import re
import sys
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from ensembles import services
from ensembles.models import MemberRun, MemberStatus, Run, SubmitState

PY = sys.executable
# Writes its results file: energy = alpha squared, after a pause long enough to watch.
WRITE_RESULTS = ("import json, sys, time\nalpha = float(sys.argv[-1].split('=')[-1])\ntime.sleep(1.5)\n"
                 "json.dump({'energy': alpha * alpha, 'steps': 10}, open('results.json', 'w'))")


def make_run(experiment, number: int, energies: list) -> Run:
    """A finished run, made in the database: member i has alpha = i and the given energy (None: failed)."""
    now = timezone.now()
    run = Run.objects.create(experiment=experiment, number=number, launcher="local", submit_state=SubmitState.SUBMITTED,
                             work_dir=f"/tmp/results-e2e-{experiment.pk}-{number}", finished=now)
    MemberRun.objects.bulk_create(
        MemberRun(run=run, entity="sweep", name=f"sweep_{i}", position=i, params={"alpha": i, "kind": "ab"[i % 2]},
                  param_names=["alpha", "kind"], argv=["/bin/true"], env={}, cwd=f"/tmp/sweep_{i}",
                  status=MemberStatus.FAILED if energy is None else MemberStatus.COMPLETED,
                  results=None if energy is None else {"energy": energy, "steps": 10 + i},
                  started=now - timedelta(seconds=1 + i), ended=now, returncode=1 if energy is None else 0)
        for i, energy in enumerate(energies)
    )
    return run


def names(page) -> list[str]:
    return page.locator("#members tbody tr[id^=member-] td:first-child a").all_inner_texts()


def column(page, label: str) -> list[str]:
    """The cells of one column of the member table, top to bottom."""
    heads = page.locator("#members thead tr:last-child th").all_inner_texts()
    index = next(i for i, text in enumerate(heads) if text.strip().rstrip("▲▼").strip() == label)
    return page.locator(f"#members tbody tr[id^=member-] td:nth-child({index + 1})").all_inner_texts()


@pytest.fixture
def experiment(alice):
    return services.experiment_create(owner=alice, name="results")


def test_filter_and_sort_the_member_table_by_results(logged_in, server, experiment, screenshot):
    run = make_run(experiment, 1, [10, 9.5, 2.25, None, -1, 100, 0.5])
    page = logged_in
    page.goto(f"{server}/runs/{run.pk}/")
    expect(page.locator("#live-state")).to_have_text("live")
    expect(page.locator("#members thead")).to_contain_text("energy")
    assert column(page, "energy") == ["10", "9.5", "2.25", "", "-1", "100", "0.5"]

    field = page.get_by_label("Filter")
    field.fill("energy > 1 and kind = a")
    expect(page.locator("#members")).to_contain_text("2 members match")
    assert names(page) == ["sweep_0", "sweep_2"]

    field.fill("energy > 1 and")  # half typed: the error shows, the table stays
    expect(page.locator("#member-filter-error")).to_contain_text("Expected a name after 'and'")
    assert names(page) == ["sweep_0", "sweep_2"]
    screenshot("results-filter-error")
    field.fill("energy > 1")
    expect(page.locator("#member-filter-error")).to_be_empty()
    expect(page.locator("#members")).to_contain_text("4 members match")

    page.locator("#members thead").get_by_role("button", name="energy").click()
    expect(page.locator("#members th[aria-sort=ascending]")).to_contain_text("energy")
    assert column(page, "energy") == ["2.25", "9.5", "10", "100"]  # as numbers, not as texts
    page.locator("#members thead").get_by_role("button", name="energy").click()
    expect(page.locator("#members th[aria-sort=descending]")).to_contain_text("energy")
    assert column(page, "energy") == ["100", "10", "9.5", "2.25"]
    screenshot("results-sorted")

    page.get_by_label("Per page").fill("3")
    expect(page.locator("#members")).to_contain_text("Page 1 of 2")
    page.get_by_role("button", name="Next ›").click()
    expect(page.locator("#members")).to_contain_text("Page 2 of 2")
    assert column(page, "energy") == ["2.25"]  # paging kept the sort and the filter
    export = page.locator("#members a.export-filtered", has_text="CSV")
    expect(export).to_have_attribute("href", re.compile(r"q=energy\+%3E\+1&sort=-results.energy$"))
    field.fill("")
    expect(page.locator("#members")).to_contain_text("Page 1 of 3")
    page.get_by_label("Per page").fill("100")
    expect(page.locator("#members tbody tr[id^=member-]")).to_have_count(7)
    assert column(page, "energy")[:2] == ["100", "10"] and column(page, "energy")[-1] == ""  # missing: last


def test_members_that_finish_live_show_their_results_in_a_filtered_sorted_table(logged_in, celery_worker_process, monitor, server,
                                                                               experiment, screenshot):
    services.ensemble_save(experiment=experiment, spec={
        "name": "squares", "params": [{"name": "alpha", "values": "1, 2, 3, 4"}], "params_as_args": ["alpha"],
        "run_settings": {"exe": PY, "exe_args": ["-c", WRITE_RESULTS]}, "results_file": "results.json",
    })
    run = services.run_launch(user=experiment.owner, experiment=experiment)
    page = logged_in
    page.goto(f"{server}/runs/{run.pk}/?q=alpha+%3E%3D+2&sort=-params.alpha")
    expect(page.locator("#live-state")).to_have_text("live")
    assert names(page) == ["squares_3", "squares_2", "squares_1"]
    expect(page.locator("#run-counts [data-status=Completed]")).to_have_attribute("data-count", "4", timeout=60_000)
    # The first results gave the table new columns: it reloaded with the page's filter and sort.
    expect(page.locator("#members thead")).to_contain_text("energy", timeout=15_000)
    expect(page.locator("#members tbody [data-status=Completed]")).to_have_count(3, timeout=15_000)
    assert names(page) == ["squares_3", "squares_2", "squares_1"]
    assert column(page, "energy") == ["16", "9", "4"] and column(page, "steps") == ["10", "10", "10"]
    assert page.get_by_label("Filter").input_value() == "alpha >= 2"
    screenshot("results-live")


def test_compare_two_runs_of_an_experiment(logged_in, server, experiment, screenshot):
    first = make_run(experiment, 1, [1.0, 2.0, None, 4.0])
    second = make_run(experiment, 2, [1.5, 2.0, 3.0])
    page = logged_in
    page.goto(f"{server}/runs/{second.pk}/")
    page.get_by_label("Compare with").select_option(str(first.pk))
    screenshot("results-compare-menu")
    page.get_by_role("button", name="Compare").click()
    expect(page.get_by_role("heading", name="Run 2 vs run 1")).to_be_visible()
    stats = page.locator("table.compare-stats")
    expect(stats.locator("tr", has_text="Members")).to_contain_text("3")
    expect(stats.locator("tr", has_text="Failed")).to_contain_text("1")
    points = page.locator("table.compare-points tbody tr")
    expect(points).to_have_count(4)
    expect(points.nth(0)).to_contain_text("-0.5")  # run 1 minus run 2
    expect(points.nth(2)).to_contain_text("Failed")
    expect(points.nth(3)).to_contain_text("only in run 1")
    screenshot("results-compare")
    expect(page.locator("table.compare-stats").get_by_role("link", name="Run 1", exact=True)).to_have_attribute(
        "href", f"/runs/{first.pk}/")
