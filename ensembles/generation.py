"""Member directories and configured files.

Per member, in SmartSim's order: to_copy (a file is copied; a folder's
*contents* go into the member root), to_symlink (a link named after the
source), to_configure (rendered with ``render_tags``; a folder keeps its
relative structure), then ``flotilla_params.json``, the machine-readable record
of the member's parameters and of which were substituted in which file.

``render_tags`` is pure. Unlike SmartSim's ModelWriter it never destroys text:
a tag whose name is not a parameter is left exactly as written, stray
separators (``x = 1; y = 2;``) are untouched, a custom tag is taken literally
(regex-escaped) and matched non-greedily, and line endings (CRLF) are kept.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .expansion import texts_of

__all__ = [
    "RECORD_FILE_NAME",
    "BrowseEntry",
    "Listing",
    "browse_folder",
    "configurable_paths",
    "FileRefused",
    "Generator",
    "Rendered",
    "check_configurable",
    "discard_later",
    "landing_names",
    "prepare_member",
    "render_tags",
    "resolve_source",
]

RECORD_FILE_NAME = "flotilla_params.json"
TRASH_PREFIX = ".trash-"

MAX_CONFIGURE_FILES = 10_000  # a to_configure folder bigger than this is refused at attach time
MAX_CONFIGURE_BYTES = 10 * 1024 * 1024  # and so is a bigger configured file

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


def render_tags(
    text: str, params: Mapping[str, Any], tag: str = ";", texts: Mapping[str, str] | None = None
) -> Rendered:
    """Replace ``<tag>NAME<tag>`` by NAME's value as typed wherever NAME is a parameter:
    ``texts[NAME]``, else the ``text`` of a Params (ensembles.expansion), else ``str`` of
    the value. ``used`` records the typed values."""
    if not tag:
        raise ValueError("the tag must not be empty")
    written = texts_of(params, texts)
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
            value = written[name]
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


def _real(candidate: Path, text: str) -> tuple[Path, bool]:
    try:
        real = candidate.resolve()
        return real, real.exists()
    except (OSError, RuntimeError) as error:
        raise FileRefused(f"{text} cannot be used: {getattr(error, 'strerror', None) or error}") from None


def _is_within(real: Path, roots: list[Path]) -> bool:
    return any(real == root or real.is_relative_to(root) for root in roots)


def resolve_source(path: str | os.PathLike, roots: Iterable[Path]) -> Path:
    """The real path of an existing file or folder inside one of ``roots``.

    A relative path is looked up in every root (never in the working directory);
    one that exists in more than one is refused as ambiguous rather than picked by
    the roots' order. Symlinks are resolved first, so a link inside a root that
    points outside it is refused too, and so is a ``..`` that climbs out.
    """
    text = os.fspath(path)
    if not text or "\x00" in text:
        raise FileRefused("Give the path of a file or folder.")
    allowed = [Path(root).resolve() for root in roots]
    where = ", ".join(str(root) for root in allowed) or "none are configured (FLOTILLA_FILE_ROOTS)"
    candidate = Path(text)
    if candidate.is_absolute():
        real, exists = _real(candidate, text)
    else:
        if not allowed:
            raise FileRefused(
                f"{text} is not an absolute path, and no folders are configured to look it up in (FLOTILLA_FILE_ROOTS)."
            )
        found = {}  # real path -> the root it was found in; the same file through two roots is one
        for root in allowed:
            real, exists = _real(root / candidate, text)
            if exists:
                found.setdefault(real, root)
        inside = {real: root for real, root in found.items() if _is_within(real, allowed)}
        if len(inside) > 1:
            folders = ", ".join(map(str, inside.values()))
            raise FileRefused(f"{text} is in more than one allowed folder ({folders}): give its absolute path.")
        if not found:
            raise FileRefused(f"{text} is in none of the folders files may be attached from: {where}.")
        real, exists = next(iter(inside or found)), True
    if not _is_within(real, allowed):
        raise FileRefused(f"{text} is outside the folders files may be attached from: {where}.")
    if not exists:
        raise FileRefused(f"{text} does not exist.")
    return real


def landing_names(path: Path, action: str) -> list[str]:
    """The names a source puts at the top of a member folder: a folder copied or
    configured lands its contents there (SmartSim's copy_tree and to_configure
    hierarchy), anything else (a file, a symlinked folder) its own name."""
    if action in ("copy", "configure") and path.is_dir():
        with os.scandir(path) as entries:
            return [entry.name for entry in entries]
    return [path.name]


BROWSE_LIMIT = 500  # entries shown of one folder
BROWSE_SCAN_LIMIT = 200_000  # entries read of one folder (~0.3 s); a bigger one is listed from its first ones


@dataclass
class BrowseEntry:
    name: str
    path: str  # what the path field gets
    is_dir: bool
    size: int | None = None
    modified: float | None = None
    refused: str = ""  # why it cannot be attached (a link leading out, a broken link)

    @property
    def modified_at(self) -> datetime | None:
        return None if self.modified is None else datetime.fromtimestamp(self.modified, tz=timezone.utc)


@dataclass
class Listing:
    """One folder inside the allowed folders (``folder`` None: the allowed folders themselves)."""

    folder: Path | None
    crumbs: list[tuple[str, Path]] = field(default_factory=list)  # (label, folder), from its root down
    entries: list[BrowseEntry] = field(default_factory=list)  # folders first, then by name
    matched: int = 0  # entries that pass the filter (more than shown when capped)
    hidden: int = 0  # dot-entries left out
    scan_capped: bool = False  # the folder holds more than BROWSE_SCAN_LIMIT entries; only those were read


def browse_folder(path: str, roots: Iterable[Path], *, query: str = "", show_hidden: bool = False) -> Listing:
    """List one folder inside ``roots`` for the file browser, checked as resolve_source checks
    an attached path (``..``, other absolute paths and links leading out are refused).
    An empty ``path`` is the list of roots (or the only root). Bounded: at most
    BROWSE_SCAN_LIMIT entries are read and BROWSE_LIMIT shown; only those shown are stat'ed."""
    allowed = [Path(root).resolve() for root in roots]
    if not allowed:
        raise FileRefused("No server folders are configured (FLOTILLA_FILE_ROOTS): only uploads are possible.")
    if not path and len(allowed) > 1:
        return Listing(folder=None, entries=[BrowseEntry(str(root), str(root), True) for root in allowed], matched=len(allowed))
    folder = resolve_source(path or allowed[0], allowed)
    if not folder.is_dir():
        raise FileRefused(f"{path} is not a folder.")
    root = min((r for r in allowed if _is_within(folder, [r])), key=lambda r: len(r.parts))  # the outermost: go up the furthest
    crumbs = [(str(root), root)]
    for part in folder.relative_to(root).parts:
        crumbs.append((part, crumbs[-1][1] / part))
    listing = Listing(folder=folder, crumbs=crumbs)
    needle = query.strip().lower()

    def wanted(entries):
        for read, entry in enumerate(entries):
            if read == BROWSE_SCAN_LIMIT:
                listing.scan_capped = True
                return
            if entry.name.startswith(".") and not show_hidden:
                listing.hidden += 1
            elif needle in entry.name.lower():
                listing.matched += 1
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                yield (not is_dir, entry.name.lower(), entry.name), entry, is_dir

    try:
        with os.scandir(folder) as entries:
            shown = heapq.nsmallest(BROWSE_LIMIT, wanted(entries), key=lambda item: item[0])
    except OSError as error:
        raise FileRefused(f"{folder} cannot be read: {error.strerror or error}.") from None
    for _, entry, is_dir in shown:
        item = BrowseEntry(entry.name, str(folder / entry.name), is_dir)
        if entry.is_symlink():
            try:
                real, exists = _real(folder / entry.name, entry.name)
            except FileRefused:  # a loop of links
                real, exists = None, False
            if not exists:
                item.refused = "a broken link"
            elif not _is_within(real, allowed):
                item.refused = "a link leading outside the allowed folders"
        try:
            # Nothing is told of what a link leading out points to.
            info = entry.stat(follow_symlinks=not item.refused)
        except OSError:
            pass
        else:
            item.size, item.modified = (None if is_dir else info.st_size), info.st_mtime
        listing.entries.append(item)
    return listing


def _check_text(path: Path) -> None:
    if path.stat().st_size > MAX_CONFIGURE_BYTES:
        raise FileRefused(f"{path.name} is larger than {MAX_CONFIGURE_BYTES // 1024 // 1024} MB; only small text files can be configured.")
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


def configurable_paths(path: Path) -> list[tuple[str, Path]]:
    """(path relative to the member dir, file) of everything a to_configure source
    renders; refuses links inside a folder (they could point anywhere, or loop)."""
    if path.is_file():
        return [(path.name, path)]
    found = []
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for name in dirs + sorted(files):
            if os.path.islink(os.path.join(folder, name)):
                raise FileRefused(f"{name} in {path.name} is a link; configured folders cannot contain links.")
        for name in sorted(files):
            if len(found) >= MAX_CONFIGURE_FILES:
                raise FileRefused(f"{path.name} holds more than {MAX_CONFIGURE_FILES:,} files.")
            file = Path(folder) / name
            found.append((str(file.relative_to(path)), file))
    return found


def check_configurable(path: Path) -> None:
    """Refuse a to_configure source that is not small UTF-8 text, or a folder holding one."""
    for _, file in configurable_paths(path):
        _check_text(file)


def discard_later(paths: list[Path]) -> threading.Thread | None:
    """Delete trees in a background thread: deleting and recreating the same
    tree at once is ~10x slower on these disks than renaming it aside."""
    if not paths:
        return None
    thread = threading.Thread(target=lambda: [shutil.rmtree(p, ignore_errors=True) for p in paths], daemon=False)
    thread.start()
    return thread


def _write_new(path: str | os.PathLike, data: bytes) -> None:
    """Write a file in the folder just created: two syscalls fewer than open()'s text file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _move_aside(path: Path) -> Path:
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    return trash


class Generator:
    """Creates member directories from one set of attached files.

    Sources are checked against ``roots`` once, and configured files are read
    once, however many members are generated.
    """

    def __init__(
        self,
        *,
        copy: Iterable[str | os.PathLike] = (),
        symlink: Iterable[str | os.PathLike] = (),
        configure: Iterable[str | os.PathLike] = (),
        roots: Iterable[Path],
        tag: str = ";",
    ):
        roots = list(roots)
        self.copy = [resolve_source(path, roots) for path in copy]
        self.symlink = [resolve_source(path, roots) for path in symlink]
        self.tag = tag
        self.templates: list[tuple[str, str]] = []  # (path relative to the member dir, text)
        for source in (resolve_source(path, roots) for path in configure):
            check_configurable(source)
            for relative, file in configurable_paths(source):
                self.templates.append((relative, file.read_bytes().decode("utf-8")))
        for relative in [p.name for p in self.symlink] + [r for r, _ in self.templates]:
            if Path(relative).is_absolute() or ".." in Path(relative).parts:
                raise FileRefused(f"{relative} would be written outside the member directory.")
        # What lands at the top of a member folder: it must not take the name of the member's outputs.
        self.top_names = {p.name for p in self.copy if not p.is_dir()} | {p.name for p in self.symlink}
        self.top_names |= {r for r, _ in self.templates if "/" not in r}

    def generate(
        self,
        directory: str | os.PathLike,
        name: str,
        params: Mapping[str, Any],
        *,
        trash: list[Path],
        texts: Mapping[str, str] | None = None,
    ) -> dict:
        """Create ``directory`` for one member; an existing one is moved aside into ``trash``.
        Configured files get the values as typed (``texts``, see ``render_tags``); the
        record keeps the typed values.

        A member without attached files costs a mkdir and one file: no Path is built
        for it, as pathlib's parsing costs more than those syscalls."""
        for output in (f"{name}.out", f"{name}.err"):
            if output in self.top_names:
                raise FileRefused(f"An attached file is named {output}, the name of the member's output: rename it.")
        try:
            os.mkdir(directory)  # its parent usually exists: one syscall
        except FileNotFoundError:
            os.makedirs(directory)
        except FileExistsError:  # a file, a link or an earlier generation
            trash.append(_move_aside(Path(directory)))
            os.mkdir(directory)
        configured = self._write_files(Path(directory), params, texts) if self.copy or self.symlink or self.templates else {}
        record = {"name": name, "params": dict(params), "configured": configured}
        _write_new(os.path.join(directory, RECORD_FILE_NAME), json.dumps(record, default=str).encode())  # dumps: the C encoder
        return record

    def _write_files(
        self, directory: Path, params: Mapping[str, Any], texts: Mapping[str, str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Copy, link and configure the attached files; returns the tags used in each configured file."""
        for source in self.copy:
            if source.is_dir():
                shutil.copytree(source, directory, dirs_exist_ok=True, symlinks=True)
            else:
                shutil.copyfile(source, directory / source.name)
        for source in self.symlink:
            os.symlink(source, directory / source.name)
        configured = {}
        for relative, text in self.templates:
            rendered = render_tags(text, params, self.tag, texts)
            target = directory / relative
            if target.parent != directory:
                target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink():
                target.unlink()  # never write through a link into someone else's file
            with open(target, "w", encoding="utf-8", newline="") as out:
                out.write(rendered.text)
            configured[relative] = rendered.used
        return configured


_generators: dict[str, Generator] = {}
_generators_lock = threading.Lock()


def prepare_member(
    *, directory: str, name: str, params: dict, files: dict, roots: list[str], texts: dict | None = None
) -> None:
    """A launcher's ``prepare`` hook: generate one member's directory just before it starts.
    ``params`` are the typed values; ``texts`` the typed text of those that differ from
    ``str(value)`` (MemberRun.params_text), which configured files get.

    Generators are cached per file set, so the sources are checked and configured
    files read once per runner, not once per member."""
    key = repr((files, roots))  # equal file sets give equal keys (at worst, a generator each)
    with _generators_lock:
        generator = _generators.get(key)
        if generator is None:
            generator = _generators[key] = Generator(roots=[Path(r) for r in roots], **files)
    trash: list[Path] = []
    generator.generate(directory, name, params, trash=trash, texts=texts)
    discard_later(trash)
