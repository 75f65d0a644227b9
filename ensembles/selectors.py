"""Reads for views, consumers and the API. Every lookup is scoped to what the
user may see, and objects of others are a 404 (they are not even said to exist)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404

from . import plots
from .expansion import ParameterSpace
from .generation import Rendered, render_tags
from .models import AttachedFile, Ensemble, Experiment, FileAction, Member
from .specs import member_argv

PREVIEW_PAGE_SIZE = 20
MAX_PREVIEW_FILE_BYTES = 256 * 1024


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
    first_index: int = 0


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
    generated = len(space)
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
        first_index=start,
    )


def configurable_files(ensemble: Ensemble) -> list[tuple[str, Path]]:
    """(label, path) of every text file the ensemble configures, folders walked."""
    found = []
    for attached in ensemble.files.filter(action=FileAction.CONFIGURE):
        root = Path(attached.path)
        if attached.is_dir:
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                found.append((f"{root.name}/{path.relative_to(root)}", path))
        else:
            found.append((root.name, root))
    return found


@dataclass
class RenderedFile:
    label: str
    rendered: Rendered | None = None
    error: str = ""
    truncated: bool = False


def configured_file_preview(path: Path, label: str, params: dict, tag: str) -> RenderedFile:
    """One configured file as a member would get it, cut to the first 256 KB for display."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PREVIEW_FILE_BYTES + 1)
        text = data[:MAX_PREVIEW_FILE_BYTES].decode("utf-8", errors="replace")
    except OSError as error:
        return RenderedFile(label, error=f"Cannot read {label}: {error.strerror}")
    return RenderedFile(label, render_tags(text, params, tag), truncated=len(data) > MAX_PREVIEW_FILE_BYTES)
