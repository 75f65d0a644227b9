"""The operator's side of who members run as: the admin maps users to Unix accounts, and
says plainly what FLOTILLA_RUN_AS=server means while several users can launch."""

import pwd

from playwright.sync_api import expect

from tests.conftest import PASSWORD


def test_the_admin_warns_about_server_mode_and_maps_a_user_to_a_unix_account(page, server, django_user_model, alice, screenshot):
    django_user_model.objects.create_superuser("root-admin", password=PASSWORD)
    page.goto(f"{server}/admin/login/")
    page.get_by_label("Username").fill("root-admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".messagelist .warning")).to_contain_text("FLOTILLA_RUN_AS=server")  # two users can launch
    screenshot("admin-run-as-warning")

    page.goto(f"{server}/admin/auth/user/{alice.pk}/change/")
    section = page.locator("fieldset, .inline-group").filter(has_text="Unix account")
    expect(section.first).to_be_visible()
    page.locator("input[name='unix_account-0-name']").fill("root")  # the server's own account: refused
    page.get_by_role("button", name="Save and continue editing").click()
    expect(page.locator(".errorlist").first).to_contain_text("server's own account")
    nobody = pwd.getpwnam("nobody").pw_name  # uid 65534: an ordinary account above 1000
    page.locator("input[name='unix_account-0-name']").fill(nobody)
    page.get_by_role("button", name="Save and continue editing").click()
    expect(page.locator(".messagelist .success")).to_be_visible()
    screenshot("admin-unix-account")
    alice.refresh_from_db()
    assert alice.unix_account.name == nobody
