"""ensembles.generation: tag rendering, source resolution and configurable-file checks."""

import os

import pytest

from ensembles.generation import FileRefused, Generator, check_configurable, render_tags, resolve_source

# (text, params, tag, expected text, expected unknown)
RENDER_CASES = {
    "simple": ("x = ;A;", {"A": 1}, ";", "x = 1", []),
    "several": ("a=;A; b=;B;", {"A": 1, "B": "two"}, ";", "a=1 b=two", []),
    "adjacent tags": (";A;;B;", {"A": 1, "B": 2}, ";", "12", []),
    "float value": ("dt = ;DT;", {"DT": 0.25}, ";", "dt = 0.25", []),
    "unknown kept": ("x = ;NOPE;", {"A": 1}, ";", "x = ;NOPE;", ["NOPE"]),
    "stray separators": ("x = 1; y = 2;", {"A": 1}, ";", "x = 1; y = 2;", []),
    "stray separators, param named like a word": ("x = 1; y = 2;", {"y": 9}, ";", "x = 1; y = 2;", []),
    "mixed unknown and known": ("MIXED = ;NOPE; ;A;", {"A": 1}, ";", "MIXED = ;NOPE; 1", ["NOPE"]),
    "empty tag": ("x = ;;", {"A": 1}, ";", "x = ;;", []),
    "numeric name after a dot": ("lattice fcc 0.;65;", {"65": 70}, ";", "lattice fcc 0.70", []),
    "stray then real": ("a; x = ;A;", {"A": 1}, ";", "a; x = 1", []),
    "c for loop": ("for (i = 0; i < n; i++) ;A;", {"A": 1}, ";", "for (i = 0; i < n; i++) 1", []),
    "custom tag non-greedy": ("@A@ and @B@", {"A": 1, "B": 2}, "@", "1 and 2", []),
    "dollar tag": ("v = $A$ + $B$", {"A": 1, "B": 2}, "$", "v = 1 + 2", []),
    "dot tag": ("x.A.y", {"A": 1}, ".", "x1y", []),
    "dot tag does not match any char": ("xzAzy", {"A": 1}, ".", "xzAzy", []),
    "star tag": ("a*b*c", {"b": "Z"}, "*", "aZc", []),
    "pipe tag": ("a|b|c", {"b": "Z"}, "|", "aZc", []),
    "caret tag": ("a^b^c", {"b": "Z"}, "^", "aZc", []),
    "paren tag": ("(A( (B(", {"A": 1, "B": 2}, "(", "1 2", []),
    "multi-char tag": ("%%A%% %%B%%", {"A": 1, "B": 2}, "%%", "1 2", []),
    "semicolon in custom-tag text": ("x = 1; @A@;", {"A": 1}, "@", "x = 1; 1;", []),
    "crlf kept": ("a = ;A;\r\nb = ;B;\r\n", {"A": 1, "B": 2}, ";", "a = 1\r\nb = 2\r\n", []),
    "tag does not span lines": (";A\n; ;A;", {"A": 1}, ";", ";A\n; 1", []),
    "unknown dedup in first-seen order": (";ZED; ;NOPE; ;ZED;", {}, ";", ";ZED; ;NOPE; ;ZED;", ["ZED", "NOPE"]),
    "no tags": ("nothing here\n", {"A": 1}, ";", "nothing here\n", []),
    "empty text": ("", {"A": 1}, ";", "", []),
}


@pytest.mark.parametrize(
    "text, params, tag, expected, unknown", RENDER_CASES.values(), ids=RENDER_CASES.keys()
)
def test_render_tags(text, params, tag, expected, unknown):
    rendered = render_tags(text, params, tag)
    assert rendered.text == expected
    assert rendered.unknown == unknown


@pytest.mark.parametrize(
    "text, params, tag, expected, unknown", RENDER_CASES.values(), ids=RENDER_CASES.keys()
)
def test_render_segments_join_to_the_text(text, params, tag, expected, unknown):
    rendered = render_tags(text, params, tag)
    assert "".join(piece for piece, _kind, _name in rendered.segments) == rendered.text


def test_render_reports_used_params_and_segment_kinds():
    rendered = render_tags("a=;A; b=;NOPE; c=;A;", {"A": 3, "B": 4})
    assert rendered.used == {"A": 3}
    assert rendered.segments == [
        ("a=", "text", ""),
        ("3", "sub", "A"),
        (" b=", "text", ""),
        (";NOPE;", "unknown", "NOPE"),
        (" c=", "text", ""),
        ("3", "sub", "A"),
    ]


def test_render_default_tag_is_semicolon():
    assert render_tags("x = ;A;", {"A": 5}).text == "x = 5"


def test_render_uses_str_of_the_value():
    rendered = render_tags(";B; ;N; ;L;", {"B": True, "N": None, "L": [1, 2]})
    assert rendered.text == "True None [1, 2]"


# --- resolve_source -------------------------------------------------------------


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "in.txt").write_text("inside\n")
    (root / "sub" / "deep.txt").write_text("deep\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    return root


def test_resolve_source_accepts_a_file_inside_a_root(root):
    assert resolve_source(str(root / "in.txt"), [root]) == (root / "in.txt").resolve()


def test_resolve_source_accepts_a_folder_inside_a_root_and_the_root_itself(root):
    assert resolve_source(root / "sub", [root]) == (root / "sub").resolve()
    assert resolve_source(root, [root]) == root.resolve()


def test_resolve_source_accepts_any_of_several_roots(root, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "f.txt").write_text("x")
    assert resolve_source(other / "f.txt", [root, other]) == (other / "f.txt").resolve()


def test_resolve_source_follows_a_symlink_that_stays_inside(root):
    link = root / "link.txt"
    link.symlink_to(root / "sub" / "deep.txt")
    assert resolve_source(link, [root]) == (root / "sub" / "deep.txt").resolve()


def test_resolve_source_refuses_a_path_outside_the_roots(root, tmp_path):
    with pytest.raises(FileRefused, match="outside"):
        resolve_source(tmp_path / "outside" / "secret.txt", [root])


def test_resolve_source_refuses_a_symlink_inside_a_root_pointing_outside(root, tmp_path):
    link = root / "escape.txt"
    link.symlink_to(tmp_path / "outside" / "secret.txt")
    with pytest.raises(FileRefused, match="outside"):
        resolve_source(link, [root])


def test_resolve_source_refuses_a_linked_folder_pointing_outside(root, tmp_path):
    (root / "linkdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(FileRefused, match="outside"):
        resolve_source(root / "linkdir" / "secret.txt", [root])


@pytest.mark.parametrize("escape", ["../outside/secret.txt", "sub/../../outside/secret.txt"])
def test_resolve_source_refuses_dotdot_escapes(root, escape):
    with pytest.raises(FileRefused, match="outside"):
        resolve_source(f"{root}/{escape}", [root])


def test_resolve_source_refuses_a_sibling_folder_sharing_the_root_prefix(root, tmp_path):
    sibling = tmp_path / "root2"
    sibling.mkdir()
    (sibling / "f.txt").write_text("x")
    with pytest.raises(FileRefused):
        resolve_source(sibling / "f.txt", [root])


@pytest.mark.parametrize("relative", ["in.txt", "./in.txt", "sub/../in.txt"])
def test_resolve_source_looks_relative_paths_up_in_the_roots(root, relative):
    assert resolve_source(relative, [root]) == (root / "in.txt").resolve()


def test_resolve_source_never_looks_relative_paths_up_in_the_working_directory(root, monkeypatch):
    monkeypatch.chdir(root.parent)
    with pytest.raises(FileRefused, match="in none of the folders"):
        resolve_source("root/in.txt", [root])


def test_resolve_source_refuses_a_missing_file(root):
    with pytest.raises(FileRefused, match="does not exist"):
        resolve_source(root / "missing.txt", [root])


@pytest.mark.parametrize("path", ["", "/tmp/a\x00b"])
def test_resolve_source_refuses_empty_or_nul_paths(root, path):
    with pytest.raises(FileRefused):
        resolve_source(path, [root])


def test_resolve_source_refuses_everything_without_roots(root):
    with pytest.raises(FileRefused):
        resolve_source(root / "in.txt", [])


def test_file_refused_is_a_value_error():
    assert issubclass(FileRefused, ValueError)


# --- check_configurable -----------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"x = ;A;\n", "caf\u00e9 \u6f22\u5b57 \u2713\n".encode(), b"", b"a\r\nb\r\n"],
    ids=["ascii", "utf8 non-ascii", "empty", "crlf"],
)
def test_check_configurable_accepts_utf8_text(tmp_path, content):
    path = tmp_path / "in.txt"
    path.write_bytes(content)
    check_configurable(path)  # no exception


def test_check_configurable_accepts_a_folder_of_text_files(tmp_path):
    folder = tmp_path / "conf"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.txt").write_text("a = ;A;\n")
    (folder / "nested" / "b.in").write_text("b = \u00e9\n", encoding="utf-8")
    check_configurable(folder)


@pytest.mark.parametrize(
    "content",
    [b"caf\xe9\n", b"\xff\xfe\x00\x00", b"ok\n\x80\n"],
    ids=["latin-1", "bom-like", "stray continuation byte"],
)
def test_check_configurable_refuses_non_utf8_files(tmp_path, content):
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    with pytest.raises(FileRefused, match="data.bin"):
        check_configurable(path)


def test_check_configurable_refuses_binary_files_with_nul_bytes(tmp_path):
    path = tmp_path / "blob.dat"
    path.write_bytes(b"valid ascii\x00more")
    with pytest.raises(FileRefused, match="blob.dat"):
        check_configurable(path)


@pytest.mark.parametrize("content", [b"\x00\x01\x02", b"caf\xe9"], ids=["nul", "latin-1"])
def test_check_configurable_refuses_a_folder_holding_a_non_text_file(tmp_path, content):
    folder = tmp_path / "conf"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.txt").write_text("fine\n")
    (folder / "nested" / "bad.bin").write_bytes(content)
    with pytest.raises(FileRefused, match="bad.bin"):
        check_configurable(folder)


def test_check_configurable_refuses_a_folder_holding_a_linked_folder(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "a.txt").write_text("fine\n")
    os.symlink(tmp_path, folder / "loop", target_is_directory=True)
    with pytest.raises(FileRefused, match="loop"):
        check_configurable(folder)


def test_an_attached_file_may_not_take_the_name_of_the_members_output(tmp_path):
    source = tmp_path / "sweep_0.out"
    source.write_text("an attachment\n")
    generator = Generator(copy=[source], roots=[tmp_path])
    with pytest.raises(FileRefused, match="sweep_0.out, the name of the member's output"):
        generator.generate(tmp_path / "members" / "sweep_0", "sweep_0", {}, trash=[])
    generator.generate(tmp_path / "members" / "sweep_1", "sweep_1", {}, trash=[])  # another member's name is fine
    assert (tmp_path / "members" / "sweep_1" / "sweep_0.out").read_text() == "an attachment\n"


def test_render_writes_values_as_typed():
    from ensembles.expansion import expand
    from ensembles.values import parse_values

    member = expand({"B": parse_values("true"), "lr": parse_values("1e-3"), "x": parse_values("range(0, 1, 0.1)")})[3]
    rendered = render_tags("b = ;B;\nlr = ;lr;\nx = ;x;\n", member)
    assert rendered.text == "b = true\nlr = 1e-3\nx = 0.3\n"
    assert rendered.used == {"B": True, "lr": 0.001, "x": 0.3}  # the record keeps typed values
    assert render_tags(";B; ;n;", {"B": True, "n": 1.0}, texts={"B": "TRUE"}).text == "TRUE 1.0"


def test_generated_member_files_get_typed_text_and_the_record_typed_values(tmp_path):
    import json

    from ensembles.generation import RECORD_FILE_NAME, prepare_member

    source = tmp_path / "root" / "in.cfg"
    source.parent.mkdir()
    source.write_text("flag = ;flag;, lr = ;lr;, n = ;n;")
    directory = tmp_path / "member"
    prepare_member(
        directory=str(directory), name="m_0", params={"flag": True, "lr": 0.001, "n": 2},
        texts={"flag": "true", "lr": "1e-3"}, files={"configure": [str(source)]}, roots=[str(source.parent)],
    )
    assert (directory / "in.cfg").read_text() == "flag = true, lr = 1e-3, n = 2"
    record = json.loads((directory / RECORD_FILE_NAME).read_text())
    assert record["params"] == {"flag": True, "lr": 0.001, "n": 2}
