"""Server time and query count of the run page for runs of 10^3, 10^4 and 10^5 members.

Runs are created directly (bulk_create of MemberRun rows, statuses mixed:
Completed, Failed, Cancelled, Running, Queued), nothing is launched. Each
request goes through Django's full stack with the test client
(GET ensembles:run_detail, HTTP_HOST=127.0.0.1); a throw-away SQLite database
is used. The query count comes from CaptureQueriesContext; the slowest query of
a request is printed too (on stderr, its SQL), to show where time goes.
Prints name=value lines; the last is the headline: the worst p95 over sizes.
"""

import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

from _django import setup_django  # noqa: E402

DATA = setup_django()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils import timezone  # noqa: E402

from ensembles import services  # noqa: E402
from ensembles.models import MemberRun, MemberStatus, Run, SubmitState  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))
SIZES = [10**3, 10**4, 10**5]
# Out of every 20 members: 12 completed, 2 failed, 1 cancelled, 3 running, 2 queued.
STATUS_CYCLE = (
    [MemberStatus.COMPLETED] * 12 + [MemberStatus.FAILED] * 2 + [MemberStatus.CANCELLED]
    + [MemberStatus.RUNNING] * 3 + [MemberStatus.QUEUED] * 2
)


def make_run(user, size: int) -> Run:
    experiment = services.experiment_create(owner=user, name=f"bench-{size}")
    ensemble = services.ensemble_save(
        experiment=experiment,
        spec={"name": "ens", "params": [{"name": "i", "values": f"range(0, {size})"}, {"name": "alpha", "values": "0.5"}],
              "run_settings": {"exe": "/bin/true"}},
    )
    run = Run.objects.create(experiment=experiment, number=1, launcher="local", concurrency=2,
                             submit_state=SubmitState.SUBMITTED)
    now = timezone.now()
    root = Path(DATA) / "bench" / experiment.name / "ens"

    def rows():
        for i in range(size):
            status = STATUS_CYCLE[i % len(STATUS_CYCLE)]
            started = now - timedelta(seconds=size - i) if status != MemberStatus.QUEUED else None
            ended = started + timedelta(seconds=1 + i % 7) if status in (
                MemberStatus.COMPLETED, MemberStatus.FAILED, MemberStatus.CANCELLED) else None
            name = f"ens_{i}"
            yield MemberRun(
                run=run, ensemble=ensemble, entity="ens", name=name, position=i + 1,
                params={"i": i, "alpha": 0.5}, argv=["/bin/true"], env={"SSKEYOUT": name}, cwd=str(root / name),
                status=status, job_id=str(10000 + i) if started else "",
                returncode={MemberStatus.COMPLETED: 0, MemberStatus.FAILED: 1}.get(status),
                signal=15 if status == MemberStatus.CANCELLED else None,
                started=started, ended=ended,
            )

    MemberRun.objects.bulk_create(rows(), batch_size=2000)
    return run


def measure(client, url):
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.status_code
    times.sort()
    return statistics.median(times), times[max(0, round(0.95 * len(times)) - 1)]


def main():
    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    results = {}
    for size in SIZES:
        run = make_run(user, size)
        url = reverse("ensembles:run_detail", args=[run.pk])
        client.get(url)  # warm up templates and caches
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url)
        queries = list(captured.captured_queries)  # now: the next request resets connection.queries
        assert response.status_code == 200 and b'id="member-' in response.content
        slowest = max(queries, key=lambda q: float(q["time"]))
        p50, p95 = measure(client, url)
        results[size] = (p50, p95, len(queries), float(slowest["time"]) * 1000, slowest["sql"])

    print(f"rounds={ROUNDS}")
    for size, (p50, p95, queries, slowest_ms, sql) in results.items():
        label = f"1e{len(str(size)) - 1}"
        print(f"dashboard_{label}_p50_ms={p50:.2f}")
        print(f"dashboard_{label}_p95_ms={p95:.2f}")
        print(f"dashboard_{label}_queries={queries}")
        print(f"dashboard_{label}_slowest_query_ms={slowest_ms:.2f}")
        print(f"dashboard_{label}_slowest_query={sql[:400]!r}", file=sys.stderr)
    counts = {queries for _, _, queries, _, _ in results.values()}
    print(f"queries_equal={'true' if len(counts) == 1 else 'false'}")
    print(f"dashboard_p95_ms={max(p95 for _, p95, _, _, _ in results.values()):.2f}")


if __name__ == "__main__":
    main()
