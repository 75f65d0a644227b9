"""Reads for views, consumers and the API. Every lookup is scoped to what the
user may see, and objects of others are a 404 (they are not even said to exist)."""

from __future__ import annotations

import collections
import itertools
import os
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from datetime import timezone as dt_timezone
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.db import connections, router
from django.db.models import Count, Max, Min, Q, QuerySet, Sum
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from launchers.base import LauncherError

from . import launching, member_filter, plots
from .expansion import ParameterSpace
from .generation import FileRefused, Rendered, configurable_paths, render_tags
from .models import (
    TERMINAL_STATUSES,
    AttachedFile,
    Ensemble,
    Experiment,
    FileAction,
    Member,
    MemberRun,
    MemberStatus,
    Run,
    StatusEvent,
    params_in_order,
)
from .member_queries import MemberColumns, RunTime, filter_q, member_columns, member_ordering
from .specs import member_argv

PREVIEW_PAGE_SIZE = 20
MAX_PREVIEW_FILE_BYTES = 64 * 1024


def experiments_visible_to(user) -> QuerySet[Experiment]:
    return Experiment.objects.filter(owner=user)


def experiment_list(user) -> QuerySet[Experiment]:
    return experiments_visible_to(user).select_related("cluster").annotate(
        ensemble_count=Count("ensembles", distinct=True),
        # Models are the members of no ensemble; members added to an ensemble are counted with it.
        model_count=Count("members", filter=Q(members__ensemble__isnull=True), distinct=True),
    )


def experiment_get(user, pk: int) -> Experiment:
    return get_object_or_404(experiments_visible_to(user), pk=pk)


def ensemble_get(user, pk: int) -> Ensemble:
    return get_object_or_404(
        Ensemble.objects.select_related("experiment").filter(experiment__in=experiments_visible_to(user)), pk=pk
    )


def member_get(user, pk: int) -> Member:
    return get_object_or_404(
        Member.objects.select_related("experiment", "ensemble").filter(experiment__in=experiments_visible_to(user)),
        pk=pk,
    )


def attached_file_get(user, pk: int) -> AttachedFile:
    visible = experiments_visible_to(user)
    return get_object_or_404(
        AttachedFile.objects.select_related("ensemble__experiment", "member__experiment", "member__ensemble").filter(
            Q(ensemble__experiment__in=visible) | Q(member__experiment__in=visible)
        ),
        pk=pk,
    )


@dataclass
class PreviewMember:
    index: int
    name: str
    params: dict[str, Any]
    command: str


@dataclass
class Preview:
    """Everything the live preview shows for one ensemble spec."""

    count: int = 0
    generated: int = 0
    manual: int = 0
    page: int = 1
    pages: int = 1
    members: list[PreviewMember] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    figure: dict | None = None


def ensemble_preview(
    *,
    name: str,
    space: ParameterSpace,
    run_settings: dict,
    params_as_args: list[str],
    manual_members: list[Member] = (),
    page: int = 1,
    numeric_names: list[str] = (),
) -> Preview:
    """A page of members (generated ones first, then those added by hand) with their command lines."""
    generated = space.size
    total = generated + len(manual_members)
    pages = max(1, -(-total // PREVIEW_PAGE_SIZE))
    page = min(max(1, page), pages)
    start = (page - 1) * PREVIEW_PAGE_SIZE
    stop = min(total, start + PREVIEW_PAGE_SIZE)
    settings_for_command = {**run_settings, "exe": run_settings.get("exe") or "<exe>"}
    members = []
    for index in range(start, stop):
        if index < generated:
            params = space[index]
            argv = member_argv(settings_for_command, params, params_as_args)
            members.append(PreviewMember(index, f"{name}_{index}", params, shlex.join(argv)))
        else:
            member = manual_members[index - generated]
            params = member.param_dict()
            argv = member_argv(member.run_settings, params, member.params_as_args)
            members.append(PreviewMember(index, member.name, params, shlex.join(argv)))
    warnings = list(space.warnings)
    if total == 0:
        warnings.append("The ensemble has no members: it cannot be launched.")
    figure = plots.parameter_scatter(space, numeric_names) if 2 <= len(numeric_names) <= 3 and generated else None
    return Preview(
        count=total,
        generated=generated,
        manual=len(manual_members),
        page=page,
        pages=pages,
        members=members,
        warnings=warnings,
        figure=figure,
    )


def file_roots(owner_id: int) -> list[Path]:
    """The folders an ensemble's attached files must still lie in: the server folders
    users may attach from, and the owner's own uploads."""
    return [Path(root).resolve() for root in settings.FILE_ROOTS] + [(Path(settings.UPLOAD_DIR) / str(owner_id)).resolve()]


def is_inside(path: str | os.PathLike, roots: list[Path]) -> bool:
    """Whether ``path``, links resolved as they are now, lies in one of ``roots``."""
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError):
        return False
    return any(real == root or real.is_relative_to(root) for root in roots)


def attached_files(owner: Ensemble | Member) -> list[AttachedFile]:
    """The files attached to an ensemble (or to one member or model), each with ``outside``
    set when a link on its way was changed since and it now leads outside the allowed folders."""
    roots = file_roots(owner.experiment.owner_id)
    files = list(owner.files.all())
    for attached in files:
        attached.outside = not is_inside(attached.path, roots)
    return files


def configurable_files(ensemble: Ensemble) -> list[tuple[str, Path]]:
    """(label, path) of every text file the ensemble configures, folders walked (not
    those that now lead outside the allowed folders: their preview says so)."""
    roots = file_roots(ensemble.experiment.owner_id)
    found = []
    for attached in ensemble.files.filter(action=FileAction.CONFIGURE):
        root = Path(attached.path)
        prefix = f"{root.name}/" if attached.is_dir else ""
        if not is_inside(root, roots):
            found.append((prefix or root.name, root))
            continue
        try:
            paths = configurable_paths(root)
        except (FileRefused, OSError):
            continue  # changed since it was attached: the launch reports it
        found.extend((prefix + relative, path) for relative, path in paths)
    return found


@dataclass
class RenderedFile:
    label: str
    rendered: Rendered | None = None
    error: str = ""
    truncated: bool = False


def _opened_path(handle, path: Path) -> Path:
    """The real path of the file actually opened (Linux), else of the path as it resolves now."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{handle.fileno()}"))
    except OSError:
        return path.resolve()


def configured_file_preview(path: Path, label: str, params: dict, tag: str, *, roots: list[Path]) -> RenderedFile:
    """One configured file as a member would get it, cut to the first 64 KB for display.
    Its path is checked against ``roots`` again now: a folder on the way may have been
    swapped for a link since the file was attached."""
    outside = RenderedFile(
        label, error=f"{label} is now outside the folders files may be attached from (a link on its way was "
        "changed): it is not shown, and a launch refuses it."
    )
    try:
        if not is_inside(path, roots):
            return outside
        if path.is_symlink():
            return RenderedFile(label, error=f"{label} is now a link; it will not be configured.")
        with open(path, "rb") as handle:
            if not is_inside(_opened_path(handle, path), roots):
                return outside  # swapped between the check and the open
            data = handle.read(MAX_PREVIEW_FILE_BYTES + 1)
        text = data[:MAX_PREVIEW_FILE_BYTES].decode("utf-8", errors="replace")
    except OSError as error:
        return RenderedFile(label, error=f"Cannot read {label}: {error.strerror}")
    return RenderedFile(label, render_tags(text, params, tag), truncated=len(data) > MAX_PREVIEW_FILE_BYTES)


# --- runs ----------------------------------------------------------------------

MAX_MEMBERS_PAGE = 1000


def runs_visible_to(user) -> QuerySet[Run]:
    """Deleted runs (their files and rows going in the background) are gone for every page."""
    return Run.objects.filter(experiment__in=experiments_visible_to(user), deleting=False)


def run_get(user, pk: int) -> Run:
    return get_object_or_404(runs_visible_to(user).select_related("experiment", "cluster"), pk=pk)


def member_run_get(user, pk: int) -> MemberRun:
    return get_object_or_404(
        MemberRun.objects.select_related("run__experiment", "previous").filter(run__in=runs_visible_to(user)), pk=pk
    )


def _status_counts(queryset) -> dict[str, int]:
    counts = {status: 0 for status in MemberStatus.values}
    for row in queryset.values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts


def run_summary(run_id: int, *, members: list[MemberRun] | None = None) -> dict:
    """The run, its member counts by status and its progress (two queries).

    ``members``: every latest attempt of the run, already read by the caller: the
    counts are taken from them (one query less, and they agree with those rows)."""
    run = Run.objects.select_related("experiment").get(pk=run_id)
    if members is None:
        counts = _status_counts(MemberRun.objects.filter(run_id=run_id, latest=True))
    else:
        counts = {status: 0 for status in MemberStatus.values}
        for member in members:
            counts[member.status] += 1
    total = sum(counts.values())
    done = sum(counts[s] for s in TERMINAL_STATUSES)
    return {
        "run": run,
        "counts": counts,
        "total": total,
        "done": done,
        "percent": round(100 * done / total) if total else 100,
        "failed_or_cancelled": counts[MemberStatus.FAILED] + counts[MemberStatus.CANCELLED] + counts[MemberStatus.LOST],
        "active": run.finished is None,
    }


def member_ids_changed_since(run_id: int, since, *, limit: int) -> list[int]:
    """The run's current members updated at or after ``since`` (at most ``limit``), in order."""
    changed = MemberRun.objects.filter(run_id=run_id, latest=True, updated__gte=since).order_by("position")
    return list(changed.values_list("pk", flat=True)[:limit])


def _number_cell(value) -> tuple[str, str]:
    """A number as the table shows it (6 significant digits), and in full when that rounds it."""
    if not _is_number(value):
        return "", ""
    shown = str(value) if isinstance(value, int) else f"{value:.6g}"
    return shown, "" if isinstance(value, int) or float(shown) == value else repr(value)


def _with_cells(rows: list[MemberRun], columns: MemberColumns) -> list[MemberRun]:
    """Each row with the cells of the table's parameter columns ((text as written, is a
    number)) and result columns ((shown, in full)), so that the template only prints them."""
    for member in rows:
        written = member.written_params
        member.param_cells = [(written.get(name, ""), _is_number(member.params.get(name))) for name in columns.params]
        results = member.results or {}
        member.result_cells = [_number_cell(results.get(name)) for name in columns.results]
    return rows


@dataclass
class LiveRows:
    """Changed rows for the pages watching a run, rendered in the run's columns."""

    rows: list[MemberRun]
    columns: MemberColumns
    # A result name that only these rows have: pages' tables lack its column, they reload.
    new_columns: bool


def member_rows(run: Run, member_ids: list[int]) -> LiveRows:
    """The changed rows and the run's columns (two queries; three when the columns may have changed)."""
    rows = list(MemberRun.objects.filter(run=run, pk__in=member_ids, latest=True).order_by("position"))
    columns = member_columns([run])
    carried = collections.Counter(name for member in rows for name in member.results or {})
    new_columns = any(columns.result_counts.get(name, 0) <= n for name, n in carried.items())
    return LiveRows(_with_cells(rows, columns), columns, new_columns)


@dataclass(frozen=True)
class SortHeader:
    """A sortable column head: a click sorts ascending, a second click descending."""

    label: str
    next: str  # the sort a click asks for
    state: str  # aria-sort: "ascending", "descending" or ""


def _sort_header(label: str, key: str, sort: str) -> SortHeader:
    if sort == key:
        return SortHeader(label, f"-{key}", "ascending")
    return SortHeader(label, key, "descending" if sort == f"-{key}" else "")


@dataclass
class MemberPage:
    rows: list
    page: int
    pages: int
    count: int
    page_size: int
    status: str
    q: str  # the filter expression (member_filter)
    sort: str
    columns: MemberColumns
    error: str = ""  # why ``q`` cannot be used; there are no rows then

    @property
    def filtered(self) -> bool:
        return bool(self.status or self.q.strip())

    @property
    def width(self) -> int:
        """The table's number of columns."""
        return 8 + len(self.columns.params) + len(self.columns.results)

    @property
    def export_query(self) -> str:
        """The query string of an export of what the table shows (its filters and order)."""
        query = {"status": self.status, "q": self.q.strip(), "sort": "" if self.sort == "position" else self.sort}
        return urlencode({key: value for key, value in query.items() if value})

    @property
    def headers(self) -> dict[str, SortHeader]:
        """The heads of the member table's own sortable columns, by name."""
        fields = {"name": ("Name", "position"), "time": ("Time", "time"), "returncode": ("Returncode", "returncode")}
        return {name: _sort_header(label, key, self.sort) for name, (label, key) in fields.items()}

    @property
    def param_headers(self) -> list[SortHeader]:
        return [_sort_header(name, f"params.{name}", self.sort) for name in self.columns.params]

    @property
    def result_headers(self) -> list[SortHeader]:
        return [_sort_header(name, f"results.{name}", self.sort) for name in self.columns.results]


def _members_matching(run: Run, columns: MemberColumns, *, status: str, q: str) -> QuerySet[MemberRun]:
    """The run's latest attempts with that status (any: "") matching ``q``; FilterError for a bad ``q``."""
    members = MemberRun.objects.filter(run=run, latest=True)
    if status:
        members = members.filter(status=status)
    node = member_filter.parse(q)
    return members if node is None else members.filter(filter_q(node, columns))


def run_members_page(
    run: Run, *, status="", q="", sort="position", page=1, page_size=100, param="", value=""
) -> MemberPage:
    """One page of the run's latest attempts, filtered by status and by a filter expression
    (member_filter; an old link's ``param`` and ``value`` are read as ``param = value``),
    sorted by a field, a parameter or a result. Three queries: the run's columns (four when
    they may have changed: member_columns), the count, the page. A bad expression gives
    ``error`` and no rows."""
    status = status if status in MemberStatus.values else ""
    page_size = min(max(1, page_size), MAX_MEMBERS_PAGE)
    columns = member_columns([run])
    sort, ordering = member_ordering(sort, columns)
    if param and value != "" and not q.strip():  # an old link: "parameter equals value"
        unusable = "\x00" in param + value or columns.resolve(param) is None
        param, value = (text.replace("\x00", "") for text in (param, value))
        q = f"{member_filter.quote(param)} = {member_filter.quote(value)}"
        if unusable:  # as before: it matches no member
            return MemberPage([], 1, 1, 0, page_size, status, q, sort, columns)
    try:
        members = _members_matching(run, columns, status=status, q=q)
    except member_filter.FilterError as error:
        return MemberPage([], 1, 1, 0, page_size, status, q, sort, columns, error=str(error))
    count = members.count()
    pages = max(1, -(-count // page_size))
    page = min(max(1, page), pages)
    # Only ids are sorted (a sort by a JSON value reads every member), then the page's rows are read.
    ids = members.order_by(*ordering).values("pk")[(page - 1) * page_size : page * page_size]
    rows = list(MemberRun.objects.filter(pk__in=ids).order_by(*ordering))
    return MemberPage(_with_cells(rows, columns), page, pages, count, page_size, status, q, sort, columns)


def busy_entities(experiment: Experiment) -> dict[str, int]:
    """The ensembles and models that an active run of the experiment holds: {name: run number}."""
    busy = {}
    for number, entities in experiment.runs.filter(finished__isnull=True).order_by("number").values_list("number", "entities"):
        for name in entities:
            busy.setdefault(name, number)
    return busy


def runs_of(experiment: Experiment) -> list[Run]:
    """The experiment's runs with their counts by status (two queries)."""
    runs = list(experiment.runs.filter(deleting=False))
    counts = {run.pk: {s: 0 for s in MemberStatus.values} for run in runs}
    rows = MemberRun.objects.filter(run__in=runs, latest=True).values("run_id", "status").annotate(n=Count("id"))
    for row in rows:
        counts[row["run_id"]][row["status"]] = row["n"]
    for run in runs:
        run.counts = counts[run.pk]
        run.total = sum(run.counts.values())
    return runs


MEMBER_FILES_PAGE = 200


@dataclass
class FilePage:
    entries: list[dict]
    page: int
    pages: int
    count: int
    generated: bool


def member_files(member: MemberRun, page: int = 1, page_size: int = MEMBER_FILES_PAGE) -> FilePage:
    """One page of the member directory's entries by name (not following links out of
    it): only the page's entries are looked at, however many files the member wrote.
    Listed by the member's side (its Unix account when members run as their owners)."""
    page = max(1, page)
    try:
        listing = launching.member_side(member.run).list_folder(member.cwd, offset=(page - 1) * page_size, limit=page_size)
    except LauncherError:
        listing = {"exists": False}
    if not listing.get("exists"):
        return FilePage([], 1, 1, 0, generated=False)
    pages = max(1, -(-listing["total"] // page_size))
    if page > pages:
        return member_files(member, pages, page_size)
    return FilePage(listing["entries"], page, pages, listing["total"], generated=True)


def member_file_open(member: MemberRun, name: str) -> int | None:
    """A descriptor of a regular file directly inside the member directory, opened by the
    member's side (never through a link), or None: nothing else is ever served."""
    if not name or "/" in name or name in (".", ".."):
        return None
    try:
        (descriptor,) = launching.member_side(member.run).open_files([os.path.join(member.cwd, name)])
    except LauncherError:
        return None
    if descriptor is not None and not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        return None
    return descriptor


def run_siblings(user, run: Run) -> list[Run]:
    """The experiment's other runs the user sees, newest first (what a run is compared with)."""
    return list(runs_visible_to(user).filter(experiment_id=run.experiment_id).exclude(pk=run.pk).order_by("-number"))


def member_attempts(member: MemberRun) -> list[MemberRun]:
    """Every attempt of this member in its run, first to last."""
    return list(MemberRun.objects.filter(run_id=member.run_id, position=member.position).order_by("attempt"))


EXPORT_FIELDS = [
    "name", "entity_type", "job_id", "run_id", "time", "status", "returncode",  # SmartSim's summary columns
    "entity", "attempt", "signal", "started", "ended", "cwd",
]


EXPORT_CHUNK = 2000


def run_export_members(run: Run, *, status="", q="", sort="position") -> QuerySet[MemberRun]:
    """The members an export of the run holds: its latest attempts, as the member table
    filters (status, expression) and sorts them; FilterError for a bad expression."""
    columns = member_columns([run])
    members = _members_matching(run, columns, status=status if status in MemberStatus.values else "", q=q)
    return members.order_by(*member_ordering(sort, columns)[1])


def run_export_rows(run: Run, members: QuerySet[MemberRun] | None = None) -> Iterator[dict]:
    """The run's latest members (or ``members``) as export rows, one at a time (read
    EXPORT_CHUNK rows a query)."""
    if members is None:
        members = MemberRun.objects.filter(run=run, latest=True).order_by("position")
    for member in members.iterator(chunk_size=EXPORT_CHUNK):
        yield {
            "name": member.name,
            "entity_type": "Model",
            "job_id": member.job_id,
            "run_id": run.number,
            "time": member.runtime,
            "status": member.status,
            "returncode": member.returncode,
            "entity": member.entity,
            "attempt": member.attempt,
            "signal": member.signal,
            "started": member.started.isoformat() if member.started else None,
            "ended": member.ended.isoformat() if member.ended else None,
            "cwd": member.cwd,
            "params": member.ordered_params,
            "results": member.results,
        }


def export_columns(rows) -> list[str]:
    """The CSV header of these export rows: parameters in launch order, results by name (as the table)."""
    params, results = {}, set()
    for row in rows:
        params.update(dict.fromkeys(row["params"] or {}))
        results.update(row["results"] or {})
    return EXPORT_FIELDS + [f"params.{k}" for k in params] + [f"results.{k}" for k in sorted(results)]


def run_export_columns(run: Run) -> list[str]:
    """The CSV header of ``run_export_rows``: the run's columns, as the member table has
    them (one query; a filtered export keeps the whole run's columns)."""
    columns = member_columns([run])
    return EXPORT_FIELDS + [f"params.{k}" for k in columns.params] + [f"results.{k}" for k in columns.results]


COMPARE_PAGE_SIZE = 100


@dataclass
class RunSide:
    """One of two compared runs: its counts by status and its members' run times (seconds)."""

    run: Run
    counts: dict[str, int]
    total: int
    timed: int = 0  # members that have started and ended
    runtime_min: float | None = None
    runtime_median: float | None = None
    runtime_max: float | None = None
    runtime_total: float | None = None


@dataclass
class ComparedPoint:
    """One parameter point (a member's name and parameter values) and what each run made of it."""

    name: str
    param_cells: list[tuple[str, bool]]
    members: list[MemberRun | None]  # per run; None: the point is not in that run
    # Three cells per result, (shown, in full, class): the first run's, the second's, their difference.
    result_cells: list[tuple[str, str, str]]
    only_in: int | None = None  # the number of the only run that has the point


@dataclass
class RunComparison:
    sides: list[RunSide]
    columns: MemberColumns
    points: list[ComparedPoint]
    page: int
    pages: int
    names: int  # member names in either run (a page holds COMPARE_PAGE_SIZE of them)

    @property
    def status_rows(self) -> list[tuple[str, list[int]]]:
        """(status, count in each run) for the statuses either run has members in."""
        return [
            (status, [side.counts[status] for side in self.sides])
            for status in MemberStatus.values
            if any(side.counts[status] for side in self.sides)
        ]


def _run_sides(runs: list[Run]) -> list[RunSide]:
    """Each run's counts and run-time statistics: two queries, and one per run for its median
    (one query of window functions for both is several times slower on SQLite)."""
    members = MemberRun.objects.filter(run__in=runs, latest=True)
    sides = {run.pk: RunSide(run, {status: 0 for status in MemberStatus.values}, 0) for run in runs}
    for row in members.values("run_id", "status").annotate(n=Count("id")).order_by():
        sides[row["run_id"]].counts[row["status"]] = row["n"]
        sides[row["run_id"]].total += row["n"]
    timed = members.filter(started__isnull=False, ended__isnull=False).annotate(seconds=RunTime())
    stats = timed.values("run_id").annotate(n=Count("id"), low=Min("seconds"), high=Max("seconds"), sum=Sum("seconds"))
    for row in stats.order_by():
        side = sides[row["run_id"]]
        side.timed, side.runtime_min, side.runtime_max, side.runtime_total = row["n"], row["low"], row["high"], row["sum"]
        middle = timed.filter(run_id=row["run_id"]).order_by("seconds").values_list("seconds", flat=True)
        values = list(middle[(side.timed - 1) // 2 : side.timed // 2 + 1])
        side.runtime_median = sum(values) / len(values)
    return [sides[run.pk] for run in runs]


def _difference_cell(first, second) -> tuple[str, str]:
    if not (_is_number(first) and _is_number(second)):
        return "", ""
    difference = second - first
    shown, full = _number_cell(difference)
    return ("+" + shown if difference > 0 else shown), full


def _compared_points(names: list[str], ids: list[int], runs: list[Run], columns: MemberColumns) -> list[ComparedPoint]:
    """The points of these member names (``ids``: their members'): a member of each run with
    the same name and the same parameter values are one point; a name whose values differ is two."""
    found = {(m.run_id, m.name): m for m in MemberRun.objects.filter(pk__in=ids)}
    points = []
    for name in names:
        first, second = (found.get((run.pk, name)) for run in runs)
        pairs = [(first, second)] if first and second and first.params == second.params else [(first, None), (None, second)]
        for pair in pairs:
            present = [member for member in pair if member is not None]
            if not present:
                continue
            _with_cells(present, columns)
            results = [(member.results or {}) if member else {} for member in pair]
            cells = []
            for i, result in enumerate(columns.results):
                cells += [(*member.result_cells[i], "") if member else ("", "", "") for member in pair]
                cells.append((*_difference_cell(results[0].get(result), results[1].get(result)), "difference"))
            only_in = None if len(present) == 2 else runs[pair.index(present[0])].number
            points.append(ComparedPoint(name, present[0].param_cells, list(pair), cells, only_in))
    return points


def run_compare(run: Run, other: Run, *, page: int = 1, page_size: int = COMPARE_PAGE_SIZE) -> RunComparison:
    """Two runs side by side: counts, run times, and a page of parameter points with each run's
    status and results and their differences (other minus run). A fixed number of queries:
    the points are paged by member name, in launch order."""
    runs = [run, other]
    columns = member_columns(runs)
    # A name has one member in each run at most: the lowest and highest ids are its members.
    names = (
        MemberRun.objects.filter(run__in=runs, latest=True)
        .values("name").annotate(first=Min("position"), low=Min("pk"), high=Max("pk")).order_by("first", "name")
    )
    count = names.count()
    pages = max(1, -(-count // page_size))
    page = min(max(1, page), pages)
    rows = list(names[(page - 1) * page_size : page * page_size])
    ids = {pk for row in rows for pk in (row["low"], row["high"])}
    points = _compared_points([row["name"] for row in rows], list(ids), runs, columns)
    return RunComparison(_run_sides(runs), columns, points, page, pages, count)


MAX_PLOTTED_MEMBERS = 5000


def run_plot_data(run: Run) -> dict:
    """What the run's plots need, in three queries (members capped at MAX_PLOTTED_MEMBERS;
    the status events counted in the database: ``events`` is a plots.StatusSamples)."""
    start = run.created.timestamp()
    members = []
    rows = list(
        MemberRun.objects.filter(run=run, latest=True)
        .order_by("position")
        .values("pk", "name", "status", "started", "ended", "params", "param_names", "results")[:MAX_PLOTTED_MEMBERS]
    )
    now = timezone.now().timestamp()
    for row in rows:
        started = row["started"].timestamp() if row["started"] else None
        ended = row["ended"].timestamp() if row["ended"] else (now if started else None)
        members.append(
            {
                "pk": row["pk"],
                "name": row["name"],
                "status": row["status"],
                "started": started,
                "ended": ended,
                "url": reverse("ensembles:member_run_detail", args=[row["pk"]]),
                "values": {**params_in_order(row["params"], row["param_names"]), **(row["results"] or {})},
            }
        )
    events = status_samples(run.pk)
    params, results = {}, {}
    for row in rows:
        params.update({k: None for k, v in params_in_order(row["params"], row["param_names"]).items() if _is_number(v)})
        results.update({k: None for k, v in (row["results"] or {}).items() if _is_number(v)})
    # Results in name order: PostgreSQL (jsonb) does not keep the order the member wrote them in.
    return {"start": start, "members": members, "events": events, "params": list(params), "results": sorted(results)}


def status_samples(run_id: int, max_points: int = plots.STATUS_MAX_POINTS) -> plots.StatusSamples:
    """plots.status_samples of the run's status events, computed in the database: what
    comes back is a few rows per drawn point, however many events the run has.

    Event ``i`` (0-based, in (at, id) order) goes to bucket ceil(i / step); the point drawn
    for bucket ``k`` is after event k*step (the bucket's last), or after the very last
    event. Each event adds one member to its status and takes one from the status the
    member had before (LAG over the member's events); summing those per bucket, then
    cumulatively over buckets, gives the counts after each drawn event."""
    db = router.db_for_read(StatusEvent)
    count = StatusEvent.objects.using(db).filter(run_id=run_id).count()
    if not count:
        return plots.StatusSamples()
    step = plots.sample_step(count, max_points)
    quote = connections[db].ops.quote_name
    table, at, pk = quote(StatusEvent._meta.db_table), quote("at"), quote("id")
    sql = f"""
        WITH e AS (
            SELECT {quote("status")} AS status, {at} AS at,
                   ROW_NUMBER() OVER (ORDER BY {at}, {pk}) - 1 AS idx,
                   LAG({quote("status")}) OVER (PARTITION BY {quote("member_id")} ORDER BY {at}, {pk}) AS previous
            FROM {table} WHERE {quote("run_id")} = %s
        ), b AS (
            SELECT (idx + %s - 1) / %s AS bucket, status, previous, at FROM e
        )
        SELECT bucket, MAX(at), status, previous, COUNT(*) FROM b GROUP BY bucket, status, previous ORDER BY bucket
    """
    with connections[db].cursor() as cursor:
        cursor.execute(sql, [run_id, step, step])
        rows = cursor.fetchall()
    samples = plots.StatusSamples()
    counts = {status: 0 for status in plots.STATUS_COLOURS}
    for bucket, group in itertools.groupby(rows, key=lambda row: row[0]):
        latest = None
        for _, bucket_at, status, previous, number in group:
            latest = bucket_at if latest is None else max(latest, bucket_at)
            counts[status] += number
            if previous:
                counts[previous] -= number
        samples.times.append(_epoch(latest))
        samples.counts.append(dict(counts))
    return samples


def _epoch(value) -> float:
    """A datetime from raw SQL (SQLite gives text, in UTC) as an epoch."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if timezone.is_naive(value):
        value = timezone.make_aware(value, dt_timezone.utc)
    return value.timestamp()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
