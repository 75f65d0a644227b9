"""Reads for views, consumers and the API. Every lookup is scoped to what the
user may see, and objects of others are a 404 (they are not even said to exist)."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone

from . import plots
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
        ensemble_count=Count("ensembles", distinct=True), model_count=Count("members", distinct=True)
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
        AttachedFile.objects.select_related("ensemble__experiment", "member__experiment").filter(
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


def configurable_files(ensemble: Ensemble) -> list[tuple[str, Path]]:
    """(label, path) of every text file the ensemble configures, folders walked."""
    found = []
    for attached in ensemble.files.filter(action=FileAction.CONFIGURE):
        root = Path(attached.path)
        try:
            paths = configurable_paths(root)
        except (FileRefused, OSError):
            continue  # changed since it was attached: the launch reports it
        prefix = f"{root.name}/" if attached.is_dir else ""
        found.extend((prefix + relative, path) for relative, path in paths)
    return found


@dataclass
class RenderedFile:
    label: str
    rendered: Rendered | None = None
    error: str = ""
    truncated: bool = False


def configured_file_preview(path: Path, label: str, params: dict, tag: str) -> RenderedFile:
    """One configured file as a member would get it, cut to the first 64 KB for display."""
    try:
        if path.is_symlink():
            return RenderedFile(label, error=f"{label} is now a link; it will not be configured.")
        with open(path, "rb") as handle:
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


def run_summary(run_id: int) -> dict:
    """The run, its member counts by status and its progress (two queries)."""
    run = Run.objects.select_related("experiment").get(pk=run_id)
    counts = _status_counts(MemberRun.objects.filter(run_id=run_id, latest=True))
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
    if param and "__" not in param and value != "":
        typed = infer_type(value)
        members = members.filter(Q(**{f"params__{param}": typed}) | Q(**{f"params__{param}": value}))
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


def member_files(member: MemberRun) -> list[dict]:
    """The member directory's entries (not following links out of it)."""
    folder = Path(member.cwd)
    entries = []
    try:
        with os.scandir(folder) as scan:
            for entry in sorted(scan, key=lambda e: e.name):
                is_link = entry.is_symlink()
                entries.append(
                    {
                        "name": entry.name,
                        "is_dir": entry.is_dir(follow_symlinks=False),
                        "is_link": is_link,
                        "size": entry.stat(follow_symlinks=False).st_size,
                        "target": os.readlink(entry.path) if is_link else "",
                    }
                )
    except OSError:
        return []
    return entries


def member_file_path(member: MemberRun, name: str) -> Path | None:
    """A regular file directly inside the member directory, or None: nothing else is ever served."""
    if not name or "/" in name or name in (".", ".."):
        return None
    folder = Path(member.cwd).resolve()
    path = folder / name
    if path.is_symlink() or not path.is_file() or path.resolve().parent != folder:
        return None
    return path


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


def run_export_rows(run: Run) -> list[dict]:
    rows = []
    for member in MemberRun.objects.filter(run=run, latest=True).order_by("position").iterator(chunk_size=2000):
        rows.append(
            {
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
        )
    return rows


def export_columns(rows: list[dict]) -> list[str]:
    params, results = {}, {}
    for row in rows:
        params.update(dict.fromkeys(row["params"] or {}))
        results.update(dict.fromkeys(row["results"] or {}))
    return EXPORT_FIELDS + [f"params.{k}" for k in params] + [f"results.{k}" for k in results]


MAX_PLOTTED_MEMBERS = 5000


def run_plot_data(run: Run) -> dict:
    """What the run's plots need, in two queries (members capped at MAX_PLOTTED_MEMBERS)."""
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
    events = [
        (member_id, status, at.timestamp())
        for member_id, status, at in StatusEvent.objects.filter(run=run).order_by("at", "id").values_list("member_id", "status", "at")
    ]
    params, results = {}, {}
    for row in rows:
        params.update({k: None for k, v in params_in_order(row["params"], row["param_names"]).items() if _is_number(v)})
        results.update({k: None for k, v in (row["results"] or {}).items() if _is_number(v)})
    # Results in name order: PostgreSQL (jsonb) does not keep the order the member wrote them in.
    return {"start": start, "members": members, "events": events, "params": list(params), "results": sorted(results)}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
