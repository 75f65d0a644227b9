"""Launch throughput through the whole stack against xargs.

One ensemble of 1000 members (param i = range(0, 1000)) is launched with
concurrency = os.cpu_count(): services.run_launch (committed, so its on_commit
enqueues run_submit) -> a real Celery worker process generates the member
directories and starts the local runner -> the runner pushes events to a
fresh Redis stream -> a real monitor process writes them to the database.
The clock stops when the bench, polling the database every 10 ms, sees every
MemberRun of the run in a terminal status. The baseline runs the same 1000
commands with `xargs -P <cpus> -n 1` (each gets its index as one extra
argument); it is timed before and after the launch and averaged.

Cases: /bin/true, and <sys.executable> -c pass.
Also printed, per case, where the time went (seconds after run_launch was called):
the worker's claim, members marked Queued (directories generated, runner
started), the first member start and the last member exit (status files), and
the database showing every member terminal.

DATABASE_URL: a temp SQLite file, or the PostgreSQL database the environment
points at. Prints name=value lines; the last is the headline launch_ratio.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import Stack  # noqa: E402

MEMBERS = int(os.environ.get("BENCH_MEMBERS", "1000"))
CPUS = os.cpu_count() or 1
TIMEOUT = float(os.environ.get("BENCH_TIMEOUT", "600"))


def time_xargs(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["xargs", "-P", str(CPUS), "-n", "1", *argv],
        input="\n".join(str(i) for i in range(MEMBERS)) + "\n",
        text=True, stdout=subprocess.DEVNULL, check=True, timeout=TIMEOUT,
    )
    return time.perf_counter() - start


def time_launch(stack: Stack, user, name: str, run_settings: dict) -> dict:
    from ensembles import services
    from ensembles.models import TERMINAL_STATUSES, MemberRun, MemberStatus, Run, StatusEvent

    experiment = services.experiment_create(owner=user, name=name)
    services.ensemble_save(
        experiment=experiment,
        spec={"name": "ens", "params": [{"name": "i", "values": f"range(0, {MEMBERS})"}], "run_settings": run_settings},
    )
    cpu_before = stack.cpu_seconds()
    own_cpu = time.process_time()
    t0 = time.time()
    start = time.perf_counter()
    run = services.run_launch(user=user, experiment=experiment, concurrency=CPUS)  # autocommit: enqueued on commit
    launched = time.perf_counter() - start
    unfinished = MemberRun.objects.filter(run_id=run.pk).exclude(status__in=TERMINAL_STATUSES)
    polls = 0
    while unfinished.exists():
        polls += 1
        if polls % 100 == 0:
            stack.check_alive()
        if time.perf_counter() - start > TIMEOUT:
            raise RuntimeError(f"{name}: {unfinished.count()} members still unfinished after {TIMEOUT} s")
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    cpu = {name: used - cpu_before.get(name, 0.0) for name, used in stack.cpu_seconds().items()}
    cpu["bench"] = time.process_time() - own_cpu  # run_launch and the 10 ms polling

    completed = MemberRun.objects.filter(run_id=run.pk, status=MemberStatus.COMPLETED).count()
    run = Run.objects.get(pk=run.pk)
    queued = StatusEvent.objects.filter(run_id=run.pk, status=MemberStatus.QUEUED).order_by("at").values_list("at", flat=True)
    started, ended = [], []
    for path in (Path(run.work_dir) / "status").glob("*.json"):
        data = json.loads(path.read_text())
        started.append(data.get("started") or 0)
        ended.append(data.get("ended") or 0)
    return {
        "s": elapsed,
        "completed": completed,
        "run_launch_call_s": launched,
        "claimed_at_s": run.claimed_at.timestamp() - t0 if run.claimed_at else float("nan"),
        "queued_at_s": queued[0].timestamp() - t0 if queued else float("nan"),
        "first_start_s": min(started) - t0 if started else float("nan"),
        "last_exit_s": max(ended) - t0 if ended else float("nan"),
        "db_all_terminal_s": elapsed,
        **{f"{name}_cpu_s": used for name, used in cpu.items()},
    }


def main():
    stack = Stack("launch")
    try:
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.create_user(f"bench-{os.getpid()}", password="bench-password-1")
        stack.start_worker()
        stack.start_monitor()
        stack.wait_worker()
        stack.wait_monitor()

        cases = [
            ("launch", {"exe": "/bin/true"}, ["/bin/true"]),
            ("launch_python", {"exe": sys.executable, "exe_args": ["-c", "pass"]}, [sys.executable, "-c", "pass"]),
        ]
        results = {}
        for name, run_settings, argv in cases:
            before = time_xargs(argv)
            launch = time_launch(stack, user, f"bench-{name}", run_settings)
            after = time_xargs(argv)
            assert launch["completed"] == MEMBERS, f"{name}: only {launch['completed']} of {MEMBERS} completed"
            results[name] = (launch, (before + after) / 2)

        from django.conf import settings

        print(f"members={MEMBERS}")
        print(f"concurrency={CPUS}")
        print(f"database={stack.database}")
        print(f"redis_url={settings.REDIS_URL}")
        for name, (launch, _) in results.items():
            for key in ("run_launch_call_s", "claimed_at_s", "queued_at_s", "first_start_s", "last_exit_s", "db_all_terminal_s",
                        "worker_cpu_s", "monitor_cpu_s", "bench_cpu_s"):
                print(f"{name}_{key}={launch[key]:.3f}")
        launch, xargs = results["launch"]
        python_launch, python_xargs = results["launch_python"]
        print(f"launch_s={launch['s']:.3f}")
        print(f"xargs_s={xargs:.3f}")
        print(f"launch_python_s={python_launch['s']:.3f}")
        print(f"xargs_python_s={python_xargs:.3f}")
        print(f"launch_python_ratio={python_launch['s'] / python_xargs:.2f}")
        print(f"launch_ratio={launch['s'] / xargs:.2f}")
    finally:
        stack.close()


if __name__ == "__main__":
    main()
