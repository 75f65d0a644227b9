"""Browser tests: Playwright drives the system Chromium against a real uvicorn
serving the test database (committed data, hence transactional_db)."""

import os
import shutil

import pytest
from django.conf import settings

from tests.conftest import WebServer, session_log, web_env

# Playwright's sync API keeps an event loop running in this thread.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("FLOTILLA_REQUIRE_E2E"):
            pytest.fail(message)
        pytest.skip(message)
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "headless": True,
        "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"],
    }


@pytest.fixture(scope="session")
def asgi_server(test_database_url):
    """uvicorn on a free loopback port, on the test database. A test that uses it fails
    if it logs a traceback meanwhile (tests.conftest.process_logs)."""
    with WebServer(web_env(test_database_url), session_log("e2e-server")) as server:
        yield server


@pytest.fixture
def server(asgi_server, transactional_db):
    """The web server's base URL."""
    return asgi_server.url


@pytest.fixture
def screenshot(page, request):
    """Save a full-page screenshot under var/screenshots/ to look at."""
    folder = settings.BASE_DIR / "var" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)

    def take(name: str):
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)

    return take


@pytest.fixture
def logged_in(page, server, alice):
    from tests.conftest import PASSWORD

    page.goto(f"{server}/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{server}/experiments/")
    return page


def htmx_settled(page) -> None:
    """Wait until htmx has wired what it swapped in: it binds the triggers of new
    content when it settles, ~20 ms after the swap. A user is never that quick;
    a test that types into swapped-in content is."""
    from playwright.sync_api import expect

    expect(page.locator(".htmx-request, .htmx-swapping, .htmx-settling")).to_have_count(0)
