"""Choosing where an experiment runs: the clusters an administrator added, those Flotilla
cannot drive yet shown but not selectable."""

import re

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


def test_an_administrator_adds_a_cluster_and_is_told_when_its_limits_cannot_be_read(page, server, django_user_model, screenshot):
    from tests.conftest import PASSWORD

    django_user_model.objects.create_superuser("ops", password=PASSWORD)
    page.goto(f"{server}/admin/login/")
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{server}/admin/ensembles/cluster/add/")
    page.get_by_label("Name").fill("hpc")
    page.get_by_label("Scheduler").select_option("slurm")
    page.get_by_label("Env").fill('{"SLURM_CONF": "/nonexistent/slurm.conf"}')
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".errorlist").first).to_contain_text("there is no file /nonexistent/slurm.conf on this server")
    page.get_by_label("Env").fill('{"SLURM_CONF": "/etc/hostname"}')  # a file, but no Slurm configuration
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist .success")).to_be_visible()
    page.locator("tr", has_text="hpc").locator("input[name=_selected_action]").check()
    page.locator("select[name=action]").select_option("read_limits")
    page.get_by_role("button", name="Go").click()
    expect(page.locator(".messagelist .error")).to_contain_text(re.compile(r"hpc: scontrol: .*ClusterName needs to be specified", re.I | re.S))
    screenshot("admin-clusters")
    assert Cluster.objects.get(name="hpc").limits_read_at is None
