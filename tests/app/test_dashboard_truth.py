"""What the pages show is what is true: launchers offered, counts versus rows, notices, live badges."""

import re

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from ensembles import launching, realtime, selectors, services
from ensembles.models import Cluster, Experiment, MemberRun, MemberStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(alice, experiment, ensemble, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        return services.run_launch(user=alice, experiment=experiment)


# --- 1. clusters whose scheduler is not available yet ------------------------------


@pytest.fixture
def clusters(db):
    return {scheduler: Cluster.objects.create(name=f"{scheduler}-site", scheduler=scheduler)
            for scheduler in ("local", "slurm", "pbs", "lsf")}


def test_the_experiment_form_shows_unavailable_clusters_disabled_with_a_note(alice_client, clusters):
    html = alice_client.get(reverse("ensembles:experiment_create")).content.decode()
    for scheduler in ("pbs", "lsf"):
        pk = clusters[scheduler].pk
        assert re.search(rf'<option value="{pk}"[^>]* disabled[^>]*>[^<]*not available yet[^<]*</option>', html), scheduler
    for scheduler in ("local", "slurm"):
        option = re.search(rf'<option value="{clusters[scheduler].pk}"[^>]*>[^<]*</option>', html).group(0)
        assert "disabled" not in option and "not available" not in option, option
    assert re.search(r'<option value=""[^>]*>Detect at launch</option>', html)


@pytest.mark.parametrize("scheduler", ["pbs", "lsf"])
def test_an_unavailable_cluster_posted_anyway_is_a_field_error(alice_client, clusters, scheduler):
    response = alice_client.post(reverse("ensembles:experiment_create"), {"name": "heat", "cluster": clusters[scheduler].pk})
    assert response.status_code == 200
    errors = re.search(r'id="field-cluster-errors"[^>]*>([^<]*)<', response.content.decode()).group(1)
    assert "not available yet" in errors
    assert not Experiment.objects.exists()


def test_editing_an_experiment_to_an_unavailable_cluster_is_refused(alice_client, experiment, clusters):
    url = reverse("ensembles:experiment_edit", args=[experiment.pk])
    before = experiment.cluster
    response = alice_client.post(url, {"name": "heat", "cluster": clusters["pbs"].pk})
    assert response.status_code == 200 and "not available yet" in response.content.decode()
    experiment.refresh_from_db()
    assert experiment.cluster == before
    assert alice_client.post(url, {"name": "heat", "cluster": ""}).status_code == 302


def test_the_form_offers_exactly_the_clusters_a_launch_accepts(experiment, clusters, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda command: None)  # no scheduler here: "detect" runs locally
    for cluster in [*clusters.values(), None]:
        experiment.cluster = cluster
        try:
            services._resolve_cluster(experiment)
        except ValidationError:
            accepted = False
        else:
            accepted = True
        option_enabled = cluster is None or cluster.scheduler in launching.AVAILABLE_SCHEDULERS
        assert accepted == option_enabled, cluster


def test_detect_at_launch_follows_smartsims_order_among_the_clusters_here(experiment, clusters, monkeypatch):
    experiment.cluster = None
    on_path = {"sbatch"}
    monkeypatch.setattr("shutil.which", lambda command: f"/usr/bin/{command}" if command in on_path else None)
    assert services._resolve_cluster(experiment) == clusters["slurm"]
    on_path = {"sbatch", "qsub"}  # PBS first, and PBS is not available yet: a clear refusal
    with pytest.raises(ValidationError, match="PBS, which Flotilla cannot drive yet"):
        services._resolve_cluster(experiment)
    on_path = set()
    assert services._resolve_cluster(experiment) is None  # this machine's processes


# --- 2. the run page's counts agree with its rows -------------------------------


def _page_statuses(html: str) -> tuple[dict, dict]:
    counts = {s: int(n) for s, n in re.findall(r'data-status="(\w+)" data-count="(\d+)"', html)}
    rows = {}
    for row in re.findall(r'<tr id="member-\d+".*?</tr>', html, flags=re.S):
        status = re.search(r'data-status="(\w+)"', row).group(1).lower()
        rows[status] = rows.get(status, 0) + 1
    return {s: n for s, n in counts.items() if n}, rows


def test_the_run_page_counts_agree_with_its_rows_when_statuses_change_between_reads(alice_client, run, monkeypatch):
    """Whichever of the two reads (counts, rows) comes second sees members that moved on."""
    MemberRun.objects.filter(run=run).update(status=MemberStatus.QUEUED)
    calls = []

    def moving_on(original):
        def wrapper(*args, **kwargs):
            calls.append(original.__name__)
            if len(calls) == 2:  # between the two reads, the monitor records members running
                ids = list(run.members.order_by("position").values_list("pk", flat=True)[:4])
                MemberRun.objects.filter(pk__in=ids).update(status=MemberStatus.RUNNING)
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(selectors, "run_summary", moving_on(selectors.run_summary))
    monkeypatch.setattr(selectors, "run_members_page", moving_on(selectors.run_members_page))
    html = alice_client.get(reverse("ensembles:run_detail", args=[run.pk])).content.decode()
    assert sorted(calls) == ["run_members_page", "run_summary"]
    counts, rows = _page_statuses(html)
    assert sum(rows.values()) == 6
    assert {status.lower(): n for status, n in counts.items()} == rows


def test_a_run_page_showing_part_of_the_run_still_counts_the_whole_run(alice_client, run):
    url = reverse("ensembles:run_detail", args=[run.pk])
    html = alice_client.get(url + "?size=2").content.decode()  # several pages: counts from a count query
    assert 'data-status="New" data-count="6"' in html
    html = alice_client.get(url + "?status=Failed").content.decode()  # filtered: the whole run is still counted
    assert 'data-status="New" data-count="6"' in html


# --- 3. the "Stopping" notice ends with the run ---------------------------------

OOB_CLEAR = re.compile(r'<div id="action-status"[^>]*hx-swap-oob="true"[^>]*></div>')


def test_the_live_update_of_a_finished_run_clears_the_action_notice(run):
    MemberRun.objects.filter(run=run).update(status=MemberStatus.CANCELLED)
    run.finished = timezone.now()
    run.save(update_fields=["finished"])
    assert OOB_CLEAR.search(realtime.run_update_html(run.pk, []))
    assert OOB_CLEAR.search(realtime.run_update_html(run.pk, [], reload=True))


def test_the_live_update_of_an_active_run_keeps_the_action_notice(run):
    assert not OOB_CLEAR.search(realtime.run_update_html(run.pk, []))


# --- 4. the member page's badge is live until the member has ended ---------------


def test_the_member_status_badge_polls_while_the_member_runs(alice_client, run):
    member = run.members.order_by("position").first()
    url = reverse("ensembles:member_run_status", args=[member.pk])
    page = alice_client.get(reverse("ensembles:member_run_detail", args=[member.pk])).content.decode()
    badge = re.search(r'<span [^>]*id="member-status"[^>]*>', page).group(0)
    assert f'hx-get="{url}"' in badge and 'hx-trigger="every 2s"' in badge

    MemberRun.objects.filter(pk=member.pk).update(status=MemberStatus.RUNNING)
    response = alice_client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="member-status"' in html and ">Running</span>" in html and 'hx-trigger="every 2s"' in html


def test_a_terminal_member_status_badge_stops_polling(alice_client, run):
    member = run.members.order_by("position").first()
    MemberRun.objects.filter(pk=member.pk).update(status=MemberStatus.COMPLETED)
    html = alice_client.get(reverse("ensembles:member_run_status", args=[member.pk])).content.decode()
    assert ">Completed</span>" in html and "hx-trigger" not in html and "hx-get" not in html
    page = alice_client.get(reverse("ensembles:member_run_detail", args=[member.pk])).content.decode()
    badge = re.search(r'<span [^>]*id="member-status"[^>]*>', page).group(0)
    assert "hx-trigger" not in badge


@pytest.mark.parametrize("persona", ["bob_client", "charlie_client"])
def test_other_users_get_404_for_alices_member_status(request, persona, run):
    member = run.members.first()
    other = request.getfixturevalue(persona)
    assert other.get(reverse("ensembles:member_run_status", args=[member.pk])).status_code == 404
