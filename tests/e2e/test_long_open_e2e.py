"""Pages left open, as people leave them: the live connections stay up, every change
arrives, every log byte is shown once."""

import sys

from playwright.sync_api import expect

from ensembles import services
from ensembles.models import MemberRun
from tests.conftest import wait_for

PY = sys.executable
IDLE_SECONDS = 60
# Prints a line a second, after a signal file appears: the pages sit idle first.
SLOW = ("import os, sys, time\nwhile not os.path.exists(sys.argv[-1]):\n    time.sleep(0.2)\n"
        "for i in range(8):\n    print(f'line {i}', flush=True)\n    time.sleep(0.5)")

COUNT_SOCKETS = """
  window.flotillaSockets = {open: 0, close: 0};
  document.addEventListener('htmx:wsOpen', () => window.flotillaSockets.open++);
  document.addEventListener('htmx:wsClose', () => window.flotillaSockets.close++);
"""


def test_a_run_page_and_a_member_page_left_open_stay_live_and_show_everything_once(
    logged_in, celery_worker_process, monitor, server, alice, tmp_path
):
    go = tmp_path / "go"
    experiment = services.experiment_create(owner=alice, name="left-open")
    services.ensemble_save(experiment=experiment, spec={
        "name": "slow", "params": [{"name": "n", "values": "1, 2"}],
        "run_settings": {"exe": PY, "exe_args": ["-c", SLOW, str(go)]},
    })
    run = services.run_launch(user=alice, experiment=experiment)
    try:
        _watch_left_open(logged_in, server, run, go)
    finally:
        go.touch()  # whatever happened, the members end (they would wait for it for ever)


def _watch_left_open(logged_in, server, run, go):
    member = wait_for(lambda: (m := MemberRun.objects.filter(run=run).order_by("position").first()) and m.status == "Running" and m)

    run_page = logged_in
    run_page.add_init_script(COUNT_SOCKETS)
    run_page.goto(f"{server}/runs/{run.pk}/")
    member_page = run_page.context.new_page()
    member_page.add_init_script(COUNT_SOCKETS)
    member_page.goto(f"{server}/member-runs/{member.pk}/")
    expect(run_page.locator("#live-state")).to_have_text("live")
    member_page.wait_for_function("window.flotillaSockets.open === 2")  # stdout and stderr

    run_page.wait_for_timeout(IDLE_SECONDS * 1000)  # the point of the test: a minute with nothing happening
    go.touch()
    expect(run_page.locator("#run-counts [data-status=Completed]")).to_have_attribute("data-count", "2", timeout=30_000)
    expected = "".join(f"line {i}\n" for i in range(8))
    expect(member_page.locator("#log-out")).to_have_text(expected, timeout=15_000)
    expect(run_page.locator("tr[id^=member-] [data-status]")).to_have_text(["Completed", "Completed"])
    assert run_page.evaluate("window.flotillaSockets") == {"open": 1, "close": 0}
    assert member_page.evaluate("window.flotillaSockets") == {"open": 2, "close": 0}  # stdout and stderr
