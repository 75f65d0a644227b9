"""Launch throughput through the whole stack against xargs.

One ensemble of 1000 members (param i = range(0, 1000)) is launched with
concurrency = os.cpu_count(): services.run_launch (committed, so its on_commit
enqueues run_submit) -> a real Celery worker process hands the members to the
local runner, which generates each member's directory just before starting it
and pushes events to a fresh Redis stream -> a real monitor process writes them
to the database. The clock stops when the bench sees the run finished in the
database (the monitor sets Run.finished once every member is terminal): it
waits for the runner's exit on a pidfd, using no CPU, then polls every 1 ms. The baseline runs the same 1000 commands with `xargs -P <cpus> -n 1`
(each gets its index as one extra argument), timed just before and just after
the launch and averaged.

Cases: /bin/true, and <sys.executable> -c pass; each measured BENCH_TRIALS times
(default 5, interleaved with its baselines), the ratio printed being the median.
Also printed, for the median trial, where the time went (seconds after
run_launch was called): the worker's claim, members marked Queued (runner
started), the first member start and the last member exit (the runner's
journal), the database showing the run finished, and the CPU each process used
(the Redis and PostgreSQL servers' too, when they run here), the members' and
xargs's (with its commands) for comparison.

DATABASE_URL: a temp SQLite file, or the PostgreSQL database the environment
points at. Prints name=value lines; the last is the headline launch_ratio.
"""

import os
import re
import resource
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import Stack  # noqa: E402

from launchers.local import Journals  # noqa: E402

MEMBERS = int(os.environ.get("BENCH_MEMBERS", "1000"))
CPUS = os.cpu_count() or 1
TIMEOUT = float(os.environ.get("BENCH_TIMEOUT", "600"))
# This machine's disk and CPU vary a lot from one second to the next: each case is
# measured several times, and the ratio printed is the median.
TRIALS = int(os.environ.get("BENCH_TRIALS", "5"))
RUNNER_CPU = re.compile(r"runner cpu_s=([0-9.]+)")
MEMBERS_CPU = re.compile(r"members cpu_s=([0-9.]+)")


def time_xargs(argv: list[str]) -> tuple[float, float]:
    """Seconds, and the CPU seconds xargs and the commands used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        ["xargs", "-P", str(CPUS), "-n", "1", *argv],
        input="\n".join(str(i) for i in range(MEMBERS)) + "\n",
        text=True, stdout=subprocess.DEVNULL, check=True, timeout=TIMEOUT,
    )
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def wait_for_runners(stack: Stack, work_dir: Path, start: float) -> None:
    """Wait, using no CPU, until the run's runners have ended: the bench's own
    polling would take CPU away from the stack it measures. A runner's pidfd
    becomes readable when it exits (it is not our child: its pid file names it)."""
    waited: set[str] = set()
    while time.perf_counter() - start < TIMEOUT:
        stack.check_alive()
        pids = {}
        for pid_file in work_dir.glob("runner-*.pid"):
            if pid_file.name not in waited and (text := pid_file.read_text()):
                pids[pid_file.name] = int(text)
        if not pids:
            if waited:
                return
            time.sleep(0.005)  # the worker has not started the runner yet
            continue
        for name, pid in pids.items():
            waited.add(name)
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # already gone
            try:
                while not select.select([pidfd], [], [], 1.0)[0]:
                    stack.check_alive()
            finally:
                os.close(pidfd)
    raise RuntimeError(f"the runners of {work_dir} still run after {TIMEOUT} s")


def time_launch(stack: Stack, user, name: str, run_settings: dict) -> dict:
    from django.db import connection

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
    wait_for_runners(stack, Path(run.work_dir), start)
    # Run.finished is set once every member is terminal in the database. Polled every
    # millisecond from here on, with the driver's own cursor (no Django wrapper per poll).
    connection.ensure_connection()
    finished_sql = f"SELECT finished FROM {Run._meta.db_table} WHERE id = {int(run.pk)}"
    cursor = connection.connection.cursor()
    try:
        while cursor.execute(finished_sql) and cursor.fetchone()[0] is None:
            if time.perf_counter() - start > TIMEOUT:
                unfinished = MemberRun.objects.filter(run_id=run.pk).exclude(status__in=TERMINAL_STATUSES).count()
                raise RuntimeError(f"{name}: {unfinished} members still unfinished after {TIMEOUT} s")
            time.sleep(0.001)
    finally:
        cursor.close()
    elapsed = time.perf_counter() - start
    assert not MemberRun.objects.filter(run_id=run.pk).exclude(status__in=TERMINAL_STATUSES).exists()
    cpu = {name: used - cpu_before.get(name, 0.0) for name, used in stack.cpu_seconds().items()}
    server_processes = [name for name in cpu if name.startswith("postgres:")]  # those that lived to the end
    if server_processes:
        cpu["postgres"] = sum(cpu.pop(name) for name in server_processes)
    cpu["bench"] = time.process_time() - own_cpu  # run_launch and the polling

    completed = MemberRun.objects.filter(run_id=run.pk, status=MemberStatus.COMPLETED).count()
    others = list(MemberRun.objects.filter(run_id=run.pk).exclude(status=MemberStatus.COMPLETED)
                  .values("pk", "name", "status", "returncode", "signal", "error", "job_id")[:5])
    run = Run.objects.get(pk=run.pk)
    queued = StatusEvent.objects.filter(run_id=run.pk, status=MemberStatus.QUEUED).order_by("at").values_list("at", flat=True)
    recorded = [status for _, status in Journals.read(Path(run.work_dir)).values()]
    # The runner is detached (its own session): its CPU comes from the line it logs at the end.
    logs = [log.read_text() for log in Path(run.work_dir).glob("runner-*.log")]
    cpu["runner"] = sum(float(match) for log in logs for match in RUNNER_CPU.findall(log))
    cpu["members"] = sum(float(match) for log in logs for match in MEMBERS_CPU.findall(log))
    started = [status.started or 0 for status in recorded]
    ended = [status.ended or 0 for status in recorded]
    return {
        "s": elapsed,
        "completed": completed,
        "others": others,
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
        only = os.environ.get("BENCH_CASES")  # e.g. "launch_python": measure only these cases
        cases = [case for case in cases if not only or case[0] in only.split(",")]
        results = {}
        for name, run_settings, argv in cases:
            trials = []
            for trial in range(TRIALS):
                before = time_xargs(argv)
                launch = time_launch(stack, user, f"bench-{name}-{trial}", run_settings)
                after = time_xargs(argv)
                assert launch["completed"] == MEMBERS, f"{name}: only {launch['completed']} of {MEMBERS} completed: {launch['others']}"
                launch["xargs_s"] = (before[0] + after[0]) / 2
                launch["xargs_cpu_s"] = (before[1] + after[1]) / 2
                launch["ratio"] = launch["s"] / launch["xargs_s"]
                trials.append(launch)
            results[name] = trials

        from django.conf import settings

        print(f"members={MEMBERS}")
        print(f"concurrency={CPUS}")
        print(f"trials={TRIALS}")
        print(f"database={stack.database}")
        print(f"redis_url={settings.REDIS_URL}")
        for name, trials in results.items():
            print(f"{name}_ratios=" + ",".join(f"{t['ratio']:.2f}" for t in trials))
            median = sorted(trials, key=lambda t: t["ratio"])[(len(trials) - 1) // 2]  # its phases are printed
            for key in ("run_launch_call_s", "claimed_at_s", "queued_at_s", "first_start_s", "last_exit_s", "db_all_terminal_s",
                        "runner_cpu_s", "worker_cpu_s", "monitor_cpu_s", "bench_cpu_s", "redis_cpu_s", "postgres_cpu_s",
                        "members_cpu_s"):
                if key in median:  # the servers' CPU only where they run on this machine
                    print(f"{name}_{key}={median[key]:.3f}")
            print(f"{name}_s={median['s']:.3f}")
            print(f"{name}_xargs_s={median['xargs_s']:.3f}")
            print(f"{name}_xargs_cpu_s={median['xargs_cpu_s']:.3f}")
        for name in [name for name in ("launch_python", "launch") if name in results]:
            print(f"{name}_ratio={statistics.median(t['ratio'] for t in results[name]):.2f}")
    finally:
        stack.close()


if __name__ == "__main__":
    main()
