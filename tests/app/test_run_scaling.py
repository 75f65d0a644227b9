"""What a run's plots, exports, cancel, sockets and reconcile read does not grow with the run
beyond what they need (review findings: plots, exports, run_cancel, Redis clients, indexes)."""

import asyncio
import csv
import json
import random
from datetime import timedelta
from unittest import mock

import pytest
import redis
import redis.asyncio
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from ensembles import plots, realtime, selectors, services
from ensembles.models import MemberRun, MemberStatus, Run, StatusEvent, SubmitState

pytestmark = pytest.mark.django_db

PATH = (MemberStatus.QUEUED, MemberStatus.RUNNING)
ENDS = (MemberStatus.COMPLETED, MemberStatus.FAILED, MemberStatus.CANCELLED)


def make_run(experiment, members: int, *, number: int = 1, state=SubmitState.SUBMITTED, events: bool = True, seed: int = 0) -> Run:
    """A run of ``members`` members (half with results), and three status events each, some
    sharing a time; every fifth member is re-run (a second attempt, three more events)."""
    rng = random.Random(seed)
    run = Run.objects.create(experiment=experiment, number=number, launcher="local", submit_state=state, work_dir=f"/tmp/w{number}")
    rows = [
        MemberRun(
            run=run, entity="sweep", name=f"sweep_{i}", position=i, params={"alpha": i, "beta": "x"}, param_names=["alpha", "beta"],
            argv=["/bin/true"], env={}, cwd=f"/tmp/sweep_{i}", status=rng.choice(PATH + ENDS),
            results={"energy": i / 2} if i % 2 else None, error="a long error " * 50,
        )
        for i in range(members)
    ]
    MemberRun.objects.bulk_create(rows, batch_size=2000)
    if events:
        start = run.created
        stamps = []
        for member in MemberRun.objects.filter(run=run):
            at = start + timedelta(seconds=rng.randint(0, 50))
            statuses = [*PATH, rng.choice(ENDS)]
            if member.position % 5 == 0:
                statuses += [*PATH, MemberStatus.COMPLETED]
            for status in statuses:
                stamps.append(StatusEvent(run=run, member=member, status=status, at=at))
                at += timedelta(milliseconds=rng.choice([0, 0, 250, 1000, 1500]))
        rng.shuffle(stamps)  # ids out of time order
        StatusEvent.objects.bulk_create(stamps, batch_size=2000)
    return run


def python_events(run: Run) -> list[tuple[int, str, float]]:
    """What run_plot_data used to load: every event of the run."""
    return [(m, s, at.timestamp()) for m, s, at in StatusEvent.objects.filter(run=run).order_by("at", "id").values_list("member_id", "status", "at")]


# --- 1. plots ---------------------------------------------------------------


@pytest.mark.parametrize("members", [0, 1, 40, 400])  # 400 members: ~1440 events, a point every 4
def test_status_figure_counted_in_the_database_matches_replaying_every_event(experiment, members):
    run = make_run(experiment, members, seed=members)
    start = run.created.timestamp()
    expected = plots.status_over_time(python_events(run), start)
    assert plots.status_over_time(selectors.run_plot_data(run)["events"], start) == expected
    if members:
        assert expected["data"]


def test_plot_data_reads_a_bounded_number_of_status_rows_however_many_events(experiment):
    small, large = make_run(experiment, 30, number=1), make_run(experiment, 1500, number=2)
    assert StatusEvent.objects.filter(run=large).count() > 5000
    counts = []
    for run in (small, large):
        with CaptureQueriesContext(connection) as queries:
            data = selectors.run_plot_data(run)
        counts.append(len(queries))
        # At most two points a step (ceil), a handful of (status, previous status) rows each.
        assert len(data["events"]) <= 2 * plots.STATUS_MAX_POINTS + 1
    assert counts[0] == counts[1]


# --- 2. exports -------------------------------------------------------------


def old_json(run) -> bytes:
    return JsonResponse(list(selectors.run_export_rows(run)), safe=False, json_dumps_params={"indent": 1}).content


def old_csv(run) -> bytes:
    """The CSV the view built in memory before it streamed."""
    from ensembles.views import _flat

    rows = list(selectors.run_export_rows(run))
    response = HttpResponse(content_type="text/csv")
    writer = csv.writer(response)
    columns = selectors.export_columns(rows)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_flat(row, column) for column in columns])
    return response.content


@pytest.mark.parametrize("members", [0, 1, 1201])
def test_exports_stream_the_same_bytes_as_before(alice_client, experiment, members):
    run = make_run(experiment, members, events=False)
    MemberRun.objects.filter(run=run, position=0).update(results={"zeta": 1.5, "energy": 0.0})
    for fmt in ("csv", "json"):
        response = alice_client.get(reverse("ensembles:run_export", args=[run.pk, fmt]))
        assert response.status_code == 200 and response.streaming, fmt
        assert response["Content-Disposition"] == f'attachment; filename="heat-run1.{fmt}"'
        body = b"".join(response.streaming_content)
        if fmt == "json":
            assert body == old_json(run)
            assert json.loads(body) == json.loads(json.dumps(list(selectors.run_export_rows(run)), cls=DjangoJSONEncoder))
        else:
            assert body == old_csv(run)
            lines = body.decode().split("\r\n")
            assert len(lines) == members + 2  # header, rows, and the final line break
            if members:
                assert lines[0].endswith("params.alpha,params.beta,results.energy,results.zeta")  # results by name


def test_export_reads_the_run_in_chunks(alice_client, experiment, monkeypatch):
    monkeypatch.setattr(selectors, "EXPORT_CHUNK", 100)
    run = make_run(experiment, 450, events=False)
    seen = []
    real_iterator = type(MemberRun.objects.all()).iterator

    def iterator(queryset, chunk_size=None):
        seen.append(chunk_size)
        return real_iterator(queryset, chunk_size=chunk_size)

    monkeypatch.setattr(type(MemberRun.objects.all()), "iterator", iterator)
    response = alice_client.get(reverse("ensembles:run_export", args=[run.pk, "csv"]))
    assert seen == [], "nothing is read before the response streams"
    chunks = list(response.streaming_content)
    assert seen == [100] and len(chunks) > 1  # the header's names come from one query, the rows in chunks


# --- 3. run_cancel ----------------------------------------------------------


def test_run_cancel_loads_only_what_the_launcher_needs(experiment):
    counts = []
    for number, members in ((1, 3), (2, 300)):
        run = make_run(experiment, members, number=number, events=False)
        with mock.patch("launchers.local.LocalLauncher.cancel") as cancel, CaptureQueriesContext(connection) as queries:
            services.run_cancel(run_id=run.pk)
        jobs = cancel.call_args.args[0]
        unfinished = run.members.filter(latest=True).exclude(status__in=ENDS)
        assert sorted(int(job.key) for job in jobs) == sorted(unfinished.values_list("pk", flat=True))
        assert {job.cwd for job in jobs} <= {f"/tmp/sweep_{i}" for i in range(members)}
        selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
        assert not any('"results"' in sql or '"error"' in sql or '"generation"' in sql for sql in selects), selects
        counts.append(len(queries))
    assert counts[0] == counts[1]


# --- 4. Redis clients -------------------------------------------------------


def test_watch_heartbeat_and_unwatch_share_one_client_per_event_loop(settings):
    settings.EVENT_STREAM = "flotilla-test-watchers"
    made = []
    real = redis.asyncio.Redis.from_url

    def from_url(*args, **kwargs):
        made.append(args)
        return real(*args, **kwargs)

    async def socket_life():
        await realtime.watch(1, "chan.a")
        await realtime.watch(1, "chan.b")  # a heartbeat
        assert await realtime._async_client().zcard(realtime._watchers_key(1)) == 2
        await realtime.unwatch(1, "chan.a")
        await realtime.unwatch(1, "chan.b")
        await realtime._async_client().aclose()

    with mock.patch.object(redis.asyncio.Redis, "from_url", side_effect=from_url):
        asyncio.run(socket_life())
        assert len(made) == 1
        asyncio.run(socket_life())  # another loop, its own client
        assert len(made) == 2


def test_healthz_reuses_its_redis_client(client):
    from ensembles import views

    views._health_redis.cache_clear()
    with mock.patch.object(redis.Redis, "from_url", wraps=redis.Redis.from_url) as from_url:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
    assert from_url.call_count == 1


# --- 5. reconcile indexes ---------------------------------------------------


@pytest.mark.parametrize(
    "queryset",
    [
        lambda: Run.objects.filter(finished__isnull=True, submit_state__in=[SubmitState.SUBMITTED, SubmitState.CANCELLED]),
        lambda: Run.objects.filter(submit_state=SubmitState.SUBMITTING),
    ],
    ids=["unfinished", "submitting"],
)
def test_reconcile_queries_of_runs_use_an_index(experiment, queryset):
    from django.db import connection

    for number in range(1, 30):
        make_run(experiment, 0, number=number, events=False)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # a table this small is scanned anyway: ask whether an index *can* serve it
            cursor.execute("SET LOCAL enable_seqscan = off")
            plan = queryset().explain()
        assert "run_unfinished_idx" in plan or "run_submit_state_idx" in plan, plan
    else:
        plan = queryset().explain()
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan


def test_export_streams_under_asgi_a_piece_at_a_time(alice, experiment, monkeypatch):
    """Under ASGI (uvicorn) a sync iterator would be read whole first: the view hands an async one."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    from ensembles import views

    monkeypatch.setattr(views, "EXPORT_ROWS_PER_CHUNK", 10)
    run = make_run(experiment, 35, events=False)

    async def get():
        client = AsyncClient()
        await client.aforce_login(alice)
        response = await client.get(reverse("ensembles:run_export", args=[run.pk, "csv"]))
        assert response.streaming and response.is_async
        return [piece async for piece in response.streaming_content]

    pieces = async_to_sync(get)()
    assert len(pieces) == 5  # the header, then 10 + 10 + 10 + 5 rows
    assert b"".join(pieces) == old_csv(run)
