"""The pages work under the Content-Security-Policy: a real browser reports no violation
on the experiment list, the builder with its preview, a run page with its plots and a
member page with its live logs."""

import pytest
from playwright.sync_api import expect

from ensembles import services
from ensembles.models import MemberRun
from tests.conftest import wait_for

REPORT = """document.addEventListener("securitypolicyviolation", function (event) {
  window.__cspViolation(event.violatedDirective + " blocked " + event.blockedURI + " at " + event.sourceFile + ":" + event.lineNumber);
});"""


@pytest.fixture
def violations(page):
    """Every CSP violation of the page: the browser's console errors and its securitypolicyviolation events."""
    found = []
    page.on("console", lambda message: found.append(message.text) if "Content Security Policy" in message.text else None)
    page.on("pageerror", lambda error: found.append(str(error)) if "Content Security Policy" in str(error) else None)
    page.expose_function("__cspViolation", lambda text: found.append(text))
    page.add_init_script(REPORT)
    return found


def test_no_page_breaks_the_content_security_policy(violations, logged_in, server, alice, celery_worker_process, monitor, screenshot):
    page = logged_in
    experiment = services.demo_create(user=alice)
    ensemble = experiment.ensembles.get()

    page.goto(f"{server}/experiments/")
    expect(page.get_by_role("link", name="heat-demo")).to_be_visible()

    # the builder: the live preview, its Plotly scatter and the configured (uploaded) input file
    page.goto(f"{server}/ensembles/{ensemble.pk}/")
    expect(page.locator("#member-count")).to_have_attribute("data-count", "12")
    expect(page.locator("#preview .plot .main-svg").first).to_be_visible()
    expect(page.locator("#rendered-file mark").first).to_be_visible()
    page.locator("#id_params-1-values").fill("25, 50")  # a preview fetched as the user types
    expect(page.locator("#member-count")).to_have_attribute("data-count", "6")
    screenshot("csp-builder")

    # a run page, live over its websocket, with every plot once the members are done
    run = services.run_launch(user=alice, experiment=experiment)
    page.goto(f"{server}/runs/{run.pk}/")
    # Headless Chromium draws the parallel-coordinates plot (WebGL) in software: on a busy
    # 2-core machine that can hold the page's main thread for seconds.
    expect(page.locator("#live-state")).to_have_text("live", timeout=20_000)
    wait_for(lambda: MemberRun.objects.filter(run=run, status="Completed").count() == 12, timeout=60, message="run done")
    expect(page.locator("#run-counts [data-status=Completed]")).to_have_attribute("data-count", "12", timeout=30_000)
    for name in ("status", "runtime", "timeline", "scatter", "parallel"):
        expect(page.locator(f"#plot-{name} .main-svg").first).to_be_visible(timeout=15_000)
    screenshot("csp-run")

    # a member page: its folder listing and its log tails over websockets
    page.locator("tr[id^=member-] a").first.click()
    expect(page.locator("#log-out")).to_contain_text("done: max temperature")
    expect(page.locator("#member-files")).to_contain_text("input.cfg")

    # the confirmation page cancels without a javascript: link
    page.goto(f"{server}/experiments/{experiment.pk}/delete")
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("heading", name="heat-demo")).to_be_visible()

    assert not violations, sorted(set(violations))


def test_the_admin_works_under_the_policy_too(violations, page, server, charlie):
    from tests.conftest import PASSWORD

    charlie.is_superuser = True  # to open the add form and django-axes' pages
    charlie.save()
    page.goto(f"{server}/admin/")
    page.get_by_label("Username").fill("charlie")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()
    page.goto(f"{server}/admin/ensembles/experiment/add/")
    expect(page.locator("#experiment_form")).to_be_visible()
    page.goto(f"{server}/admin/axes/accessattempt/")  # where staff lift a lock-out
    expect(page.locator("#changelist")).to_be_visible()
    assert not violations, sorted(set(violations))
