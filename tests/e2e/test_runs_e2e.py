"""The live dashboard in a real browser, on daphne, with a real worker, monitor and members."""

import re
import subprocess
import sys

import pytest
from django.conf import settings
from playwright.sync_api import expect

from ensembles import services
from ensembles.models import MemberRun
from tests.conftest import wait_for
from webapp.supervisor import free_port, server_argv

PY = sys.executable
LOOP = "import sys, time\nfor i in range(int(sys.argv[-1].split('=')[-1])):\n    print(f'line {i}', flush=True)\n    time.sleep(0.1)"


@pytest.fixture
def backend(celery_worker_process, monitor, server):
    return server


@pytest.fixture
def accept_dialogs(page):
    page.on("dialog", lambda dialog: dialog.accept())
    return page


def ws_open(page, timeout=5_000):
    expect(page.locator("#live-state")).to_have_text("live", timeout=timeout)


def test_launch_the_demo_and_watch_it_finish_live(logged_in, backend, accept_dialogs, screenshot):
    page = logged_in
    page.get_by_role("button", name="Create demo experiment").click()
    expect(page.get_by_role("heading", name="heat-demo")).to_be_visible()
    page.get_by_label("Members at once").fill("12")
    screenshot("experiment-before-launch")
    page.get_by_role("button", name="Launch").click()
    expect(page).to_have_url(re.compile(r"/runs/\d+/$"))
    # Headless Chromium draws the parallel-coordinates plot (WebGL) in software, which holds
    # the page's main thread for seconds on a 2-core machine while 12 members start.
    ws_open(page, timeout=20_000)
    first_row = page.locator("tr[id^=member-]").first.locator("[data-status]")
    # Its statuses change live (on a slow machine the first member may be done before the page is live).
    expect(first_row).to_have_text(re.compile("Running|Completed"), timeout=30_000)
    screenshot("run-running")
    expect(page.locator("#run-counts [data-status=Completed]")).to_have_attribute("data-count", "12", timeout=60_000)
    expect(first_row).to_have_text("Completed")
    expect(page.locator("#plot-scatter .main-svg").first).to_be_visible(timeout=15_000)
    # after the last change the plots catch up: the scatter shows a result against a parameter
    expect(page.locator("#plot-axes select[name=y]")).to_have_value("energy", timeout=30_000)
    screenshot("run-completed")

    page.locator("tr[id^=member-] a").first.click()
    expect(page.locator("#log-out")).to_contain_text("done: max temperature")
    expect(page.locator(".member-facts")).to_contain_text("max_temperature")
    screenshot("member-completed")


def test_a_log_tail_follows_a_running_member(logged_in, backend, alice):
    experiment = services.experiment_create(owner=alice, name="tail")
    services.ensemble_save(experiment=experiment, spec={
        "name": "talk", "params": [{"name": "n", "values": "40"}], "params_as_args": ["n"],
        "run_settings": {"exe": PY, "exe_args": ["-c", LOOP]},
    })
    run = services.run_launch(user=alice, experiment=experiment)
    member = wait_for(lambda: MemberRun.objects.filter(run=run, status="Running").first(), message="running")
    page = logged_in
    page.goto(f"{backend}/member-runs/{member.pk}/")
    log = page.locator("#log-out")
    expect(log).to_contain_text("line 1")
    expect(log).to_contain_text("line 25", timeout=15_000)  # lines keep arriving while it runs
    expect(log).to_contain_text("line 39", timeout=15_000)


def test_stop_a_member_and_rerun_failed(logged_in, backend, alice, accept_dialogs, screenshot):
    experiment = services.experiment_create(owner=alice, name="stoppable")
    services.ensemble_save(experiment=experiment, spec={
        "name": "long", "params": [{"name": "n", "values": "600, 5"}], "params_as_args": ["n"],
        "run_settings": {"exe": PY, "exe_args": ["-c", LOOP]},
    })
    run = services.run_launch(user=alice, experiment=experiment)
    page = logged_in
    page.goto(f"{backend}/runs/{run.pk}/")
    ws_open(page)
    long_row = page.locator("tr", has=page.get_by_role("link", name="long_0", exact=True))
    expect(long_row.locator("[data-status]")).to_have_text("Running", timeout=20_000)
    long_row.get_by_role("button", name="Stop").click()
    expect(long_row.locator("[data-status]")).to_have_text("Cancelled", timeout=20_000)
    expect(page.locator("#run-counts [data-status=Completed]")).to_have_attribute("data-count", "1", timeout=20_000)
    screenshot("run-member-cancelled")

    page.get_by_role("button", name=re.compile(r"Re-run failed")).click()
    expect(long_row.locator("[data-status]")).to_have_text("Running", timeout=20_000)
    expect(long_row).to_contain_text("#2")  # the new attempt
    page.locator("#run-actions").get_by_role("button", name="Stop run").click()
    expect(long_row.locator("[data-status]")).to_have_text("Cancelled", timeout=20_000)
    long_row.get_by_role("link", name="long_0").click()
    expect(page.get_by_role("heading", name="Attempts")).to_be_visible()
    expect(page.locator("ol")).to_contain_text("#1 Cancelled")
    screenshot("member-attempts")


def test_after_a_daphne_restart_the_page_reconnects_and_shows_the_truth(logged_in, server, celery_worker_process, monitor, alice, test_database_url):
    # A daphne of this test's own, so that it can be restarted on the same port.
    port = free_port()
    env = {**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "webapp.settings_test", "DATABASE_URL": test_database_url}
    argv = server_argv("127.0.0.1", port, access_log=False)

    def start():
        process = subprocess.Popen(argv, env=env, cwd=settings.BASE_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/healthz"], capture_output=True).returncode == 0)
        return process

    experiment = services.experiment_create(owner=alice, name="restart")
    services.ensemble_save(experiment=experiment, spec={
        "name": "slow", "params": [{"name": "n", "values": "30"}], "params_as_args": ["n"],
        "run_settings": {"exe": PY, "exe_args": ["-c", LOOP]},
    })
    daphne = start()
    try:
        page = logged_in
        page.context.add_cookies([{"name": c["name"], "value": c["value"], "url": f"http://127.0.0.1:{port}"}
                                  for c in page.context.cookies() if c["name"] == "sessionid"])
        run = services.run_launch(user=alice, experiment=experiment)
        page.goto(f"http://127.0.0.1:{port}/runs/{run.pk}/")
        ws_open(page)
        expect(page.locator("#run-counts [data-status=Running]")).to_have_attribute("data-count", "1", timeout=20_000)
        daphne.kill()  # as abrupt as a crash; a graceful stop waits for open sockets
        daphne.wait(10)
        expect(page.locator("#live-state")).to_have_text("reconnecting…")
        wait_for(lambda: MemberRun.objects.get(run=run).status == "Completed", timeout=30, message="finished while down")
        daphne = start()
        expect(page.locator("#live-state")).to_have_text("live", timeout=15_000)  # reconnects by itself
        expect(page.locator("#run-counts [data-status=Completed]")).to_have_attribute("data-count", "1", timeout=20_000)
        expect(page.locator("tr[id^=member-] [data-status]")).to_have_text("Completed")
    finally:
        daphne.kill()
        daphne.wait(10)
