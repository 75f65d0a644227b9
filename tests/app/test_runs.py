"""Launching, the run pages, exports and their permissions (no worker: tasks are only enqueued)."""

import json
import re
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from ensembles import services
from ensembles.models import Cluster, MemberRun, MemberStatus, Run, StatusEvent
from launchers.base import JobState, JobStatus

pytestmark = pytest.mark.django_db


def rows_in(html: str) -> int:
    return len(re.findall(r'<tr id="member-\d+"', html))


@pytest.fixture
def run(alice, experiment, ensemble, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        run = services.run_launch(user=alice, experiment=experiment)
    assert len(callbacks) == 1  # run_submit, sent after commit
    return run


def test_launch_creates_one_member_run_per_member_in_order(run, settings):
    members = list(run.members.order_by("position"))
    assert [m.name for m in members] == [f"sweep_{i}" for i in range(6)]
    assert members[1].params == {"alpha": 1, "beta": "y"}
    assert members[1].argv == ["/bin/echo", "run", "-alpha", "1"] or members[1].argv == ["/bin/echo", "run", "--alpha=1"]
    assert members[1].env == {"SSKEYOUT": "sweep_1"}
    assert members[1].cwd == str(settings.DATA_DIR / "alice" / "heat" / "runs" / "1" / "sweep" / "sweep_1")
    assert {m.status for m in members} == {MemberStatus.NEW}
    assert run.number == 1 and run.launcher == "local"


def test_members_added_by_hand_and_standalone_models_are_launched_too(alice, experiment, ensemble, settings):
    services.member_save(experiment=experiment, ensemble=ensemble, spec={"name": "extra", "run_settings": {"exe": "/bin/true"}})
    services.member_save(experiment=experiment, spec={"name": "baseline", "run_settings": {"exe": "/bin/true"}})
    run = services.run_launch(user=alice, experiment=experiment)
    names = list(run.members.order_by("position").values_list("name", "kind", "cwd"))
    assert names[-2] == ("extra", "added", str(settings.DATA_DIR / "alice" / "heat" / "runs" / "1" / "sweep" / "extra"))
    assert names[-1] == ("baseline", "model", str(settings.DATA_DIR / "alice" / "heat" / "runs" / "1" / "baseline"))


@pytest.mark.parametrize(
    "setup, message",
    [
        ("empty", "has no members"),
        ("nothing", "Nothing to launch"),
        ("too_many", "at most 3 are allowed"),
        ("pbs", "uses PBS, which Flotilla cannot drive yet"),
    ],
)
def test_launch_refuses_with_a_clear_message(alice_client, alice, experiment, settings, setup, message):
    if setup == "empty":
        services.ensemble_save(
            experiment=experiment, spec={"name": "e", "params": [{"name": "a", "values": "range(0, 0)"}], "run_settings": {"exe": "x"}}
        )
    elif setup == "too_many":
        settings.MAX_MEMBERS_PER_RUN = 3
        services.ensemble_save(
            experiment=experiment, spec={"name": "e", "params": [{"name": "a", "values": "range(0, 4)"}], "run_settings": {"exe": "x"}}
        )
    elif setup == "pbs":
        experiment.cluster = Cluster.objects.create(name="pbs-site", scheduler="pbs")
        experiment.save()
        services.ensemble_save(experiment=experiment, spec={"name": "e", "run_settings": {"exe": "x"}})
    response = alice_client.post(reverse("ensembles:run_launch", args=[experiment.pk]), follow=True)
    assert message in response.content.decode()
    assert not Run.objects.exists()


def test_a_second_launch_waits_for_the_active_run(alice_client, run, experiment):
    response = alice_client.post(reverse("ensembles:run_launch", args=[experiment.pk]), follow=True)
    assert "Run 1 is still active with" in response.content.decode()
    run.finished = run.created
    run.save()
    alice_client.post(reverse("ensembles:run_launch", args=[experiment.pk]))
    assert Run.objects.filter(number=2).exists()


def test_launch_with_a_bad_concurrency_is_refused(alice_client, experiment, ensemble):
    response = alice_client.post(reverse("ensembles:run_launch", args=[experiment.pk]), {"concurrency": "0"}, follow=True)
    assert "greater than or equal to 1" in response.content.decode()
    assert not Run.objects.exists()


def test_the_run_page_shows_counts_and_members(alice_client, run):
    response = alice_client.get(reverse("ensembles:run_detail", args=[run.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert 'data-status="New" data-count="6"' in html
    assert rows_in(html) == 6
    assert f'ws-connect="/ws/runs/{run.pk}/"' in html


def _set_status(run, status, n):
    ids = list(run.members.order_by("position").values_list("pk", flat=True)[:n])
    MemberRun.objects.filter(pk__in=ids).update(status=status)


def test_the_members_table_filters_by_status_and_parameter_and_sorts(alice_client, run):
    _set_status(run, MemberStatus.FAILED, 2)
    url = reverse("ensembles:run_members", args=[run.pk])
    html = alice_client.get(url, {"status": "Failed"}).content.decode()
    assert rows_in(html) == 2
    html = alice_client.get(url, {"param": "beta", "value": "z"}).content.decode()
    assert rows_in(html) == 2 and "sweep_2" in html and "sweep_5" in html
    html = alice_client.get(url, {"param": "alpha", "value": "2"}).content.decode()
    assert rows_in(html) == 3
    html = alice_client.get(url, {"size": "4", "page": "2"}).content.decode()
    assert rows_in(html) == 2 and "Page 2 of 2" in html
    assert alice_client.get(url, {"sort": "nonsense", "page": "x", "size": "-3"}).status_code == 200


def test_run_page_query_count_does_not_grow_with_members(alice_client, alice, experiment):
    def queries_for(size, name):
        services.ensemble_save(
            experiment=experiment, spec={"name": name, "params": [{"name": "i", "values": f"range(0, {size})"}], "run_settings": {"exe": "x"}}
        )
        run = services.run_launch(user=alice, experiment=experiment)
        Run.objects.filter(pk=run.pk).update(finished=run.created)
        experiment.ensembles.exclude(name=name).delete()
        with CaptureQueriesContext(connection) as context:
            assert alice_client.get(reverse("ensembles:run_detail", args=[run.pk])).status_code == 200
        return len(context)

    # a run that fits on one page takes its counts from its rows: one query less
    assert queries_for(5, "small") + 1 == queries_for(250, "large")


def test_statuses_only_move_forward_and_results_are_stored(run):
    """The results come with the Completed status: the member's runner reads them (as the member's account)."""
    member = run.members.get(name="sweep_0")
    key = member.pk
    services.member_runs_apply({key: JobStatus(JobState.RUNNING, job_id="123", started=1000.0)})
    services.member_runs_apply({key: JobStatus(JobState.COMPLETED, job_id="123", returncode=0, started=1000.0, ended=1002.5,
                                               results={"energy": 1.5, "n": 3})})
    changed = services.member_runs_apply({key: JobStatus(JobState.RUNNING, job_id="123", started=1000.0)})  # late, replayed
    member.refresh_from_db()
    assert changed == {}
    assert (member.status, member.returncode, member.runtime) == (MemberStatus.COMPLETED, 0, 2.5)
    assert member.results == {"energy": 1.5, "n": 3}
    assert list(StatusEvent.objects.filter(member=member).values_list("status", flat=True)) == ["Running", "Completed"]


def test_a_run_is_finished_when_every_member_has_ended(run):
    Run.objects.filter(pk=run.pk).update(submit_state="submitted")
    statuses = {m.pk: JobStatus(JobState.FAILED, returncode=1, started=1.0, ended=2.0) for m in run.members.all()}
    services.member_runs_apply(statuses)
    run.refresh_from_db()
    assert run.finished is not None


def test_rerun_failed_creates_new_attempts_linked_to_the_old_ones(run, django_capture_on_commit_callbacks):
    Run.objects.filter(pk=run.pk).update(submit_state="submitted")
    _set_status(run, MemberStatus.FAILED, 2)
    old = run.members.get(name="sweep_0")
    Path(old.cwd).mkdir(parents=True)
    (Path(old.cwd) / "sweep_0.out").write_text("first attempt")
    with django_capture_on_commit_callbacks() as callbacks:
        assert services.run_rerun_failed(run_id=run.pk) == 2
    assert len(callbacks) == 2  # the submit, and the table's reload on the pages that watch the run
    new = run.members.get(name="sweep_0", latest=True)
    old.refresh_from_db()
    assert (new.attempt, new.previous_id, new.status) == (2, old.pk, MemberStatus.NEW)
    assert not old.latest
    assert Path(old.cwd, "sweep_0.out").read_text() == "first attempt"  # kept under .attempts/
    assert ".attempts" in old.cwd
    assert run.members.filter(latest=True).count() == 6


def test_member_page_serves_only_files_inside_its_directory(alice_client, run, tmp_path):
    member = run.members.get(name="sweep_0")
    folder = Path(member.cwd)
    folder.mkdir(parents=True)
    (folder / "sweep_0.out").write_text("hello")
    (folder / "link").symlink_to("/etc/passwd")
    page = alice_client.get(reverse("ensembles:member_run_detail", args=[member.pk])).content.decode()
    assert "sweep_0.out" in page and "echo run" in page
    response = alice_client.get(reverse("ensembles:member_run_file", args=[member.pk, "sweep_0.out"]))
    assert b"".join(response.streaming_content) == b"hello"
    for name in ["link", "..", "missing.txt"]:
        assert alice_client.get(reverse("ensembles:member_run_file", args=[member.pk, name])).status_code == 404


def test_export_has_smartsim_columns_params_and_results(alice_client, run):
    MemberRun.objects.filter(pk=run.members.get(name="sweep_0").pk).update(results={"energy": 2.0}, status="Completed")
    csv_text = b"".join(alice_client.get(reverse("ensembles:run_export", args=[run.pk, "csv"])).streaming_content).decode()
    header, first = csv_text.splitlines()[:2]
    assert header.startswith("name,entity_type,job_id,run_id,time,status,returncode,entity,attempt")
    assert header.endswith("params.alpha,params.beta,results.energy")
    assert first.startswith("sweep_0,Model,,1,,Completed,,sweep,1") and first.endswith(",1,x,2.0")
    rows = json.loads(b"".join(alice_client.get(reverse("ensembles:run_export", args=[run.pk, "json"])).streaming_content))
    assert rows[0]["params"] == {"alpha": 1, "beta": "x"}
    assert alice_client.get(f"/runs/{run.pk}/export.xml").status_code == 404


def test_action_buttons_enqueue_tasks_after_commit(alice_client, run, django_capture_on_commit_callbacks):
    Run.objects.filter(pk=run.pk).update(submit_state="submitted")  # a pending run stops at once (test_runs_pending.py)
    run.members.filter(name="sweep_0").update(status=MemberStatus.FAILED)  # something to re-run
    member = run.members.get(name="sweep_1")
    for url in [
        reverse("ensembles:run_cancel", args=[run.pk]),
        reverse("ensembles:run_rerun", args=[run.pk]),
        reverse("ensembles:member_run_cancel", args=[member.pk]),
    ]:
        with django_capture_on_commit_callbacks() as callbacks:
            response = alice_client.post(url)
        assert response.status_code == 200 and len(callbacks) == 1, url


def test_plots_fragment_has_the_figures(alice_client, run):
    member = run.members.get(name="sweep_0")
    services.member_runs_apply({member.pk: JobStatus(JobState.COMPLETED, returncode=0, started=run.created.timestamp(), ended=run.created.timestamp() + 1)})
    html = alice_client.get(reverse("ensembles:run_plots", args=[run.pk])).content.decode()
    for figure in ["figure-status", "figure-runtime", "figure-timeline"]:
        assert f'id="{figure}"' in html


@pytest.mark.parametrize("persona", ["bob_client", "charlie_client"])
def test_other_users_get_404_for_runs_and_members_of_alice(request, persona, run, experiment):
    other = request.getfixturevalue(persona)
    member = run.members.first()
    urls = [
        ("post", reverse("ensembles:run_launch", args=[experiment.pk])),
        ("get", reverse("ensembles:run_detail", args=[run.pk])),
        ("get", reverse("ensembles:run_members", args=[run.pk])),
        ("get", reverse("ensembles:run_plots", args=[run.pk])),
        ("post", reverse("ensembles:run_cancel", args=[run.pk])),
        ("post", reverse("ensembles:run_rerun", args=[run.pk])),
        ("get", reverse("ensembles:run_export", args=[run.pk, "csv"])),
        ("get", reverse("ensembles:member_run_detail", args=[member.pk])),
        ("post", reverse("ensembles:member_run_cancel", args=[member.pk])),
        ("get", reverse("ensembles:member_run_file", args=[member.pk, "sweep_0.out"])),
    ]
    for method, url in urls:
        assert getattr(other, method)(url).status_code == 404, url
    assert Run.objects.count() == 1


def test_demo_experiment_is_ready_to_launch(alice_client, alice):
    response = alice_client.post(reverse("ensembles:demo_create"))
    experiment = alice.experiments.get(name="heat-demo")
    assert response.status_code == 302
    ensemble = experiment.ensembles.get()
    assert len(ensemble.space()) == 12 and ensemble.results_file == "results.json"
    assert sorted(ensemble.files.values_list("action", flat=True)) == ["configure", "copy"]
    alice_client.post(reverse("ensembles:demo_create"))
    assert alice.experiments.filter(name="heat-demo-2").exists()


def test_members_whose_files_are_gone_fail_with_a_clear_message(alice, experiment, ensemble, settings, tmp_path):
    from unittest import mock

    from launchers.local import LocalLauncher

    settings.FILE_ROOTS = [tmp_path]
    source = tmp_path / "input.cfg"
    source.write_text("a = ;alpha;")
    services.file_attach_path(owner=ensemble, path=str(source), action="configure")
    run = services.run_launch(user=alice, experiment=experiment)
    source.unlink()
    with mock.patch.object(LocalLauncher, "submit") as submit:
        services.run_submit(run_id=run.pk)
    submit.assert_not_called()
    member = run.members.first()
    assert member.status == MemberStatus.FAILED
    assert "Cannot prepare the files of sweep" in member.error and "does not exist" in member.error


def test_plot_axes_follow_the_data_until_the_user_picks_them(alice_client, run):
    member = run.members.get(name="sweep_0")
    MemberRun.objects.filter(pk=member.pk).update(results={"energy": 2.0}, status="Completed")
    url = reverse("ensembles:run_plots", args=[run.pk])
    default = alice_client.get(url, {"x": "alpha", "y": "alpha", "axes": "default"})
    assert (default.context["x"], default.context["y"]) == ("alpha", "energy")
    chosen = alice_client.get(url, {"x": "energy", "y": "alpha", "axes": "chosen"})
    assert (chosen.context["x"], chosen.context["y"]) == ("energy", "alpha")
    assert 'name="axes" value="chosen"' in chosen.content.decode()


def _launch_queries(user, name: str, added: int, roots: Path) -> int:
    experiment = services.experiment_create(owner=user, name=name)
    ensemble = services.ensemble_save(
        experiment=experiment,
        spec={"name": "sweep", "params": [{"name": "alpha", "values": "1, 2"}], "run_settings": {"exe": "/bin/echo"}},
    )
    services.file_attach_path(owner=ensemble, path=str(roots / "shared.txt"), action="copy")
    for index in range(added):
        member = services.member_save(experiment=experiment, ensemble=ensemble,
                                      spec={"name": f"extra{index}", "run_settings": {"exe": "/bin/true"}})
        services.file_attach_path(owner=member, path=str(roots / "own.txt"), action="copy")
    with CaptureQueriesContext(connection) as queries:
        run = services.run_launch(user=user, experiment=experiment)
    assert run.members.filter(kind="added").count() == added
    assert run.generation["extra0"]["copy"] == [str(roots / "shared.txt"), str(roots / "own.txt")]
    return len(queries.captured_queries)


def test_launch_queries_do_not_grow_with_the_members_added_by_hand(alice, settings, tmp_path):
    settings.FILE_ROOTS = [tmp_path]
    (tmp_path / "shared.txt").write_text("x")
    (tmp_path / "own.txt").write_text("y")
    assert _launch_queries(alice, "two", 2, tmp_path) == _launch_queries(alice, "twenty", 20, tmp_path)


def test_rerun_is_refused_with_a_clear_message_before_anything_is_queued(alice_client, run, django_capture_on_commit_callbacks):
    url = reverse("ensembles:run_rerun", args=[run.pk])
    with django_capture_on_commit_callbacks() as callbacks:
        response = alice_client.post(url)  # pending: the submission has not happened yet
    assert response.status_code == 422 and "still being submitted" in response.content.decode()
    Run.objects.filter(pk=run.pk).update(submit_state="submitted")
    with django_capture_on_commit_callbacks() as more:
        response = alice_client.post(url)  # nothing failed
    assert response.status_code == 422 and "Nothing to re-run" in response.content.decode()
    assert callbacks == more == []
    assert run.members.count() == 6


def test_stopping_a_member_that_has_ended_is_refused_with_a_clear_message(alice_client, run, django_capture_on_commit_callbacks):
    Run.objects.filter(pk=run.pk).update(submit_state="submitted")
    member = run.members.get(name="sweep_0")
    MemberRun.objects.filter(pk=member.pk).update(status=MemberStatus.COMPLETED)
    with django_capture_on_commit_callbacks() as callbacks:
        response = alice_client.post(reverse("ensembles:member_run_cancel", args=[member.pk]))
    assert response.status_code == 422
    assert "sweep_0 has already ended (Completed)" in response.content.decode()
    assert callbacks == []


def test_views_send_tasks_only_through_services():
    from ensembles import views

    assert not hasattr(views, "tasks")


@pytest.mark.django_db(transaction=True)  # commits for real: tasks are sent as in production
def test_rerun_and_stop_say_so_when_the_task_queue_is_unreachable(alice, alice_client, experiment, ensemble, monkeypatch):
    from kombu.exceptions import OperationalError

    from ensembles import tasks

    def unreachable(*args):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.run_submit, "delay", lambda *args: None)
    monkeypatch.setattr(tasks.run_rerun_failed, "delay", unreachable)
    monkeypatch.setattr(tasks.member_cancel, "delay", unreachable)
    run = services.run_launch(user=alice, experiment=experiment)
    Run.objects.filter(pk=run.pk).update(submit_state="submitted")
    run.members.filter(name="sweep_0").update(status=MemberStatus.FAILED)
    response = alice_client.post(reverse("ensembles:run_rerun", args=[run.pk]))
    assert response.status_code == 200
    assert "task queue is not reachable, so the failed members cannot be re-run yet" in response.content.decode()
    response = alice_client.post(reverse("ensembles:member_run_cancel", args=[run.members.get(name="sweep_1").pk]))
    assert response.status_code == 200
    assert "task queue is not reachable, so sweep_1 cannot be stopped yet" in response.content.decode()
    assert run.members.count() == 6


def test_launched_values_are_written_as_typed_and_stored_typed(alice, experiment, settings, tmp_path):
    from ensembles.forms import parse_member_params
    from ensembles.generation import prepare_member
    from ensembles.launching import JOB_FIELDS, job_spec

    settings.FILE_ROOTS = [tmp_path]
    source = tmp_path / "input.cfg"
    source.write_text("flag=;flag; lr=;lr; x=;x;")
    ensemble = services.ensemble_save(
        experiment=experiment,
        spec={
            "name": "typed",
            "params": [
                {"name": "flag", "values": "true, TRUE"},
                {"name": "lr", "values": "1e-3"},
                {"name": "x", "values": "range(0, 0.4, 0.1)"},
            ],
            "params_as_args": ["flag", "lr", "x"],
            "run_settings": {"exe": "/bin/true"},
        },
    )
    services.file_attach_path(owner=ensemble, path=str(source), action="configure")
    services.member_save(
        experiment=experiment, ensemble=ensemble,
        spec={"name": "extra", "params": parse_member_params("flag=True\nlr=0.10\nx=0.3"),
              "params_as_args": ["flag", "lr"], "run_settings": {"exe": "/bin/true"}},
    )
    run = services.run_launch(user=alice, experiment=experiment)
    member = run.members.only(*JOB_FIELDS).get(name="typed_3")
    assert member.params == {"flag": True, "lr": 0.001, "x": 0.3}
    assert [type(member.params[n]) for n in ("flag", "lr", "x")] == [bool, float, float]  # sorting, filters, plots
    assert member.argv == ["/bin/true", "--flag=true", "--lr=1e-3", "-x", "0.3"]
    assert member.params_text == {"flag": "true", "lr": "1e-3"}  # only what str(value) would not give
    assert run.members.get(name="typed_7").argv == ["/bin/true", "--flag=TRUE", "--lr=1e-3", "-x", "0.3"]
    extra = run.members.get(name="extra")
    assert extra.params == {"flag": True, "lr": 0.1, "x": 0.3}
    assert extra.argv == ["/bin/true", "--flag=True", "--lr=0.10"]

    # The runner's prepare hook gets the typed values and their text: the file is written as typed.
    spec = job_spec(member, files={"configure": [str(source)]}, roots=[str(tmp_path)])
    prepare_member(**spec.prepare["kwargs"])
    assert Path(member.cwd, "input.cfg").read_text() == "flag=true lr=1e-3 x=0.3"

    # A re-run keeps the texts.
    Run.objects.filter(pk=run.pk).update(submit_state="submitted")
    MemberRun.objects.filter(pk=member.pk).update(status=MemberStatus.FAILED)
    services.run_rerun_failed(run_id=run.pk)
    assert run.members.get(name="typed_3", latest=True).params_text == {"flag": "true", "lr": "1e-3"}
