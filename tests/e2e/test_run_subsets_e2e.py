"""Launching a part of an experiment while another part runs, then deleting a run, in a
real browser with a real worker, monitor and members."""

import re
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from ensembles import services
from ensembles.models import Run
from tests.conftest import wait_for

PY = sys.executable


@pytest.fixture
def backend(celery_worker_process, monitor, server):
    return server


def test_two_parts_of_an_experiment_run_at_once_and_a_finished_run_is_deleted(logged_in, backend, alice, screenshot):
    experiment = services.experiment_create(owner=alice, name="parts")
    services.ensemble_save(experiment=experiment, spec={
        "name": "slow", "params": [{"name": "n", "values": "1"}],
        "run_settings": {"exe": PY, "exe_args": ["-c", "import time; time.sleep(600)"]},
    })
    services.ensemble_save(experiment=experiment, spec={
        "name": "quick", "params": [{"name": "n", "values": "1, 2"}],
        "run_settings": {"exe": PY, "exe_args": ["-c", "print('quick done')"]},
    })
    page = logged_in
    page.goto(f"{backend}/experiments/{experiment.pk}/")
    page.get_by_label("quick").uncheck()
    page.get_by_role("button", name="Launch").click()
    expect(page).to_have_url(re.compile(r"/runs/\d+/$"))
    expect(page.locator("#run-counts [data-status=Running]")).to_have_attribute("data-count", "1", timeout=30_000)

    # The experiment page: `slow` is held by run 1, `quick` is free and ticked.
    page.goto(f"{backend}/experiments/{experiment.pk}/")
    expect(page.get_by_label("slow")).not_to_be_checked()
    expect(page.locator(".launch-entities")).to_contain_text("(in run 1)")
    expect(page.get_by_label("quick")).to_be_checked()
    screenshot("experiment-launch-parts")
    page.get_by_role("button", name="Launch").click()
    expect(page).to_have_url(re.compile(r"/runs/\d+/$"))
    expect(page.locator("h1")).to_contain_text("Run 2")
    expect(page.locator("#run-counts [data-status=Completed]")).to_have_attribute("data-count", "2", timeout=30_000)
    second = Run.objects.get(experiment=experiment, number=2)
    wait_for(lambda: Run.objects.get(pk=second.pk).finished, message="run 2 finished")

    page.reload()
    page.get_by_role("button", name="Delete run").click()
    screenshot("run-delete-confirm")
    page.get_by_role("button", name="Delete").click()
    expect(page.locator(".messages")).to_contain_text("Run 2 deleted")
    screenshot("experiment-after-run-delete")
    wait_for(lambda: not Run.objects.filter(pk=second.pk).exists(), message="the worker removed run 2's rows")
    assert not Path(second.folder).exists()
    first = Run.objects.get(experiment=experiment, number=1)
    assert first.finished is None and Path(first.folder, "slow").is_dir()  # run 1 goes on, untouched
    services.run_cancel(run_id=first.pk)
    wait_for(lambda: Run.objects.get(pk=first.pk).finished, message="run 1 stopped")
