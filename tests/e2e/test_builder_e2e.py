"""A user logs in, creates an experiment and an ensemble, and watches the preview as they type."""

import re

from playwright.sync_api import expect

from tests.e2e.conftest import htmx_settled


def test_login_page_refuses_a_wrong_password(page, server, alice, screenshot):
    page.goto(f"{server}/experiments/")
    expect(page).to_have_url(re.compile(r"/login/\?next="))
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("correct username and password")
    screenshot("login-error")


def test_build_an_ensemble_with_a_live_preview(logged_in, server, screenshot):
    page = logged_in
    screenshot("experiments-empty")
    page.get_by_role("button", name="Create your first experiment").click()
    page.get_by_label("Name").fill("heat")
    page.get_by_label("Description").fill("1-D heat diffusion study")
    screenshot("experiment-form")
    page.get_by_role("button", name="Create experiment").click()
    expect(page.get_by_role("heading", name="heat")).to_be_visible()
    screenshot("experiment-detail")

    page.get_by_role("button", name="New ensemble").click()
    count = page.locator("#member-count")
    expect(count).to_have_attribute("data-count", "1")  # no parameters yet: one member

    page.get_by_label("Name", exact=True).fill("sweep")
    page.locator("#id_params-0-name").fill("alpha")
    page.locator("#id_params-0-values").fill("0.1, 0.2, 0.5")
    expect(count).to_have_attribute("data-count", "3")

    page.get_by_role("button", name="+ Add parameter").click()
    page.locator("#id_params-1-name").fill("nx")
    page.locator("#id_params-1-values").fill("range(10, 60, 10)")
    expect(count).to_have_attribute("data-count", "15")
    page.get_by_label("Executable").fill("/usr/bin/python3")
    page.get_by_label("Arguments").fill("heat.py --steps 100")
    page.locator("input[name='params-1-as_arg']").check()
    expect(page.locator("#preview")).to_contain_text("/usr/bin/python3 heat.py --steps 100 --nx=50")
    expect(page.locator("#preview .plot .main-svg").first).to_be_visible()  # the Plotly scatter
    screenshot("builder-all-perm")

    page.get_by_label("Replicas").fill("2")
    expect(count).to_have_attribute("data-count", "30")
    page.get_by_label("Replicas").fill("1")

    # A syntax error shows next to its row, and the preview says what to fix.
    page.locator("#id_params-1-values").fill("range(10)")
    expect(page.locator("#params-1-errors")).to_contain_text("range() takes")
    expect(page.locator("#preview")).to_contain_text("Fix the parameters")
    page.locator("#id_params-1-values").fill("range(10, 60, 10)")
    expect(page.locator("#params-1-errors")).to_be_empty()

    # step with unequal lengths truncates and warns
    page.get_by_label("Strategy").select_option("step")
    expect(count).to_have_attribute("data-count", "3")
    expect(page.locator("#preview-warnings")).to_contain_text("truncated to the shortest")
    screenshot("builder-step-warning")

    page.get_by_role("button", name="Create ensemble").click()
    expect(page.get_by_role("heading", name="Ensemble sweep")).to_be_visible()
    expect(count).to_have_attribute("data-count", "3")
    screenshot("builder-saved")


def test_remove_a_parameter_row_updates_the_preview(logged_in, server, alice):
    from ensembles import services

    experiment = services.experiment_create(owner=alice, name="lj")
    page = logged_in
    page.goto(f"{server}/experiments/{experiment.pk}/ensembles/new")
    page.locator("#id_params-0-name").fill("a")
    page.locator("#id_params-0-values").fill("1, 2, 3")
    page.get_by_role("button", name="+ Add parameter").click()
    page.locator("#id_params-1-name").fill("b")
    page.locator("#id_params-1-values").fill("x, y")
    count = page.locator("#member-count")
    expect(count).to_have_attribute("data-count", "6")
    page.get_by_role("button", name="Remove parameter").nth(1).click()
    expect(count).to_have_attribute("data-count", "3")


def test_configured_file_preview_highlights_substitutions(logged_in, server, alice, tmp_path, screenshot):
    from django.conf import settings

    from ensembles import services

    experiment = services.experiment_create(owner=alice, name="cfg")
    ensemble = services.ensemble_save(
        experiment=experiment,
        spec={"name": "ens", "params": [{"name": "alpha", "values": "1, 2, 3"}], "run_settings": {"exe": "/bin/true"}},
    )
    page = logged_in
    page.goto(f"{server}/ensembles/{ensemble.pk}/")
    example = settings.BASE_DIR / "examples" / "heat" / "input.cfg"
    page.get_by_label("Server path").fill(str(example))
    page.get_by_role("button", name="Attach").click()
    expect(page.locator("#attached-files")).to_contain_text("input.cfg")
    rendered = page.locator("#rendered-file")
    expect(rendered.locator("mark").first).to_have_text("1")
    htmx_settled(page)
    page.get_by_label(re.compile(r"^Member")).fill("2")
    expect(rendered.locator("mark").first).to_have_text("3")
    screenshot("builder-configured-file")
