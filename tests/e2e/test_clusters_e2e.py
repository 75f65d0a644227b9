"""Choosing where an experiment runs: the clusters an administrator added, those Flotilla
cannot drive yet shown but not selectable."""

from playwright.sync_api import expect

from ensembles.models import Cluster, Experiment
from tests.conftest import local_cluster


def test_the_experiment_form_offers_the_clusters(logged_in, server, screenshot):
    local_cluster()
    hpc = Cluster.objects.create(name="hpc", scheduler="slurm")
    Cluster.objects.create(name="old-pbs", scheduler="pbs")
    page = logged_in
    page.goto(f"{server}/experiments/new")
    menu = page.get_by_label("Cluster")
    expect(menu.locator("option")).to_have_text(["Detect at launch", "hpc (Slurm)", "local (Local processes)", "old-pbs (PBS) — not available yet"])
    expect(menu.locator("option", has_text="old-pbs")).to_be_disabled()
    expect(menu).to_have_value(str(local_cluster().pk))  # a new experiment runs here unless told otherwise
    page.get_by_label("Name").fill("on-hpc")
    menu.select_option(label="hpc (Slurm)")
    screenshot("experiment-form-clusters")
    page.get_by_role("button", name="Create experiment").click()
    expect(page.locator(".page-head").first).to_contain_text("hpc (Slurm)")
    assert Experiment.objects.get(name="on-hpc").cluster == hpc
