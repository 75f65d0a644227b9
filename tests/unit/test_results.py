"""A member's results file: its numeric top-level fields, read by the member's runner."""

import json

from launchers.base import MAX_RESULTS_BYTES, collect_results


def test_only_finite_numbers_are_kept(tmp_path):
    (tmp_path / "out.json").write_text(json.dumps({"energy": 1.5, "label": "x", "flag": True, "n": 3, "big": 1e400}))
    assert collect_results(str(tmp_path), "out.json") == {"energy": 1.5, "n": 3}


def test_missing_malformed_outside_or_huge_files_give_nothing(tmp_path):
    member = tmp_path / "member"
    member.mkdir()
    (member / "bad.json").write_text("{not json")
    (member / "list.json").write_text("[1, 2]")
    (tmp_path / "outside.json").write_text('{"x": 1}')
    (member / "huge.json").write_text('{"x": 1, "pad": "' + "a" * MAX_RESULTS_BYTES + '"}')
    for name in ("missing.json", "bad.json", "list.json", "../outside.json", "huge.json"):
        assert collect_results(str(member), name) is None, name
