"""Member directories and configured files.

``render_tags`` is pure. Unlike SmartSim's ModelWriter it never destroys text:
a tag whose name is not a parameter is left exactly as written, stray
separators (``x = 1; y = 2;``) are untouched, a custom tag is taken literally
(regex-escaped) and matched non-greedily, and line endings (CRLF) are kept.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FileRefused", "Rendered", "check_configurable", "render_tags", "resolve_source"]

MAX_CONFIGURE_FILES = 10_000  # a to_configure folder bigger than this is refused at attach time

# Only names that look like identifiers are reported as unknown tags, so that
# code such as ``for (i = 0; i < n; i++)`` is not flagged.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Rendered:
    """The result of rendering one file's text for one member."""

    text: str
    used: dict[str, Any] = field(default_factory=dict)  # name -> value substituted
    unknown: list[str] = field(default_factory=list)  # tag names with no parameter, first-seen order
    # The text cut into pieces for display: (piece, kind, name) where kind is
    # "text", "sub" (a substituted value) or "unknown" (a tag left as written).
    segments: list[tuple[str, str, str]] = field(default_factory=list)


def render_tags(text: str, params: Mapping[str, Any], tag: str = ";") -> Rendered:
    """Replace ``<tag>NAME<tag>`` by ``str(params[NAME])`` wherever NAME is a parameter."""
    if not tag:
        raise ValueError("the tag must not be empty")
    escaped = re.escape(tag)
    # A candidate name runs from one tag to the next tag on the same line.
    pattern = re.compile(escaped + r"((?:(?!" + escaped + r")[^\r\n])+?)" + escaped)
    result = Rendered(text="")
    out: list[str] = []
    plain_start = 0
    position = 0

    def flush(end: int) -> None:
        if end > plain_start:
            out.append(text[plain_start:end])
            result.segments.append((text[plain_start:end], "text", ""))

    while True:
        match = pattern.search(text, position)
        if match is None:
            break
        name = match.group(1)
        if name in params:
            flush(match.start())
            value = str(params[name])
            out.append(value)
            result.segments.append((value, "sub", name))
            result.used[name] = params[name]
            plain_start = position = match.end()
        else:
            if _IDENTIFIER.fullmatch(name):
                flush(match.start())
                result.segments.append((match.group(0), "unknown", name))
                out.append(match.group(0))
                plain_start = match.end()
                if name not in result.unknown:
                    result.unknown.append(name)
                position = match.end()
            else:
                # Not a tag: the closing separator may open a real one (``a; x = ;A;``).
                position = match.start() + len(tag)
    flush(len(text))
    result.text = "".join(out)
    return result


class FileRefused(ValueError):
    """A file may not be attached or generated; the message says why."""


def resolve_source(path: str | os.PathLike, roots: Iterable[Path]) -> Path:
    """The real path of an existing file or folder inside one of ``roots``.

    Symlinks are resolved first, so a link inside a root that points outside
    it is refused too.
    """
    text = os.fspath(path)
    if not text or "\x00" in text:
        raise FileRefused("Give the absolute path of a file or folder.")
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        raise FileRefused(f"{text} is not an absolute path.")
    real = candidate.resolve()
    allowed = [Path(root).resolve() for root in roots]
    if not any(real == root or real.is_relative_to(root) for root in allowed):
        where = ", ".join(str(root) for root in allowed) or "none are configured (FLOTILLA_FILE_ROOTS)"
        raise FileRefused(f"{text} is outside the folders files may be attached from: {where}.")
    if not real.exists():
        raise FileRefused(f"{text} does not exist.")
    return real


def _check_text(path: Path) -> None:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FileRefused(
            f"{path.name} is not UTF-8 text (byte {error.start}); only text files can be configured. "
            "Attach it with copy or symlink instead."
        ) from None
    if "\x00" in text:
        raise FileRefused(f"{path.name} looks binary (it contains NUL bytes); only text files can be configured.")


def check_configurable(path: Path) -> None:
    """Refuse a to_configure source that is not UTF-8 text, or a folder holding one
    (or holding a linked folder, which could loop)."""
    if path.is_file():
        _check_text(path)
        return
    count = 0
    for folder, dirs, files in os.walk(path):
        for name in dirs:
            if os.path.islink(os.path.join(folder, name)):
                raise FileRefused(f"{name} in {path.name} is a linked folder; configured folders cannot contain links.")
        for name in files:
            count += 1
            if count > MAX_CONFIGURE_FILES:
                raise FileRefused(f"{path.name} holds more than {MAX_CONFIGURE_FILES:,} files.")
            _check_text(Path(folder) / name)
