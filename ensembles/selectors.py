"""Reads for views, consumers and the API. Every lookup is scoped to what the
user may see, and objects of others are a 404 (they are not even said to exist)."""

from __future__ import annotations

import itertools
import os
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from datetime import timezone as dt_timezone
from typing import Any

from django.conf import settings
from django.db import connections, router
from django.db.models import Count, Q, QuerySet
from django.db.models.fields.json import KeyTransform
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from launchers.base import LauncherError

from . import launching, plots
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
from .specs import member_argv
from .values import infer_type

PREVIEW_PAGE_SIZE = 20
MAX_PREVIEW_FILE_BYTES = 64 * 1024


def experiments_visible_to(user) -> QuerySet[Experiment]:
    return Experiment.objects.filter(owner=user)


def experiment_list(user) -> QuerySet[Experiment]:
    return experiments_visible_to(user).annotate(
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

MEMBER_SORTS = {
    "position": ["position"],
    "started": ["started", "position"],
    "-started": ["-started", "position"],
    "ended": ["ended", "position"],
    "-ended": ["-ended", "position"],
    "returncode": ["returncode", "position"],
    "-returncode": ["-returncode", "position"],
}
MAX_MEMBERS_PAGE = 1000


def runs_visible_to(user) -> QuerySet[Run]:
    return Run.objects.filter(experiment__in=experiments_visible_to(user))


def run_get(user, pk: int) -> Run:
    return get_object_or_404(runs_visible_to(user).select_related("experiment"), pk=pk)


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


def member_rows(run_id: int, member_ids: list[int]) -> list[MemberRun]:
    return list(MemberRun.objects.filter(run_id=run_id, pk__in=member_ids, latest=True).order_by("position"))


@dataclass
class MemberPage:
    rows: list
    page: int
    pages: int
    count: int
    page_size: int
    status: str
    param: str
    value: str
    sort: str


def run_members_page(run: Run, *, status="", param="", value="", sort="position", page=1, page_size=100) -> MemberPage:
    """One page of the run's latest attempts, filtered by status and by a parameter's value."""
    members = MemberRun.objects.filter(run=run, latest=True)
    if status in MemberStatus.values:
        members = members.filter(status=status)
    else:
        status = ""
    if param and value != "":
        if "\x00" in param + value:  # no name or value holds one (and PostgreSQL refuses it in text)
            members = members.none()
        else:  # the name is a JSON key, never part of a lookup: "isnull" or "a__b" are parameter names too
            members = members.alias(param_value=KeyTransform(param, "params")).filter(
                Q(param_value=infer_type(value)) | Q(param_value=value)
            )
    sort = sort if sort in MEMBER_SORTS else "position"
    page_size = min(max(1, page_size), MAX_MEMBERS_PAGE)
    count = members.count()
    pages = max(1, -(-count // page_size))
    page = min(max(1, page), pages)
    rows = list(members.order_by(*MEMBER_SORTS[sort])[(page - 1) * page_size : page * page_size])
    return MemberPage(rows, page, pages, count, page_size, status, param, value, sort)


def runs_of(experiment: Experiment) -> list[Run]:
    """The experiment's runs with their counts by status (two queries)."""
    runs = list(experiment.runs.all())
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


def run_param_names(run: Run) -> list[str]:
    """Parameter names of the run's members, from one member (one query)."""
    first = MemberRun.objects.filter(run=run).order_by("position").values("params", "param_names").first()
    return list(params_in_order(first["params"], first["param_names"])) if first else []


def member_attempts(member: MemberRun) -> list[MemberRun]:
    """Every attempt of this member in its run, first to last."""
    return list(MemberRun.objects.filter(run_id=member.run_id, position=member.position).order_by("attempt"))


EXPORT_FIELDS = [
    "name", "entity_type", "job_id", "run_id", "time", "status", "returncode",  # SmartSim's summary columns
    "entity", "attempt", "signal", "started", "ended", "cwd",
]


EXPORT_CHUNK = 2000


def run_export_rows(run: Run) -> Iterator[dict]:
    """The run's latest members as export rows, one at a time (read EXPORT_CHUNK rows a query)."""
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
    params, results = {}, {}
    for row in rows:
        params.update(dict.fromkeys(row["params"] or {}))
        results.update(dict.fromkeys(row["results"] or {}))
    return EXPORT_FIELDS + [f"params.{k}" for k in params] + [f"results.{k}" for k in results]


def run_export_columns(run: Run) -> list[str]:
    """The CSV header of ``run_export_rows``: a first pass over only the parameters and
    results, streamed, keeping nothing but their names."""
    values = MemberRun.objects.filter(run=run, latest=True).order_by("position").values_list("params", "param_names", "results")
    return export_columns(
        {"params": params_in_order(params or {}, names or []), "results": results}
        for params, names, results in values.iterator(chunk_size=EXPORT_CHUNK)
    )


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
