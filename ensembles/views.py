"""Views: parse -> permission (selectors 404 on others' objects) -> service/selector -> render."""

from __future__ import annotations

import csv
import functools
import itertools
import json
import os
import random
import shlex

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.core.handlers.asgi import ASGIRequest
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.http import FileResponse, Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.html import format_html
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import plots, realtime, selectors, services
from .expansion import ExpansionError, expand
from .forms import AttachFileForm, EnsembleForm, ExperimentForm, LaunchForm, MemberForm, ParamFormSet
from .generation import FileRefused, browse_folder
from .member_filter import FilterError
from .models import TERMINAL_STATUSES, Ensemble, Member, MemberStatus, Strategy
from .values import is_numeric


@functools.cache
def _health_redis(url: str) -> redis.Redis:
    """One client (and so one connection pool) per process for /healthz, not one a request."""
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


@login_not_required
@require_GET
def healthz(request):
    """Liveness of the web process and its database and Redis (for monitors and the run command):
    the overall status for anyone, which service failed and how only for staff."""
    status = {"web": "ok"}
    try:
        connection.ensure_connection()
        status["database"] = "ok"
    except Exception as error:  # report, don't crash: this is the health page
        status["database"] = f"error: {type(error).__name__}"
    try:
        _health_redis(settings.REDIS_URL).ping()
        status["redis"] = "ok"
    except redis.RedisError as error:
        status["redis"] = f"error: {type(error).__name__}"
    healthy = all(value == "ok" for value in status.values())
    overall = {"status": "ok" if healthy else "error"}
    details = status if request.user.is_authenticated and request.user.is_staff else {}
    return JsonResponse({**overall, **details}, status=200 if healthy else 503)


def login_locked_out(request, *args, **kwargs):
    """django-axes' answer once a username has failed too often from one address: the
    login page again, refused (429), saying for how long (AXES_LOCKOUT_CALLABLE)."""
    minutes = round(settings.AXES_COOLOFF_TIME.total_seconds() / 60)
    form = AuthenticationForm(request, initial={"username": request.POST.get("username", "")})
    context = {
        "form": form,
        "next": request.POST.get("next", ""),
        "locked_out": f"Too many failed log-ins for this username from your address: try again in {minutes} minutes.",
    }
    return render(request, "registration/login.html", context, status=429)


# --- experiments -------------------------------------------------------------


@require_GET
def experiment_list(request):
    return render(request, "ensembles/experiment_list.html", {"experiments": selectors.experiment_list(request.user)})


@require_http_methods(["GET", "POST"])
def experiment_create(request):
    form = ExperimentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            experiment = services.experiment_create(owner=request.user, **form.cleaned_data)
        except ValidationError as error:
            form.apply_errors(error)
        else:
            messages.success(request, f"Experiment '{experiment.name}' created.")
            return redirect("ensembles:experiment_detail", pk=experiment.pk)
    return render(request, "ensembles/experiment_form.html", {"form": form})


@require_GET
def experiment_detail(request, pk):
    experiment = selectors.experiment_get(request.user, pk)
    ensembles = list(experiment.ensembles.all())
    for ensemble in ensembles:
        try:
            ensemble.member_count = ensemble.space().size
        except (ValidationError, ExpansionError):
            ensemble.member_count = None
    models = list(experiment.members.filter(ensemble__isnull=True))
    return render(
        request,
        "ensembles/experiment_detail.html",
        {
            "experiment": experiment,
            "ensembles": ensembles,
            "models": models,
            "runs": selectors.runs_of(experiment),
            "launch_form": _launch_form(experiment, ensembles=ensembles, models=models),
        },
    )


def _launch_form(experiment, data=None, *, ensembles=None, models=None) -> LaunchForm:
    ensembles = experiment.ensembles.all() if ensembles is None else ensembles
    models = experiment.members.filter(ensemble__isnull=True) if models is None else models
    return LaunchForm(data, entities=[e.name for e in ensembles] + [m.name for m in models],
                      busy=selectors.busy_entities(experiment))


@require_http_methods(["GET", "POST"])
def experiment_edit(request, pk):
    experiment = selectors.experiment_get(request.user, pk)
    form = ExperimentForm(request.POST or None, instance=experiment)
    if request.method == "POST" and form.is_valid():
        try:
            services.experiment_update(experiment=experiment, **form.cleaned_data)
        except ValidationError as error:
            form.apply_errors(error)
        else:
            messages.success(request, "Experiment saved.")
            return redirect("ensembles:experiment_detail", pk=experiment.pk)
    return render(request, "ensembles/experiment_form.html", {"form": form, "experiment": experiment})


@require_http_methods(["GET", "POST"])
def experiment_delete(request, pk):
    experiment = selectors.experiment_get(request.user, pk)
    if request.method == "POST":
        try:
            services.experiment_delete(experiment=experiment)
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
            return redirect("ensembles:experiment_detail", pk=experiment.pk)
        messages.success(request, f"Experiment '{experiment.name}' deleted.")
        return redirect("ensembles:experiment_list")
    cancel_url = reverse("ensembles:experiment_detail", args=[experiment.pk])
    return render(request, "ensembles/confirm_delete.html", {"object": experiment, "kind": "experiment", "cancel_url": cancel_url})


# --- ensembles: the builder --------------------------------------------------


def _ensemble_initial(ensemble: Ensemble | None):
    if ensemble is None:
        # A fresh seed up front keeps a random preview stable while the user types.
        form_initial = {"seed": random.randrange(2**31), "replicas": 1, "tag": ";", "key_prefixing": True}
        return form_initial, [{"name": "", "values": ""}]
    form_initial = {
        "version": ensemble.version,
        "name": ensemble.name,
        "description": ensemble.description,
        "perm_strategy": ensemble.perm_strategy,
        "n_models": ensemble.n_models,
        "seed": ensemble.seed,
        "replicas": ensemble.replicas,
        "key_prefixing": ensemble.key_prefixing,
        "tag": ensemble.tag,
        "results_file": ensemble.results_file,
        **EnsembleForm.settings_initial(ensemble.run_settings, ensemble.batch_settings),
    }
    rows = [
        {"name": row["name"], "values": row["values"], "as_arg": row["name"] in ensemble.params_as_args}
        for row in ensemble.params
    ]
    return form_initial, rows


# An ensemble's parameters are formset rows, not fields of its form.
CONFLICT_LABELS = {"params": "Parameters", "params_as_args": "Parameters passed as arguments"}


def _conflict(form, conflict: services.EditConflict, current_values: dict, url: str) -> dict:
    """The conflict banner: its message, a link to the current version, and the current value
    of each field the refused save would have changed, written as the form writes it."""
    differences = []
    for name in conflict.changed:
        label = form[name].label if name in form.fields else CONFLICT_LABELS.get(name, name.replace("_", " ").capitalize())
        value = current_values.get(name)
        value = "yes" if value is True else "no" if value is False else None if value in (None, "") else value
        differences.append((label, value))
    return {"message": conflict.messages[0], "url": url, "differences": differences}


def _int_from(data, key: str, default: int = 0) -> int:
    try:
        return int(data.get(key, default))
    except (TypeError, ValueError):
        return default


def _preview_context(form, formset, data, experiment, ensemble) -> dict:
    """Build the live preview from whatever of the form is valid so far."""
    context = {"form": form, "formset": formset, "ensemble": ensemble, "experiment": experiment, "errors": []}
    formset_valid = formset.is_valid()
    form.is_valid()
    cleaned = getattr(form, "cleaned_data", {})
    for field in ("perm_strategy", "n_models", "seed", "replicas", "tag"):
        for message in form.errors.get(field, []):
            context["errors"].append(f"{form.fields[field].label}: {message}")
    if not formset_valid:
        context["errors"].append("Fix the parameters marked in red.")
    if context["errors"]:
        return context
    rows = formset.rows()
    columns = {row["name"]: row["parsed"] for row in rows}
    try:
        space = expand(
            columns,
            cleaned.get("perm_strategy") or Strategy.ALL_PERM,
            n_models=cleaned.get("n_models"),
            seed=cleaned.get("seed"),
            replicas=cleaned.get("replicas") or 1,
        )
    except ExpansionError as error:
        context["errors"].append(str(error))
        return context
    name = cleaned.get("name") or (ensemble.name if ensemble else "ensemble")
    run_settings = {
        "exe": cleaned.get("exe") or "",
        "exe_args": cleaned.get("exe_args") or [],
        "run_command": cleaned.get("run_command") or "",
        "run_args": cleaned.get("run_args") or {},
    }
    manual = list(ensemble.members.all()) if ensemble else []
    preview = selectors.ensemble_preview(
        name=name,
        space=space,
        run_settings=run_settings,
        params_as_args=[row["name"] for row in rows if row.get("as_arg")],
        manual_members=manual,
        page=_int_from(data, "preview_page", 1),
        numeric_names=[row["name"] for row in rows if is_numeric(row["parsed"])],
    )
    if cleaned.get("perm_strategy") == Strategy.RANDOM and cleaned.get("seed") is None and space.seed is not None:
        preview.warnings.append(f"No seed given: this sample used seed {space.seed}; a seed is fixed when you save.")
    context["preview"] = preview
    if ensemble is not None and preview.count:
        files = selectors.configurable_files(ensemble)
        context["configurable_files"] = files
        if files:
            member_index = min(max(0, _int_from(data, "preview_member")), preview.count - 1)
            file_index = min(max(0, _int_from(data, "preview_file")), len(files) - 1)
            params = space[member_index] if member_index < preview.generated else manual[member_index - preview.generated].param_dict()
            label, path = files[file_index]
            context.update(
                preview_member=member_index,
                preview_file=file_index,
                rendered_file=selectors.configured_file_preview(
                    path, label, params, cleaned.get("tag") or ";", roots=selectors.file_roots(experiment.owner_id)
                ),
            )
    return context


@require_http_methods(["GET", "POST"])
def ensemble_edit(request, pk=None, experiment_pk=None):
    """Create (experiment_pk) or edit (pk) an ensemble, with the live preview beside the form."""
    if pk is not None:
        ensemble = selectors.ensemble_get(request.user, pk)
        experiment = ensemble.experiment
    else:
        ensemble = None
        experiment = selectors.experiment_get(request.user, experiment_pk)
    conflict = None
    if request.method == "POST":
        form = EnsembleForm(request.POST)
        formset = ParamFormSet(request.POST, prefix="params")
        if form.is_valid() and formset.is_valid():
            try:
                ensemble = services.ensemble_save(
                    experiment=experiment,
                    ensemble=ensemble,
                    spec=form.ensemble_spec(formset.rows()),
                    expected_version=form.expected_version,
                )
            except services.EditConflict as error:
                # The user's input stays in the form, which now carries the current version.
                ensemble = error.current
                form.carry_version(ensemble.version)
                current, _ = _ensemble_initial(ensemble)
                current["params"] = "; ".join(f"{row['name']} = {row['values']}" for row in ensemble.params)
                current["params_as_args"] = ", ".join(ensemble.params_as_args)
                conflict = _conflict(form, error, current, reverse("ensembles:ensemble_edit", args=[ensemble.pk]))
            except ValidationError as error:
                form.apply_errors(error)
            else:
                messages.success(request, f"Ensemble '{ensemble.name}' saved.")
                return redirect("ensembles:ensemble_edit", pk=ensemble.pk)
    else:
        form_initial, rows = _ensemble_initial(ensemble)
        form = EnsembleForm(initial=form_initial)
        formset = ParamFormSet(initial=rows, prefix="params")
    # The preview itself is fetched by htmx as soon as the page loads (one code path).
    context = {"form": form, "formset": formset, "ensemble": ensemble, "experiment": experiment, "conflict": conflict}
    context["attach_form"] = AttachFileForm()
    context["attached_files"] = selectors.attached_files(ensemble) if ensemble else []
    context["preview_url"] = (
        reverse("ensembles:ensemble_preview", args=[ensemble.pk])
        if ensemble
        else reverse("ensembles:ensemble_preview_new", args=[experiment.pk])
    )
    return render(request, "ensembles/ensemble_builder.html", context)


@require_POST
def ensemble_preview(request, pk=None, experiment_pk=None):
    """The preview fragment for the form as it is now (htmx, debounced as the user types)."""
    if pk is not None:
        ensemble = selectors.ensemble_get(request.user, pk)
        experiment = ensemble.experiment
    else:
        ensemble = None
        experiment = selectors.experiment_get(request.user, experiment_pk)
    form = EnsembleForm(request.POST)
    formset = ParamFormSet(request.POST, prefix="params")
    if not formset.management_form.is_valid():
        return HttpResponse("The form is incomplete; reload the page.", status=400)
    context = _preview_context(form, formset, request.POST, experiment, ensemble)
    context["preview_url"] = request.path
    return render(request, "ensembles/partials/ensemble_preview.html", {**context, "oob": True})


@require_http_methods(["GET", "POST"])
def ensemble_delete(request, pk):
    ensemble = selectors.ensemble_get(request.user, pk)
    experiment = ensemble.experiment
    if request.method == "POST":
        services.ensemble_delete(ensemble=ensemble)
        messages.success(request, f"Ensemble '{ensemble.name}' deleted.")
        return redirect("ensembles:experiment_detail", pk=experiment.pk)
    cancel_url = reverse("ensembles:ensemble_edit", args=[ensemble.pk])
    return render(request, "ensembles/confirm_delete.html", {"object": ensemble, "kind": "ensemble", "cancel_url": cancel_url})


@require_POST
def file_attach(request, pk):
    ensemble = selectors.ensemble_get(request.user, pk)
    form = AttachFileForm(request.POST, request.FILES)
    if form.is_valid():
        try:
            if form.cleaned_data["upload"]:
                services.file_attach_upload(
                    owner=ensemble, uploaded_file=form.cleaned_data["upload"], action=form.cleaned_data["action"], user=request.user
                )
            else:
                services.file_attach_path(owner=ensemble, path=form.cleaned_data["path"], action=form.cleaned_data["action"])
        except ValidationError as error:
            form.apply_errors(error)
    browse = request.POST.get("browse", "")  # the browser stays open where it was, to attach more from there
    if form.errors:
        return _attached_files(request, ensemble, form, status=422, browse=browse)
    return _files_changed(request, ensemble, browse=browse)


def _browser(path: str, *, query: str = "", show_hidden: bool = False) -> tuple[dict, int]:
    """The file browser's context for one folder of FLOTILLA_FILE_ROOTS, and its status."""
    context = {"query": query, "show_hidden": show_hidden, "several_roots": len(settings.FILE_ROOTS) > 1}
    try:
        context["listing"] = browse_folder(path, settings.FILE_ROOTS, query=query, show_hidden=show_hidden)
    except FileRefused as error:
        return {**context, "browse_error": str(error)}, 422
    return context, 200


@require_GET
def file_browse(request):
    """One folder of the server folders files may be attached from (htmx swaps it into the
    attach form). The folders are the same for every user; paths outside them are refused."""
    context, status = _browser(
        request.GET.get("path", ""), query=request.GET.get("q", "")[:200], show_hidden=request.GET.get("hidden") == "1"
    )
    return render(request, "ensembles/partials/file_browser.html", context, status=status)


def _attached_files(request, owner, attach_form=None, status=200, browse=""):
    """The attached-files fragment of an ensemble (with its attach form, and the file browser
    open at ``browse`` if given) or of a member or model (whose files are only listed, and
    detached, on its page)."""
    context = {"attached_files": selectors.attached_files(owner), "files_owner": owner}
    if isinstance(owner, Ensemble):
        context.update(ensemble=owner, attach_form=attach_form or AttachFileForm())
        if browse:
            context.update(_browser(browse)[0], browser_open=True)
    return render(request, "ensembles/partials/attached_files.html", context, status=status)


def _files_changed(request, owner, **fragment):
    response = _attached_files(request, owner, **fragment)
    response["HX-Trigger"] = "files-changed"  # the builder refreshes its preview
    return response


def _owner_url(owner) -> str:
    if isinstance(owner, Member):
        return reverse("ensembles:member_edit", args=[owner.pk])
    return reverse("ensembles:ensemble_edit", args=[owner.pk])


@require_POST
def file_detach(request, pk):
    """Detach a file of an ensemble, a hand-added member or a model. The answer (the owner's
    fragment for htmx, else a redirect to the owner's page) is made inside the detach's
    transaction: if it fails, nothing is detached (an upload is removed only on commit)."""
    attached = selectors.attached_file_get(request.user, pk)
    owner = attached.ensemble or attached.member
    with transaction.atomic():
        services.file_detach(attached=attached)
        if request.htmx:
            return _files_changed(request, owner, browse=request.POST.get("browse", ""))
        messages.success(request, f"'{attached.name}' detached.")
        return redirect(_owner_url(owner))


# --- hand-made members and standalone models ---------------------------------


@require_http_methods(["GET", "POST"])
def member_edit(request, pk=None, experiment_pk=None, ensemble_pk=None):
    """A member added to an ensemble by hand (ensemble_pk), a standalone model (experiment_pk), or either (pk)."""
    member = ensemble = None
    if pk is not None:
        member = selectors.member_get(request.user, pk)
        experiment, ensemble = member.experiment, member.ensemble
    elif ensemble_pk is not None:
        ensemble = selectors.ensemble_get(request.user, ensemble_pk)
        experiment = ensemble.experiment
    else:
        experiment = selectors.experiment_get(request.user, experiment_pk)
    conflict = None
    if request.method == "POST":
        form = MemberForm(request.POST)
        if form.is_valid():
            try:
                member = services.member_save(
                    experiment=experiment,
                    ensemble=ensemble,
                    member=member,
                    spec=form.member_spec(),
                    expected_version=form.expected_version,
                )
            except services.EditConflict as error:
                member = error.current
                form.carry_version(member.version)
                url = reverse("ensembles:member_edit", args=[member.pk])
                conflict = _conflict(form, error, MemberForm.initial_for(member), url)
            except ValidationError as error:
                form.apply_errors(error)
            else:
                messages.success(request, f"'{member.name}' saved.")
                if ensemble:
                    return redirect("ensembles:ensemble_edit", pk=ensemble.pk)
                return redirect("ensembles:experiment_detail", pk=experiment.pk)
    else:
        form = MemberForm(initial=MemberForm.initial_for(member) if member else {"key_prefixing": False})
    return render(
        request,
        "ensembles/member_form.html",
        {
            "form": form,
            "member": member,
            "ensemble": ensemble,
            "experiment": experiment,
            "conflict": conflict,
            "attached_files": selectors.attached_files(member) if member else [],
        },
    )


@require_http_methods(["GET", "POST"])
def member_delete(request, pk):
    member = selectors.member_get(request.user, pk)
    if request.method == "POST":
        services.member_delete(member=member)
        messages.success(request, f"'{member.name}' deleted.")
        if member.ensemble_id:
            return redirect("ensembles:ensemble_edit", pk=member.ensemble_id)
        return redirect("ensembles:experiment_detail", pk=member.experiment_id)
    cancel_url = reverse("ensembles:member_edit", args=[member.pk])
    return render(request, "ensembles/confirm_delete.html", {"object": member, "kind": "model", "cancel_url": cancel_url})


# --- runs ----------------------------------------------------------------------


@require_POST
def run_launch(request, pk):
    experiment = selectors.experiment_get(request.user, pk)
    form = _launch_form(experiment, request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(message for errors in form.errors.values() for message in errors))
        return redirect("ensembles:experiment_detail", pk=experiment.pk)
    try:
        run = services.run_launch(user=request.user, experiment=experiment, concurrency=form.cleaned_data["concurrency"],
                                  entities=form.cleaned_data["entities"])
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("ensembles:experiment_detail", pk=experiment.pk)
    if run.waiting_for_queue:
        messages.warning(request, services.QUEUE_UNREACHABLE)
    return redirect("ensembles:run_detail", pk=run.pk)


def _members_page(request, run):
    return selectors.run_members_page(
        run,
        status=request.GET.get("status", ""),
        q=request.GET.get("q", ""),
        param=request.GET.get("param", ""),  # old links: "param equals value"
        value=request.GET.get("value", ""),
        sort=request.GET.get("sort", "position"),
        page=_int_from(request.GET, "page", 1),
        page_size=_int_from(request.GET, "size", 100),
    )


@require_GET
def run_detail(request, pk):
    """The run page. Its counts and its rows must tell the same story on first render:

    the rows are read first; when that page is the whole run (unfiltered, one page),
    the counts are taken from those very rows, so they cannot disagree. Otherwise the
    counts are read after the rows, so they are never behind them (statuses only move
    forward); anything that changed after the mark, taken before both reads, is sent
    again when the socket connects.
    """
    run = selectors.run_get(request.user, pk)
    mark = realtime.run_mark()  # before reading: what changes meanwhile comes on connect
    members = _members_page(request, run)
    whole_run = members.pages == 1 and not members.filtered and not members.error
    context = {
        "mark": mark,
        **selectors.run_summary(run.pk, members=members.rows if whole_run else None),
        "members": members,
        "statuses": MemberStatus.values,
        "siblings": selectors.run_siblings(request.user, run),
    }
    return render(request, "ensembles/run_detail.html", context)


@require_GET
def run_members(request, pk):
    """The member table (filters, sort and page from the query). A filter that cannot be
    used is answered with its error alone, swapped in beside the field (422): the table
    keeps showing what the last good filter found."""
    run = selectors.run_get(request.user, pk)
    members = _members_page(request, run)
    if members.error:
        response = render(request, "ensembles/partials/member_filter_error.html", {"members": members}, status=422)
        response["HX-Retarget"] = "#member-filter-error"
        response["HX-Reswap"] = "outerHTML"
        return response
    return render(request, "ensembles/partials/run_members.html", {"run": run, "members": members, "fragment": True})


@require_GET
def run_compare(request, pk):
    """Two runs of one experiment side by side; the other run is ``?other=<pk>`` (the run
    page's menu), another user's is a 404, one of another experiment a 400."""
    run = selectors.run_get(request.user, pk)
    context = {"run": run, "siblings": selectors.run_siblings(request.user, run)}
    if "other" not in request.GET:
        return render(request, "ensembles/run_compare.html", context)
    other_pk = _int_from(request.GET, "other", 0)
    if other_pk <= 0 or other_pk == run.pk:
        context["error"] = "Pick another run of this experiment to compare with."
        return render(request, "ensembles/run_compare.html", context, status=400)
    other = selectors.run_get(request.user, other_pk)
    if other.experiment_id != run.experiment_id:
        context["error"] = (
            f"Run {other.number} belongs to experiment '{other.experiment.name}', not '{run.experiment.name}': "
            "only runs of one experiment can be compared."
        )
        return render(request, "ensembles/run_compare.html", context, status=400)
    context.update(other=other, comparison=selectors.run_compare(run, other, page=_int_from(request.GET, "page", 1)))
    return render(request, "ensembles/run_compare.html", context)


def _queued(message: str) -> HttpResponse:
    """The answer to an action button: the task is queued, the live view shows its effect."""
    return HttpResponse(format_html('<p class="message" role="status">{}</p>', message))


def _refused(error: ValidationError) -> HttpResponse:
    """The answer to an action button the service refused: why, and nothing was queued (422 is swapped in)."""
    return HttpResponse(format_html('<p class="form-error" role="alert">{}</p>', " ".join(error.messages)), status=422)


@require_POST
def run_cancel(request, pk):
    run = selectors.run_get(request.user, pk)
    return _queued(services.run_stop(run=run))


@require_POST
def run_rerun(request, pk):
    run = selectors.run_get(request.user, pk)
    try:
        return _queued(services.run_rerun(run=run))
    except ValidationError as error:
        return _refused(error)


@require_http_methods(["GET", "POST"])
def run_delete(request, pk):
    run = selectors.run_get(request.user, pk)
    experiment_url = reverse("ensembles:experiment_detail", args=[run.experiment_id])
    if request.method == "POST":
        try:
            messages.success(request, services.run_delete(run=run))
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
            return redirect("ensembles:run_detail", pk=run.pk)
        return redirect(experiment_url)
    cancel_url = reverse("ensembles:run_detail", args=[run.pk])
    return render(request, "ensembles/confirm_delete.html", {"object": run, "kind": "run", "cancel_url": cancel_url})


@require_POST
def member_run_cancel(request, pk):
    member = selectors.member_run_get(request.user, pk)
    try:
        return _queued(services.member_stop(member=member))
    except ValidationError as error:
        return _refused(error)


@require_GET
def member_run_detail(request, pk):
    member = selectors.member_run_get(request.user, pk)
    return render(
        request,
        "ensembles/member_run_detail.html",
        {
            "member": member,
            "run": member.run,
            "command": shlex.join(member.argv),
            "files": selectors.member_files(member, _int_from(request.GET, "files_page", 1)),
            "attempts": selectors.member_attempts(member),
            "status_live": member.status not in TERMINAL_STATUSES,
        },
    )


@require_GET
def member_run_status(request, pk):
    """The member's status badge: the member page polls it until the status is terminal
    (the terminal badge carries no trigger, so the polling stops by itself)."""
    member = selectors.member_run_get(request.user, pk)
    context = {"member": member, "status_live": member.status not in TERMINAL_STATUSES}
    return render(request, "ensembles/partials/member_status.html", context)


@require_GET
def member_run_files(request, pk):
    """One page of the member directory's listing (htmx swaps it into the member page)."""
    member = selectors.member_run_get(request.user, pk)
    files = selectors.member_files(member, _int_from(request.GET, "page", 1))
    return render(request, "ensembles/partials/member_files.html", {"member": member, "files": files})


@require_GET
def member_run_file(request, pk, name):
    member = selectors.member_run_get(request.user, pk)
    descriptor = selectors.member_file_open(member, name)
    if descriptor is None:
        raise Http404("No such file in the member directory.")
    return FileResponse(os.fdopen(descriptor, "rb"), as_attachment=True, filename=name)


@require_GET
def run_export(request, pk, fmt):
    """The run's members as CSV or JSON, streamed: rows are read EXPORT_CHUNK at a time
    and sent EXPORT_ROWS_PER_CHUNK to a piece, never the whole run in memory. Filtered
    and sorted as the member table (``status``, ``q``, ``sort``) when given."""
    run = selectors.run_get(request.user, pk)
    try:
        members = selectors.run_export_members(
            run, status=request.GET.get("status", ""), q=request.GET.get("q", ""), sort=request.GET.get("sort", "position")
        )
    except FilterError as error:
        return HttpResponse(f"The filter cannot be used: {error}", status=400, content_type="text/plain; charset=utf-8")
    filename = f"{run.experiment.name}-run{run.number}.{fmt}"
    if fmt == "json":
        pieces, content_type = _export_json(selectors.run_export_rows(run, members)), "application/json"
    else:
        pieces, content_type = _export_csv(run, members), "text/csv"
    if isinstance(request, ASGIRequest):  # a sync iterator would be read to the end before the first byte goes
        pieces = _in_thread(pieces)
    response = StreamingHttpResponse(pieces, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


EXPORT_ROWS_PER_CHUNK = 500


class _Line:
    """A file that hands back what is written to it (csv.writer writes one row)."""

    def write(self, value):
        return value


def _export_csv(run, members):
    columns = selectors.run_export_columns(run)
    writer = csv.writer(_Line())
    yield writer.writerow(columns)
    for rows in _batched(selectors.run_export_rows(run, members), EXPORT_ROWS_PER_CHUNK):
        yield "".join(writer.writerow([_flat(row, column) for column in columns]) for row in rows)


def _export_json(rows):
    """The bytes JsonResponse(rows, safe=False, json_dumps_params={"indent": 1}) would send, a chunk at a time."""
    first = True
    for batch in _batched(rows, EXPORT_ROWS_PER_CHUNK):
        parts = []
        for row in batch:
            text = json.dumps(row, cls=DjangoJSONEncoder, indent=1)
            parts.append(("[\n" if first else ",\n") + "\n".join(" " + line for line in text.split("\n")))
            first = False
        yield "".join(parts)
    yield "[]" if first else "\n]"


def _batched(items, size):
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch


async def _in_thread(pieces):
    """A sync iterator read under ASGI one piece at a time, in the request's thread (its database connection)."""
    done = object()
    pieces = iter(pieces)
    while (piece := await sync_to_async(next, thread_sensitive=True)(pieces, done)) is not done:
        yield piece


def _flat(row: dict, column: str):
    section, _, key = column.partition(".")
    if key and section in ("params", "results"):
        return (row.get(section) or {}).get(key, "")
    return "" if row.get(column) is None else row.get(column)


@require_POST
def demo_create(request):
    experiment = services.demo_create(user=request.user)
    messages.success(request, f"Created '{experiment.name}': 12 members of a heat simulation. Press Launch to run them.")
    return redirect("ensembles:experiment_detail", pk=experiment.pk)


@require_GET
def run_plots(request, pk):
    """The run's plots (fetched after the page loads, and again as members change)."""
    run = selectors.run_get(request.user, pk)
    data = selectors.run_plot_data(run)
    fields = data["params"] + [f for f in data["results"] if f not in data["params"]]
    # Axes the user picked stay; untouched ones follow the data (results appear as members end).
    chosen = request.GET.get("axes") == "chosen"
    x = request.GET.get("x") if chosen and request.GET.get("x") in fields else (data["params"] or fields or [""])[0]
    y = request.GET.get("y") if chosen and request.GET.get("y") in fields else next((f for f in data["results"] + fields if f != x), "")
    figures = {
        "status": plots.status_over_time(data["events"], data["start"]),
        "runtime": plots.runtime_histogram(data["members"]),
        "timeline": plots.timeline(data["members"], data["start"]),
    }
    if x and y and len(fields) >= 2:
        figures["scatter"] = plots.parameter_vs_result(data["members"], x, y)
    if len(fields) >= 2:
        figures["parallel"] = plots.parallel_coordinates(data["members"], fields)
    return render(
        request,
        "ensembles/partials/run_plots.html",
        {
            "run": run,
            "figures": figures,
            "fields": fields,
            "x": x,
            "y": y,
            "axes": "chosen" if chosen else "default",
            "capped": len(data["members"]) >= selectors.MAX_PLOTTED_MEMBERS,
        },
    )
