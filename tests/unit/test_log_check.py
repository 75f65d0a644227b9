"""The check that fails a test whose back-end processes logged an unhandled error
(tests/logs.py): it finds tracebacks, only those, and each in the check of the time
it was written."""

from tests.logs import LogFile, error_excerpts

TRACEBACK = """\
WARNING  monitor: Error 111 connecting to 127.0.0.1:6379; retrying
ERROR    monitor: unexpected error; retrying
Traceback (most recent call last):
  File "ensembles/management/commands/monitor.py", line 90, in handle
    self.changed(services.runs_reconcile())
ZeroDivisionError: division by zero
WARNING  monitor: Error 111 connecting to 127.0.0.1:6379; retrying
"""
DAPHNE_STYLE = "2026-01-01 12:00:00 ERROR Exception inside application: boom\n"
CLEAN = """\
 -------------- tests-1@vm v5.7.0 (collider)
 -------------- [queues]
                .> flotilla-tests-1 exchange=flotilla-tests-1(direct) key=flotilla-tests-1
worker: Warm shutdown (MainProcess)
monitor: reading flotilla:test-events:1 as vm-2
INFO:     Uvicorn running on http://127.0.0.1:40000 (Press CTRL+C to quit)
"""


def test_a_traceback_is_found_with_the_record_before_it_and_its_lines():
    [excerpt] = error_excerpts(TRACEBACK)
    assert excerpt.startswith("ERROR    monitor: unexpected error; retrying\nTraceback (most recent call last):")
    assert "ZeroDivisionError: division by zero" in excerpt


def test_an_exception_inside_the_application_is_found_without_a_traceback():
    assert error_excerpts(DAPHNE_STYLE) == [DAPHNE_STYLE.strip()]


def test_a_log_without_errors_has_none():
    assert error_excerpts(CLEAN) == []
    assert error_excerpts("") == []


def test_two_tracebacks_far_apart_are_two_errors():
    assert len(error_excerpts(TRACEBACK + CLEAN * 20 + TRACEBACK)) == 2


def test_each_check_reads_what_was_written_since_the_one_before(tmp_path):
    path = tmp_path / "monitor.log"
    path.write_text("written before this process started: Traceback\n")
    log = LogFile(path)
    assert log.errors("the monitor", "during this test") == ""  # not this process's
    with open(path, "a") as out:
        out.write(CLEAN + TRACEBACK)
    report = log.errors("the monitor", "during this test")
    assert report.startswith(f"the monitor logged 1 error(s) during this test ({path}):\n")
    assert "ZeroDivisionError" in report
    assert log.errors("the monitor", "during the next test") == ""  # reported once
    with open(path, "a") as out:
        out.write(CLEAN)
    assert log.errors("the monitor", "during the next test") == ""


def test_a_line_being_written_is_read_whole_by_the_next_check(tmp_path):
    path = tmp_path / "worker.log"
    path.write_text("")
    log = LogFile(path)
    with open(path, "a") as out:
        out.write(CLEAN + "Trace")
    assert log.errors("the worker", "now") == ""
    with open(path, "a") as out:
        out.write("back (most recent call last):\n")
    assert "Traceback (most recent call last):" in log.errors("the worker", "later")


def test_a_log_not_written_yet_has_no_errors(tmp_path):
    assert LogFile(tmp_path / "missing.log").errors("the worker", "now") == ""
