"""Faults under pages held open in the browser: Redis, or the web server, restarted in
the middle of a run. The pages reconnect once and catch up with one fragment, a member's
log goes on without a repeat, and nothing is lost: every member ends Completed, once.

Each test runs a back end of its own: a private Redis that it restarts (never the
machine's), and a web server, Celery worker and monitor on it."""

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from playwright.sync_api import expect

from ensembles import selectors, services
from ensembles.models import MemberRun, MemberStatus, Run, StatusEvent
from tests.brokers import RestartableRedis, celery_redis
from tests.conftest import PASSWORD, WebServer, monitor_process, session_log, wait_for, worker_process

PY = sys.executable
MEMBERS = 3
LINES = 10
WAIT = 60_000  # ms: a reconnect backs off up to 5 s, and CI has two cores
# Member n prints lines 0-4, waits for the file <gates>/<n>.more, prints lines 5-9, waits
# for <gates>/<n>.end and exits: the test decides what happens while a service is down.
GATED = """import os, sys, time
gates, n = sys.argv[1], sys.argv[-1]
def wait(gate):
    while not os.path.exists(os.path.join(gates, n + "." + gate)):
        time.sleep(0.1)
for i in range(10):
    if i == 5:
        wait("more")
    print(f"line {i}", flush=True)
    time.sleep(0.1)
wait("end")
"""
ALL_LINES = "".join(f"line {i}\n" for i in range(LINES))
FIRST_LINES = "".join(f"line {i}\n" for i in range(5))

# What the page's sockets do, counted in the page: opens and closes per socket (the run's,
# and the member page's stdout and stderr tails), and every message with the open it came on.
COUNT_SOCKETS = """
  window.flotilla = {opens: {}, closes: {}, messages: []};
  const socket = (event) => event.target.id || event.target.dataset.logStream;
  const count = (counts, key) => { counts[key] = (counts[key] || 0) + 1; };
  document.addEventListener('htmx:wsOpen', (e) => count(window.flotilla.opens, socket(e)));
  document.addEventListener('htmx:wsClose', (e) => count(window.flotilla.closes, socket(e)));
  document.addEventListener('htmx:wsBeforeMessage', (e) => window.flotilla.messages.push(
    {socket: socket(e), open: window.flotilla.opens[socket(e)], html: e.detail.message}));
"""


@pytest.fixture
def backend(stack_env, shared_stack_paused, transactional_db):
    """A private Redis, and the web server, a worker and the monitor on it. Each process's
    log must stay free of tracebacks (checked when it stops, at the end of the test)."""
    private = RestartableRedis()
    env = {**stack_env, "REDIS_URL": private.url}
    try:
        with (WebServer(env, session_log("faults-server")) as web,
              worker_process(env, session_log("faults-worker")) as worker,
              monitor_process(env, session_log("faults-monitor")) as monitor):
            worker.wait_until_ready()
            monitor.wait_until_ready()
            yield SimpleNamespace(redis=private, web=web, worker=worker, monitor=monitor)
    finally:
        private.close()


@pytest.fixture
def watched_run(backend, page, alice, tmp_path):
    """A run of MEMBERS gated members, its page held open in the browser and the first
    member's page beside it, both live; every member running and the first one's log
    showing its first lines."""
    gates = tmp_path / "gates"
    gates.mkdir()
    experiment = services.experiment_create(owner=alice, name="faults")
    services.ensemble_save(experiment=experiment, spec={
        "name": "gated", "params": [{"name": "n", "values": ", ".join(map(str, range(MEMBERS)))}],
        "params_as_args": ["n"], "run_settings": {"exe": PY, "exe_args": ["-c", GATED, str(gates)]},
    })
    page.context.add_init_script(COUNT_SOCKETS)
    page.goto(f"{backend.web.url}/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{backend.web.url}/experiments/")
    with celery_redis(backend.redis.url):  # submitted to the private stack's worker
        run = services.run_launch(user=alice, experiment=experiment, concurrency=MEMBERS)
    try:
        page.goto(f"{backend.web.url}/runs/{run.pk}/")
        expect(page.locator("tr[id^=member-] [data-status]")).to_have_text(["Running"] * MEMBERS, timeout=WAIT)
        expect(page.locator("#live-state")).to_have_text("live", timeout=WAIT)
        assert opens(page) == {"run-live": 1}
        members = list(MemberRun.objects.filter(run=run).order_by("position"))
        member_page = page.context.new_page()
        member_page.goto(f"{backend.web.url}/member-runs/{members[0].pk}/")
        expect(member_page.locator("#log-out")).to_have_text(FIRST_LINES, timeout=WAIT)
        wait_in_page(member_page, "window.flotilla.opens.out === 1 && window.flotilla.opens.err === 1", "the tails open")
        assert opens(member_page) == {"out": 1, "err": 1}
        yield SimpleNamespace(run=run, members=members, first=members[0], page=page, member_page=member_page, gates=gates)
    finally:
        for gate in gates_of(range(MEMBERS), "more", "end"):  # whatever happened, the members end
            (gates / gate).touch()


def gates_of(members, *names):
    return [f"{n}.{name}" for n in members for name in names]


def release(watched, members, *names):
    for gate in gates_of(members, *names):
        (watched.gates / gate).touch()


def wait_in_page(page, expression: str, message: str) -> None:
    """Wait until ``expression`` is true in the page (evaluated from outside: the pages'
    content security policy forbids the evaluated strings of page.wait_for_function)."""
    wait_for(lambda: page.evaluate(expression), timeout=WAIT / 1000, interval=0.1, message=message)


def opens(page) -> dict:
    return page.evaluate("window.flotilla.opens")


def messages_on_the_second_open(page) -> list[str]:
    return page.evaluate("window.flotilla.messages.filter(m => m.socket === 'run-live' && m.open === 2).map(m => m.html)")


def wait_for_one_reconnect(page, sockets: list[str]):
    """Each of the page's ``sockets`` reconnects by itself, once."""
    expression = " && ".join(f"window.flotilla.opens[{name!r}] === 2" for name in sockets)
    wait_in_page(page, expression, f"{sockets} reconnected")


def row_ids(html: str) -> list[str]:
    return re.findall(r'<tr id="(member-\d+)"', html)


def assert_the_log_continues_once(watched):
    log = watched.member_page.locator("#log-out")
    expect(log).to_have_text(ALL_LINES, timeout=WAIT)
    assert log.text_content() == ALL_LINES  # each line once, in order: no repeat after the reconnect
    assert Path(watched.first.stdout).read_text() == ALL_LINES  # and the member itself printed them once


def assert_every_member_completed_once(watched):
    """Nothing lost: every member Completed, in the page and in the database, each once."""
    page, run = watched.page, watched.run
    expect(page.locator("#run-counts [data-status=Completed]")).to_have_attribute("data-count", str(MEMBERS), timeout=WAIT)
    expect(page.locator("tr[id^=member-] [data-status]")).to_have_text(["Completed"] * MEMBERS)
    for status in MemberStatus.values:
        if status != MemberStatus.COMPLETED:
            expect(page.locator(f"#run-counts [data-status={status}]")).to_have_attribute("data-count", "0")
    wait_for(lambda: Run.objects.get(pk=run.pk).finished, timeout=30, message="the run finished")
    members = MemberRun.objects.filter(run=run)
    assert [(m.name, m.attempt, m.status, m.returncode) for m in members.order_by("position")] == [
        (f"gated_{n}", 1, MemberStatus.COMPLETED, 0) for n in range(MEMBERS)]
    assert selectors.run_summary(run.pk)["counts"] == {
        status: MEMBERS if status == MemberStatus.COMPLETED else 0 for status in MemberStatus.values}
    for member in members:
        statuses = list(StatusEvent.objects.filter(member=member).order_by("at", "pk").values_list("status", flat=True))
        assert statuses[-1] == MemberStatus.COMPLETED and len(statuses) == len(set(statuses)), (member.name, statuses)


def test_after_a_redis_restart_mid_run_the_pages_reconnect_once_and_nothing_is_lost(backend, watched_run):
    watched = watched_run
    run_page, second = watched.page, watched.members[1]
    backend.redis.stop()
    expect(run_page.locator("#live-state")).to_have_text("reconnecting…", timeout=WAIT)
    release(watched, [0], "more")  # the first member's log goes on while Redis is down,
    release(watched, [1], "more", "end")  # and the second member ends: its runner cannot tell the monitor
    wait_for(lambda: Path(watched.first.stdout).read_text() == ALL_LINES, timeout=30, message="the log written")
    wait_for(lambda: not Path(f"/proc/{second.job_id}").exists(), timeout=30, message="the second member gone")
    backend.redis.start()  # empty, as a Redis restarted without persistence

    wait_for_one_reconnect(run_page, ["run-live"])
    expect(run_page.locator("#live-state")).to_have_text("live")
    # The monitor finds the second member's end in its runner's journal. Whichever comes first,
    # the page's reconnect or the monitor's repair pass, the row comes in the page's catch-up
    # or in the one push after it.
    expect(run_page.locator("tr[id^=member-] [data-status]")).to_have_text(["Running", "Completed", "Running"], timeout=WAIT)
    expect(run_page.locator("#run-counts [data-status=Completed]")).to_have_attribute("data-count", "1")
    catch_up, *pushed = messages_on_the_second_open(run_page)
    assert 'id="run-counts"' in catch_up and "members-reload" not in catch_up  # a fragment, not a reload
    assert len(pushed) <= 1 and f"member-{second.pk}" in row_ids(catch_up + "".join(pushed))
    assert_the_log_continues_once(watched)
    assert opens(watched.member_page) == {"out": 1, "err": 1}  # log tails need no Redis: they stayed open

    release(watched, range(MEMBERS), "more", "end")
    assert_every_member_completed_once(watched)


def test_after_a_web_server_restart_mid_run_the_pages_reconnect_once_and_catch_up_with_one_fragment(backend, watched_run):
    watched = watched_run
    run_page = watched.page
    backend.web.stop()
    expect(run_page.locator("#live-state")).to_have_text("reconnecting…", timeout=WAIT)
    release(watched, [0, 1], "more", "end")  # two members end while no page can hear of it
    wait_for(lambda: MemberRun.objects.filter(run=watched.run, status=MemberStatus.COMPLETED).count() == 2, timeout=30,
             message="two members completed while the web server was down")
    backend.web.start()  # on the same port: the pages reconnect to the same URL

    wait_for_one_reconnect(run_page, ["run-live"])
    wait_for_one_reconnect(watched.member_page, ["out", "err"])
    expect(run_page.locator("#live-state")).to_have_text("live")
    rows = run_page.locator("tr[id^=member-] [data-status]")
    expect(rows).to_have_text(["Completed", "Completed", "Running"], timeout=WAIT)
    expect(run_page.locator("#run-counts [data-status=Completed]")).to_have_attribute("data-count", "2")
    expect(run_page.locator("#run-counts [data-status=Running]")).to_have_attribute("data-count", "1")
    # All of it from one fragment, the answer to the page's catch_up: the counts and the two
    # changed rows (and any row changed just before the page's last message, sent again by design).
    [catch_up] = messages_on_the_second_open(run_page)
    assert {f"member-{m.pk}" for m in watched.members[:2]} <= set(row_ids(catch_up)) and "members-reload" not in catch_up
    assert_the_log_continues_once(watched)

    release(watched, [2], "more", "end")  # and the next change is pushed live
    assert_every_member_completed_once(watched)
