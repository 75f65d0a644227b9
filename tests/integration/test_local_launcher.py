"""The local launcher with real processes, a real runner and the real Redis stream."""

import json
import os
import signal
import sys
import uuid

import pytest
import redis
from django.conf import settings

from launchers.base import JobSpec, JobState, decode_event
from launchers.local import EventSink, LocalLauncher, wake_key
from tests.conftest import wait_for

pytestmark = pytest.mark.integration
PY = sys.executable


@pytest.fixture
def stream():
    name = f"flotilla:test-events:{uuid.uuid4().hex}"
    yield name
    redis.Redis.from_url(settings.REDIS_URL).delete(name, wake_key(name))


@pytest.fixture
def launcher(tmp_path, stream):
    return LocalLauncher(work_dir=tmp_path / "run", redis_url=settings.REDIS_URL, stream=stream, grace=1.0)


def job(tmp_path, key, argv, **extra):
    folder = tmp_path / key
    folder.mkdir(exist_ok=True)
    return JobSpec(
        key=key, name=key, argv=argv, cwd=str(folder), stdout=str(folder / f"{key}.out"), stderr=str(folder / f"{key}.err"), **extra,
    )


def settle(launcher, jobs, timeout=20.0):
    return wait_for(
        lambda: (s := launcher.status([j.key for j in jobs])) and all(v.state.terminal for v in s.values()) and s, timeout
    )


def test_exit_codes_signals_and_output_are_recorded(launcher, tmp_path):
    jobs = [
        job(tmp_path, "ok", [PY, "-c", "print('hello'); import sys; print('oops', file=sys.stderr)"]),
        job(tmp_path, "fails", [PY, "-c", "raise SystemExit(3)"]),
        job(tmp_path, "killed", [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]),
        job(tmp_path, "missing", ["/no/such/program"]),
        job(tmp_path, "fds", [PY, "-c", "import os; print(os.readlink('/proc/self/fd/0'), sorted(map(int, os.listdir('/proc/self/fd'))))"]),
    ]
    launcher.submit(jobs, group="g1")
    result = settle(launcher, jobs)
    assert result["ok"].state == JobState.COMPLETED and result["ok"].returncode == 0
    assert (tmp_path / "ok" / "ok.out").read_text() == "hello\n"
    assert (tmp_path / "ok" / "ok.err").read_text() == "oops\n"
    assert (result["fails"].state, result["fails"].returncode) == (JobState.FAILED, 3)
    assert (result["killed"].state, result["killed"].signal) == (JobState.FAILED, signal.SIGKILL)
    assert (result["missing"].state, result["missing"].returncode) == (JobState.FAILED, 127)
    assert "cannot run" in (tmp_path / "missing" / "missing.err").read_text()
    # stdin is /dev/null, and no fd of the runner leaks in (3 is listdir's own)
    assert (tmp_path / "fds" / "fds.out").read_text() == "/dev/null [0, 1, 2, 3]\n"
    assert result["ok"].started <= result["ok"].ended


def test_events_are_pushed_to_the_stream_as_members_start_and_exit(launcher, tmp_path, stream):
    jobs = [job(tmp_path, "a", ["/bin/true"])]
    launcher.submit(jobs, group="g2")
    settle(launcher, jobs)
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    entries = wait_for(lambda: (found := [f for _, f in client.xrange(stream)]) and found[-1].get("last") and found)
    events = [decode_event(line) for fields in entries for line in fields["events"].splitlines()]
    assert [(key, status.state) for key, status in events] == [("a", JobState.RUNNING), ("a", JobState.COMPLETED)]
    assert [fields.get("last") for fields in entries] == [None] * (len(entries) - 1) + ["1"]  # the runner's last entry says so


def test_each_member_leads_its_own_process_group_and_cancel_reaches_its_children(launcher, tmp_path):
    script = (
        "import os, subprocess, sys, time; child = subprocess.Popen(['sleep', '60']); "
        "print(os.getpid(), os.getpgid(0), os.getsid(0), child.pid, flush=True); time.sleep(60)"
    )
    jobs = [job(tmp_path, "tree", [PY, "-c", script])]
    launcher.submit(jobs, group="g15")
    out = tmp_path / "tree" / "tree.out"
    pid, pgid, sid, child = map(int, wait_for(lambda: out.exists() and out.read_text().split()))
    assert pgid == pid  # killpg reaches whatever the member starts
    assert sid != pid  # not a session of its own: no scheduling group per member
    launcher.cancel(jobs, group="g15")
    assert settle(launcher, jobs, timeout=10)["tree"].state == JobState.CANCELLED
    wait_for(lambda: not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split(")")[1].split()[0] == "Z")


def test_members_get_their_env_but_not_the_servers_secrets(tmp_path, stream):
    launcher = LocalLauncher(
        work_dir=tmp_path / "run", stream=stream, base_env={"PATH": os.environ["PATH"], "HOME": "/tmp"}
    )
    script = "import os, json; print(json.dumps({k: os.environ.get(k) for k in ['SSKEYOUT', 'SECRET_KEY', 'HOME']}))"
    jobs = [job(tmp_path, "env", [PY, "-c", script], env={"SSKEYOUT": "ens_0"})]
    launcher.submit(jobs, group="g3")
    settle(launcher, jobs)
    assert json.loads((tmp_path / "env" / "env.out").read_text()) == {"SSKEYOUT": "ens_0", "SECRET_KEY": None, "HOME": "/tmp"}


def test_the_concurrency_limit_is_held(launcher, tmp_path):
    script = "import time, sys; print(time.time()); time.sleep(0.3); print(time.time())"
    jobs = [job(tmp_path, f"m{i}", [PY, "-c", script]) for i in range(6)]
    launcher.submit(jobs, group="g4", concurrency=2)
    settle(launcher, jobs)
    spans = [tuple(map(float, (tmp_path / j.key / f"{j.key}.out").read_text().split())) for j in jobs]
    moments = sorted({t for span in spans for t in span})
    most_at_once = max(sum(start <= m < end for start, end in spans) for m in moments)
    assert most_at_once == 2


def test_a_job_submitted_twice_runs_once(launcher, tmp_path):
    jobs = [job(tmp_path, f"m{i}", [PY, "-c", "print('ran')"]) for i in range(20)]
    launcher.submit(jobs, group="g5", concurrency=2)
    launcher.submit(jobs, group="g5", concurrency=2)
    settle(launcher, jobs)
    wait_for(lambda: not launcher.runner_alive())
    assert all((tmp_path / j.key / f"{j.key}.out").read_text() == "ran\n" for j in jobs)


def test_cancel_stops_running_jobs_and_queued_jobs_never_start(launcher, tmp_path):
    sleeper = [PY, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    jobs = [job(tmp_path, f"s{i}", sleeper) for i in range(3)]
    launcher.submit(jobs, group="g6", concurrency=1)
    wait_for(lambda: launcher.status(["s0"])["s0"].state == JobState.RUNNING)
    launcher.cancel(jobs, group="g6")
    result = settle(launcher, jobs, timeout=10)
    assert result["s0"].state == JobState.CANCELLED and result["s0"].signal == signal.SIGTERM
    assert [result[k].state for k in ("s1", "s2")] == [JobState.CANCELLED] * 2
    never_started = tmp_path / "s1" / "s1.out"  # may have been created ahead, empty, when s1 was prepared
    assert not never_started.exists() or never_started.read_text() == ""


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(launcher, tmp_path):
    stubborn = [PY, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"]
    jobs = [job(tmp_path, "stubborn", stubborn)]
    launcher.submit(jobs, group="g7")
    wait_for(lambda: (tmp_path / "stubborn" / "stubborn.out").exists() and (tmp_path / "stubborn" / "stubborn.out").read_text())
    launcher.cancel(jobs, group="g7")
    result = settle(launcher, jobs, timeout=10)
    assert (result["stubborn"].state, result["stubborn"].signal) == (JobState.CANCELLED, signal.SIGKILL)


def test_members_survive_their_runner_and_end_as_lost(launcher, tmp_path):
    jobs = [job(tmp_path, "orphan", [PY, "-c", "import time; time.sleep(0.5)"])]
    launcher.submit(jobs, group="g8")
    wait_for(lambda: launcher.status(["orphan"])["orphan"].state == JobState.RUNNING)
    for pid_file in (tmp_path / "run").glob("runner-*.pid"):
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    result = settle(launcher, jobs, timeout=10)
    assert result["orphan"].state == JobState.LOST


def test_a_job_is_prepared_just_before_it_starts_and_a_failed_preparation_fails_it(launcher, tmp_path):
    folder = tmp_path / "made-by-prepare"
    prepared = job(tmp_path, "prepared", ["/bin/true"], prepare={"hook": "os:mkdir", "kwargs": {"path": str(folder)}})
    broken = job(tmp_path, "broken", ["/bin/true"], prepare={"hook": "os:mkdir", "kwargs": {"path": "/proc/no/such/dir"}})
    launcher.submit([prepared, broken], group="g9")
    result = settle(launcher, [prepared, broken])
    assert result["prepared"].state == JobState.COMPLETED and folder.is_dir()
    assert result["broken"].state == JobState.FAILED
    assert "could not prepare the job" in result["broken"].error


def test_members_start_in_the_order_they_were_submitted(launcher, tmp_path):
    jobs = [job(tmp_path, f"m{i}", [PY, "-c", "import time; print(time.time())"]) for i in range(5)]
    launcher.submit(jobs, group="g10", concurrency=1)
    settle(launcher, jobs)
    starts = [float((tmp_path / j.key / f"{j.key}.out").read_text()) for j in jobs]
    assert starts == sorted(starts)


def test_a_second_submission_to_a_run_waits_for_the_first_runner(launcher, tmp_path):
    script = "import time, sys; print(time.time()); time.sleep(0.3); print(time.time())"
    first = [job(tmp_path, f"a{i}", [PY, "-c", script]) for i in range(2)]
    second = [job(tmp_path, "b", [PY, "-c", script])]
    launcher.submit(first, group="g11", concurrency=2)
    wait_for(lambda: launcher.status(["a0"])["a0"].state == JobState.RUNNING)
    launcher.submit(second, group="g11", concurrency=2)
    settle(launcher, first + second)
    spans = {j.key: tuple(map(float, (tmp_path / j.key / f"{j.key}.out").read_text().split())) for j in first + second}
    assert spans["b"][0] >= max(spans["a0"][1], spans["a1"][1])  # the run's concurrency limit holds across submissions


def test_jobs_a_dead_runner_never_started_can_be_submitted_again(launcher, tmp_path):
    sleeper = [PY, "-c", "import time; print('ran', flush=True); time.sleep(0.5)"]
    jobs = [job(tmp_path, f"s{i}", sleeper) for i in range(3)]
    launcher.submit(jobs, group="g12", concurrency=1)
    wait_for(lambda: launcher.status(["s0"])["s0"].state == JobState.RUNNING)
    for pid_file in (tmp_path / "run").glob("runner-*.pid"):
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    wait_for(lambda: not launcher.runner_alive())
    again = launcher.unstarted(jobs)
    assert [j.key for j in again] == ["s1", "s2"]  # s1 may have been prepared already, but it never started
    launcher.submit(again, group="g12", concurrency=1)
    result = settle(launcher, jobs)
    assert result["s0"].state == JobState.LOST
    assert [result[k].state for k in ("s1", "s2")] == [JobState.COMPLETED] * 2
    assert [(tmp_path / k / f"{k}.out").read_text() for k in ("s1", "s2")] == ["ran\n", "ran\n"]


def test_a_runner_waiting_for_its_turn_survives_a_cancel_and_honours_it(launcher, tmp_path):
    sleeper = [PY, "-c", "import time; print('ran', flush=True); time.sleep(60)"]
    first, second = [job(tmp_path, "a", sleeper)], [job(tmp_path, "b", sleeper)]
    launcher.submit(first, group="g13", concurrency=1)
    wait_for(lambda: launcher.status(["a"])["a"].state == JobState.RUNNING)
    launcher.submit(second, group="g13", concurrency=1)  # waits for the first runner
    launcher.cancel(second, group="g13")  # both runners are nudged
    launcher.cancel(first, group="g13")
    result = settle(launcher, first + second, timeout=15)
    assert (result["a"].state, result["a"].signal) == (JobState.CANCELLED, signal.SIGTERM)
    assert result["b"].state == JobState.CANCELLED and result["b"].job_id is None
    wait_for(lambda: not launcher.runner_alive())


def test_lines_emitted_between_two_sends_share_one_stream_entry(stream):
    sink = EventSink(settings.REDIS_URL, stream, "g14")

    def entries():
        stored = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True).xrange(stream)
        return [(fields["group"], fields["events"]) for _, fields in stored]

    sink.emit("one")
    sink.send()
    sink.send()  # nothing new: no entry
    sink.emit("two")
    sink.emit("three")
    sink.close()
    wait_for(lambda: entries() == [("g14", "one"), ("g14", "two\nthree")])  # sent without waiting for replies
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    assert client.xrevrange(stream, count=1)[0][1]["last"] == "1"  # the sender's last entry says so...
    wait_for(lambda: client.lrange(wake_key(stream), 0, -1) == ["1"])  # ...and a monitor waiting for it wakes
    client.rpush(wake_key(stream), "stale", "stale")
    EventSink(settings.REDIS_URL, stream, "g15").close()
    wait_for(lambda: client.lrange(wake_key(stream), 0, -1) == ["1"])  # one wake-up at most, however many senders ended


# --- what a member can reach, and what it leaves behind ----------------------------


def _proc_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_members_parent_holds_no_secret_in_its_environment_or_command_line(launcher, tmp_path, monkeypatch):
    """The runner is a fresh program, not a fork of its caller (a Celery worker holds SECRET_KEY, DATABASE_URL...)."""
    monkeypatch.setenv("SECRET_KEY", "the-servers-secret-key")
    monkeypatch.setenv("DATABASE_URL", "postgres://flotilla:db-password@127.0.0.1/flotilla")
    script = ("import os; ppid = os.getppid(); "
              "print(open(f'/proc/{ppid}/environ', 'rb').read().decode(errors='replace')); "
              "print(open(f'/proc/{ppid}/cmdline', 'rb').read().decode(errors='replace'))")
    jobs = [job(tmp_path, "peek", [PY, "-c", script])]
    launcher.submit(jobs, group="g20")
    assert settle(launcher, jobs)["peek"].state == JobState.COMPLETED
    seen = (tmp_path / "peek" / "peek.out").read_text()
    assert "runner_main.py" in seen  # it did read its parent, the runner
    for secret in ("the-servers-secret-key", "db-password", "SECRET_KEY", "DATABASE_URL", "REDIS_URL", settings.REDIS_URL):
        assert secret not in seen


def test_cancel_kills_a_child_that_ignores_sigterm(launcher, tmp_path):
    script = ("import subprocess, time; child = subprocess.Popen(['sh', '-c', 'trap \"\" TERM; while :; do sleep 1; done']); "
              "print(child.pid, flush=True); time.sleep(60)")
    jobs = [job(tmp_path, "stubborn", [PY, "-c", script])]
    launcher.submit(jobs, group="g21")
    out = tmp_path / "stubborn" / "stubborn.out"
    child = int(wait_for(lambda: out.exists() and out.read_text().strip()))
    launcher.cancel(jobs, group="g21")
    result = settle(launcher, jobs, timeout=10)["stubborn"]
    assert (result.state, result.signal) == (JobState.CANCELLED, signal.SIGTERM)  # the main process died of SIGTERM...
    assert not _proc_alive(child)  # ...and the child that ignored it did not outlive it
    assert "killed" in result.error


@pytest.mark.parametrize("how", ["background", "setsid"])
def test_a_member_that_exits_leaves_no_process_behind_and_says_so(launcher, tmp_path, how):
    """`sleep &` stays in the member's process group; a child with a session of its own leaves the group."""
    script = ("import subprocess; child = subprocess.Popen(['sleep', '60'], start_new_session=%s); print(child.pid, flush=True)"
              % (how == "setsid"))
    jobs = [job(tmp_path, how, [PY, "-c", script])]
    launcher.submit(jobs, group="g22")
    result = settle(launcher, jobs)[how]
    child = int((tmp_path / how / f"{how}.out").read_text())
    assert result.state == JobState.COMPLETED and result.returncode == 0
    assert not _proc_alive(child)  # gone by the time the member is recorded as ended
    assert result.error == "1 process it left running was killed"


def test_a_member_that_leaves_nothing_behind_gets_no_note(launcher, tmp_path):
    jobs = [job(tmp_path, "tidy", [PY, "-c", "import subprocess; subprocess.run(['true'])"])]
    launcher.submit(jobs, group="g23")
    result = settle(launcher, jobs)["tidy"]
    assert (result.state, result.error) == (JobState.COMPLETED, None)


def test_a_member_is_stopped_at_the_output_limit_and_told_why(tmp_path, stream):
    limit = 1024 * 1024
    launcher = LocalLauncher(work_dir=tmp_path / "run", redis_url=settings.REDIS_URL, stream=stream, max_output_bytes=limit)
    jobs = [job(tmp_path, "chatty", ["yes"]), job(tmp_path, "quiet", [PY, "-c", "print('fine')"])]
    launcher.submit(jobs, group="g24")
    result = settle(launcher, jobs)
    assert (result["chatty"].state, result["chatty"].signal) == (JobState.FAILED, signal.SIGXFSZ)
    assert "output limit of 1,048,576 bytes" in result["chatty"].error
    assert (tmp_path / "chatty" / "chatty.out").stat().st_size == limit
    assert result["quiet"].state == JobState.COMPLETED  # the runner's own limit is back for the next member


def test_output_never_goes_through_a_symbolic_link(launcher, tmp_path):
    """An attached file (a symlink) with the output's name must not receive the member's output."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    jobs = [job(tmp_path, "linked", ["/bin/echo", "overwritten?"])]
    os.symlink(target, jobs[0].stdout)
    launcher.submit(jobs, group="g25")
    result = settle(launcher, jobs)["linked"]
    assert result.state == JobState.FAILED and "is a symbolic link" in result.error
    assert target.read_text() == "keep me\n"


def test_a_member_whose_folder_was_deleted_fails_with_a_message(launcher, tmp_path):
    spec = job(tmp_path, "gone", ["/bin/true"])
    spec.cwd = str(tmp_path / "deleted-folder")  # its outputs can still be opened, its folder is gone
    launcher.submit([spec], group="g26")
    result = settle(launcher, [spec])["gone"]
    assert result.state == JobState.FAILED and "was deleted before it could start" in result.error


def test_what_the_runner_and_members_write_is_readable_by_their_account_only(launcher, tmp_path):
    jobs = [job(tmp_path, "modes", [PY, "-c", "open('result.txt', 'w').write('1'); import os; os.mkdir('sub')"])]
    launcher.submit(jobs, group="g27")
    settle(launcher, jobs)
    written = [tmp_path / "modes" / name for name in ("modes.out", "modes.err", "result.txt", "sub")]
    written += [path for path in (tmp_path / "run").iterdir()]
    for path in written:
        assert path.stat().st_mode & 0o077 == 0, path


def test_the_runner_reads_the_results_of_a_member_that_completed(launcher, tmp_path):
    script = "import json; json.dump({'energy': 0.25, 'label': 'x'}, open('results.json', 'w'))"
    jobs = [job(tmp_path, "done", [PY, "-c", script], results_file="results.json"),
            job(tmp_path, "failed", [PY, "-c", script + "; raise SystemExit(1)"], results_file="results.json")]
    launcher.submit(jobs, group="g28")
    result = settle(launcher, jobs)
    assert result["done"].results == {"energy": 0.25}
    assert result["failed"].results is None  # only a completed member's results count
