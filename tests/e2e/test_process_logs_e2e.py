"""The check that fails a browser test whose back end logged a traceback is not vacuous:
the web server's, the worker's and the monitor's logs are written, watched for each test
that uses them, and an error written to one during the test is reported."""

PLANTED = "ERROR monitor: unexpected error; retrying\nTraceback (most recent call last):\nValueError: planted by a test\n"


def test_a_traceback_in_a_back_end_log_during_a_test_is_reported(process_logs, asgi_server, celery_worker_process, monitor):
    watched = [process for process, _ in process_logs.watched]
    assert sorted(process.name for process in watched) == ["e2e-server", "monitor", "worker"]
    for process in watched:
        assert process.banner in process.output()  # each log is really written
    assert process_logs.report() == ""

    with open(monitor.log.path, "a") as out:
        out.write(PLANTED)
    report = process_logs.report()  # what the test's tear-down would fail with
    assert report.startswith(f"monitor logged 1 error(s) during this test ({monitor.log.path}):\n")
    assert "ValueError: planted by a test" in report
    assert process_logs.report() == ""  # reported once: this test itself passes
