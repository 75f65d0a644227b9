"""launchers.local.Journals: the runners' journals read incrementally; the event line format."""

from launchers.base import JobState, JobStatus, decode_event, encode_event
from launchers.local import Journals


def line(key, state, **fields) -> str:
    return encode_event(key, JobStatus(state, **fields)) + "\n"


def test_an_event_line_round_trips_and_omits_unset_fields():
    text = encode_event("7", JobStatus(JobState.COMPLETED, job_id="42", returncode=0, started=1.5, ended=2.5))
    assert "\n" not in text and "signal" not in text and "error" not in text
    assert decode_event(text) == ("7", JobStatus(JobState.COMPLETED, job_id="42", returncode=0, started=1.5, ended=2.5))


def test_a_line_still_being_written_is_read_once_it_is_whole(tmp_path):
    journal = tmp_path / "runner-1.journal"
    whole, partial = line("a", JobState.RUNNING, job_id="1", started=1.0), line("b", JobState.QUEUED)
    journal.write_text(whole + partial[:7])
    first = Journals.read(tmp_path)
    assert {key: status.state for key, (_, status) in first.items()} == {"a": JobState.RUNNING}
    with open(journal, "a") as out:
        out.write(partial[7:] + line("a", JobState.COMPLETED, job_id="1", returncode=0, started=1.0, ended=2.0))
    second = Journals.read(tmp_path)
    assert {key: status.state for key, (_, status) in second.items()} == {"a": JobState.COMPLETED, "b": JobState.QUEUED}
    assert second["a"][0] == "runner-1"


def test_a_later_runner_s_lines_win_and_malformed_lines_are_skipped(tmp_path):
    (tmp_path / "runner-0001.journal").write_text(line("a", JobState.QUEUED) + "not json\n")
    (tmp_path / "runner-0002.journal").write_text(line("a", JobState.COMPLETED, returncode=0))
    recorded = Journals.read(tmp_path)
    assert recorded["a"][0] == "runner-0002" and recorded["a"][1].state == JobState.COMPLETED
    assert list(recorded) == ["a"]


def test_no_work_folder_means_nothing_recorded(tmp_path):
    assert Journals.read(tmp_path / "missing") == {}
