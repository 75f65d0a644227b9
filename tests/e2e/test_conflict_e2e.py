"""Two tabs on one ensemble: the second save is shown the conflict, not allowed to undo the
first; and the admin's change form edits run and batch settings through fields."""

import re

from django.conf import settings
from playwright.sync_api import expect

from ensembles import services
from ensembles.models import Ensemble
from tests.conftest import PASSWORD
from tests.e2e.conftest import htmx_settled


def _screenshot(tab, name: str) -> None:
    folder = settings.BASE_DIR / "var" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def _ensemble(alice):
    experiment = services.experiment_create(owner=alice, name="heat")
    return services.ensemble_save(
        experiment=experiment,
        spec={"name": "sweep", "params": [{"name": "alpha", "values": "1, 2"}], "run_settings": {"exe": "/bin/echo"}},
    )


def test_saving_in_a_second_tab_after_the_first_shows_the_conflict(logged_in, server, alice):
    ensemble = _ensemble(alice)
    url = f"{server}/ensembles/{ensemble.pk}/"
    first, second = logged_in, logged_in.context.new_page()
    for tab in (first, second):
        tab.goto(url)
        expect(tab.locator("#member-count")).to_have_attribute("data-count", "2")
        htmx_settled(tab)

    first.get_by_label("Executable").fill("/bin/cat")
    first.get_by_role("button", name="Save ensemble").click()
    expect(first.locator(".message")).to_contain_text("saved")

    second.get_by_label("Description", exact=True).fill("my notes")
    second.locator("#id_params-0-values").fill("1, 2, 3")
    second.get_by_role("button", name="Save ensemble").click()
    conflict = second.locator("#edit-conflict")
    expect(conflict).to_contain_text(re.compile(r"This ensemble was changed in another tab or by another session at \d\d:\d\d"))
    expect(conflict.locator("dl")).to_contain_text("/bin/cat")
    expect(second.locator("#id_params-0-values")).to_have_value("1, 2, 3")  # the user's input is kept
    expect(second.get_by_label("Executable")).to_have_value("/bin/echo")
    expect(second.locator("#member-count")).to_have_attribute("data-count", "3")
    _screenshot(second, "builder-conflict")  # the second tab (the screenshot fixture takes the first)
    assert Ensemble.objects.get().run_settings["exe"] == "/bin/cat"

    with second.context.expect_page() as opened:
        conflict.get_by_role("link", name="Open the current version in a new tab").click()
    current = opened.value
    expect(current.get_by_label("Executable")).to_have_value("/bin/cat")
    current.close()

    second.get_by_role("button", name="Save ensemble").click()  # reviewed: save again, over the new version
    expect(second.locator(".message")).to_contain_text("saved")
    ensemble.refresh_from_db()
    assert (ensemble.description, ensemble.run_settings["exe"], ensemble.version) == ("my notes", "/bin/echo", 3)


def test_the_admin_edits_settings_through_fields(page, server, alice, django_user_model, screenshot):
    ensemble = _ensemble(alice)
    django_user_model.objects.create_superuser("root-admin", password=PASSWORD)
    page.goto(f"{server}/admin/login/")
    page.get_by_label("Username").fill("root-admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{server}/admin/ensembles/ensemble/{ensemble.pk}/change/")

    page.get_by_label("Arguments").fill("heat.py --steps 100")
    page.get_by_label("Environment").fill("OMP_NUM_THREADS=2\n9LIVES=1")
    page.get_by_label("Nodes").fill("0")
    page.get_by_role("button", name="Save and continue editing").click()
    expect(page.locator(".form-row.field-env_vars .errorlist")).to_contain_text("not a valid environment variable name")
    expect(page.locator(".form-row.field-nodes .errorlist")).to_contain_text("greater than or equal to 1")
    screenshot("admin-ensemble-settings-errors")

    page.get_by_label("Environment").fill("OMP_NUM_THREADS=2")
    page.get_by_label("Nodes").fill("")
    page.get_by_role("button", name="Save and continue editing").click()
    expect(page.locator(".messagelist .success")).to_be_visible()
    expect(page.get_by_label("Arguments")).to_have_value("heat.py --steps 100")
    screenshot("admin-ensemble-settings")
    ensemble.refresh_from_db()
    assert ensemble.run_settings["exe_args"] == ["heat.py", "--steps", "100"]
    assert (ensemble.run_settings["env_vars"], ensemble.version) == ({"OMP_NUM_THREADS": "2"}, 2)
