"""A user attaches a server file by browsing the allowed folders, and is told of a name clash."""

import contextlib

import pytest
from playwright.sync_api import expect

from tests.conftest import PASSWORD, web_server
from tests.e2e.conftest import htmx_settled


@pytest.fixture(scope="module")
def files_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared-inputs")
    (root / "inputs" / "deep").mkdir(parents=True)
    (root / "inputs" / "mesh.dat").write_bytes(b"0 1 2\n" * 400)
    (root / "inputs" / "deep" / "notes.txt").write_text("notes\n")
    (root / "other").mkdir()
    (root / "other" / "mesh.dat").write_text("another mesh\n")
    (root / "readme.txt").write_text("read me\n")
    return root


@pytest.fixture(scope="module")
def attach_server(test_database_url, files_root):
    """A web server whose FLOTILLA_FILE_ROOTS is ``files_root`` (the shared one allows examples/)."""
    with contextlib.ExitStack() as stack:
        with pytest.MonkeyPatch.context() as env:  # only the server's start-up sees it
            env.setenv("FLOTILLA_FILE_ROOTS", str(files_root))
            url, _, _ = stack.enter_context(web_server(test_database_url, log_prefix="e2e-attach"))
        yield url


@pytest.fixture
def ensemble_page(page, attach_server, transactional_db, alice):
    from ensembles import services

    experiment = services.experiment_create(owner=alice, name="mesh")
    ensemble = services.ensemble_save(
        experiment=experiment,
        spec={"name": "ens", "params": [{"name": "alpha", "values": "1, 2"}], "run_settings": {"exe": "/bin/true"}},
    )
    page.goto(f"{attach_server}/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{attach_server}/experiments/")
    page.goto(f"{attach_server}/ensembles/{ensemble.pk}/")
    return page


def test_browse_pick_and_attach_a_server_file(ensemble_page, files_root, screenshot):
    page = ensemble_page
    files = page.locator("#attached-files")
    expect(files).to_contain_text(f"Allowed server folders: {files_root}")
    page.get_by_role("button", name="Browse the server folders").click()
    browser = page.locator("#file-browser")
    rows = browser.locator("tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("inputs/")  # folders first
    expect(rows.nth(1)).to_contain_text("other/")
    expect(rows.nth(2)).to_contain_text("readme.txt")
    expect(rows.nth(2)).to_contain_text("8 bytes")
    htmx_settled(page)
    screenshot("attach-browser-root")

    query = browser.get_by_label("Filter by name")
    query.press_sequentially("rea")
    expect(rows).to_have_count(1)
    expect(rows.nth(0)).to_contain_text("readme.txt")
    expect(query).to_be_focused()  # still typing after the swap
    htmx_settled(page)  # the swapped-in filter listens once htmx has settled it
    query.press_sequentially("x")
    expect(browser).to_contain_text("Nothing here matches “reax”.")
    htmx_settled(page)
    query.fill("")
    expect(rows).to_have_count(3)
    htmx_settled(page)

    browser.get_by_role("link", name="inputs/").click()
    expect(browser.locator(".crumbs strong")).to_have_text("inputs")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("deep/")
    expect(rows.nth(1)).to_contain_text("mesh.dat")
    expect(rows.nth(1)).to_contain_text("2.3 KB")
    htmx_settled(page)
    browser.get_by_role("link", name="deep/").click()
    expect(browser.locator(".crumbs")).to_contain_text("inputs / deep")
    htmx_settled(page)
    browser.locator(".crumbs").get_by_role("link", name="inputs", exact=True).click()  # the breadcrumb goes back up
    expect(browser.locator(".crumbs strong")).to_have_text("inputs")
    htmx_settled(page)

    browser.get_by_role("button", name="mesh.dat").click()
    path = page.get_by_label("Server path")
    expect(path).to_have_value(str(files_root / "inputs" / "mesh.dat"))
    page.get_by_label("Action").select_option("copy")
    screenshot("attach-browser-picked")
    page.get_by_role("button", name="Attach", exact=True).click()
    expect(files.locator("table.attached-list")).to_contain_text("mesh.dat")
    expect(browser.locator(".crumbs strong")).to_have_text("inputs")  # still where it was, to attach more
    htmx_settled(page)
    screenshot("attach-attached")

    # Another mesh.dat would land on the same name in every member's folder.
    browser.locator(".crumbs").get_by_role("link", name=str(files_root), exact=True).click()
    expect(browser.locator(".crumbs strong")).to_have_text(str(files_root))
    htmx_settled(page)
    browser.get_by_role("link", name="other/").click()
    expect(browser.locator(".crumbs strong")).to_have_text("other")
    htmx_settled(page)
    browser.get_by_role("button", name="mesh.dat").click()
    page.get_by_label("Action").select_option("symlink")
    page.get_by_role("button", name="Attach", exact=True).click()
    expect(page.locator("#field-path-errors")).to_have_text(
        f"mesh.dat is already attached (copy of {files_root / 'inputs' / 'mesh.dat'}). Detach it first, or rename one of them."
    )
    htmx_settled(page)
    screenshot("attach-clash")

    # A path relative to the allowed folder works too.
    page.get_by_label("Server path").fill("readme.txt")
    page.get_by_role("button", name="Attach", exact=True).click()
    expect(files.locator("table.attached-list")).to_contain_text("readme.txt")
    expect(page.locator("#field-path-errors")).to_be_empty()
    htmx_settled(page)

    # Detaching the first mesh.dat keeps the browser where it was; the other one can then be attached.
    page.once("dialog", lambda dialog: dialog.accept())
    attached = files.locator("table.attached-list")
    attached.get_by_role("row", name="mesh.dat").get_by_role("button", name="Detach").click()
    expect(files.locator("table.attached-list")).not_to_contain_text("mesh.dat")
    expect(browser.locator(".crumbs strong")).to_have_text("other")
    htmx_settled(page)
    browser.get_by_role("button", name="mesh.dat").click()
    page.get_by_label("Action").select_option("symlink")
    page.get_by_role("button", name="Attach", exact=True).click()
    expect(attached.get_by_role("row", name="mesh.dat")).to_contain_text("symlink")
    screenshot("attach-after-detach")
