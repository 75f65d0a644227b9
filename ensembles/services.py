"""Writes. Every change of state goes through a function here, named
``<entity>_<action>(*, ...)``. Callers have already fetched the objects through
selectors, which only return what the user may see."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import socket
import sys
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from functools import partial
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.core.files import File
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnreachable

from launchers.base import JobSpec, JobState, JobStatus, LauncherError

from . import launching, realtime, specs
from .expansion import format_count, text_overrides
from .generation import RECORD_FILE_NAME, FileRefused, Generator, check_configurable, landing_names, resolve_source
from .launching import JOB_FIELDS, STATE_TO_STATUS, job_spec, launcher_for
from .models import (
    STATUS_RANK,
    Cluster,
    Launcher,
    SUBMISSION_OVER,
    TERMINAL_STATUSES,
    AttachedFile,
    Ensemble,
    Experiment,
    FileAction,
    Member,
    MemberKind,
    MemberRun,
    MemberStatus,
    Run,
    StatusEvent,
    Strategy,
    SubmitState,
    UnixAccount,
)

log = logging.getLogger("flotilla.services")


def _save(instance, *, duplicate_message: str, expected_version: int | None = None, fields: list[str] | None = None):
    """Validate, then save; a taken name (checked first, or lost in a race) is a
    message on the name, any other integrity error is a bug and propagates. An
    ensemble or member takes its next version in the same transaction (version_check)."""
    instance.full_clean(validate_constraints=False)
    taken = type(instance).objects.exclude(pk=instance.pk).filter(**_unique_lookup(instance))
    if taken.exists():
        raise ValidationError({"name": duplicate_message})
    try:
        with transaction.atomic():
            if isinstance(instance, VERSIONED) and instance.pk is not None:
                instance.version = version_check(instance=instance, expected_version=expected_version).version + 1
            instance.save(update_fields=fields)
    except IntegrityError:
        if taken.exists():
            raise ValidationError({"name": duplicate_message}) from None
        raise
    return instance


VERSIONED = (Ensemble, Member)


class EditConflict(ValidationError):
    """A save from a form built on an older version of an ensemble or member: another tab
    or session saved it since. Nothing is saved; ``current`` is the row as it is now and
    ``changed`` names what the save would have changed in it (run and batch settings key
    by key, as the forms name them)."""

    def __init__(self, current, changed: list[str]):
        self.current, self.changed = current, changed
        kind = "ensemble" if isinstance(current, Ensemble) else "member" if current.ensemble_id else "model"
        # Members have no `updated` column: their message cannot say when.
        when = f" at {timezone.localtime(current.updated):%H:%M}" if isinstance(current, Ensemble) else ""
        self.headline = f"This {kind} was changed in another tab or by another session{when}; your changes are not saved."
        super().__init__({NON_FIELD_ERRORS: f"{self.headline} Review them against the current version below and save again."})


def _differences(instance, current) -> list[str]:
    changed = []
    for field in type(instance)._meta.concrete_fields:
        if not field.editable or field.primary_key or field.name == "version":
            continue
        mine, theirs = field.value_from_object(instance), field.value_from_object(current)
        if field.name in ("run_settings", "batch_settings"):
            mine, theirs = mine or {}, theirs or {}
            changed.extend(key for key in {**mine, **theirs} if mine.get(key) != theirs.get(key))
        elif mine != theirs:
            changed.append(field.name)
    return changed


def version_check(*, instance, expected_version: int | None):
    """Lock the row of the ensemble or member being saved until the transaction ends, and
    return it as it is now. A save from an older version (``expected_version``, the one
    its form was built from) is an EditConflict, unless it changes nothing in the newer
    one (a double submit); None skips the check (saves not made from a form)."""
    current = type(instance).objects.select_for_update().filter(pk=instance.pk).first()
    if current is None:
        raise ValidationError({NON_FIELD_ERRORS: f"'{instance.name}' was deleted in another tab or by another session."})
    if expected_version is not None and current.version != expected_version:
        changed = _differences(instance, current)
        if changed:
            raise EditConflict(current, changed)
    return current


def _unique_lookup(instance) -> dict:
    parent = "owner" if isinstance(instance, Experiment) else "experiment"
    return {parent: getattr(instance, parent), "name": instance.name}


def cluster_read_limits(*, cluster: Cluster) -> Cluster:
    """Read the cluster's site limits from its scheduler (LauncherError if it cannot)."""
    limits = launching.read_site_limits(cluster)
    cluster.max_array_size, cluster.max_job_count = limits["MaxArraySize"], limits["MaxJobCount"]
    cluster.limits_read_at = timezone.now()
    cluster.save(update_fields=["max_array_size", "max_job_count", "limits_read_at"])
    return cluster


def experiment_create(*, owner, name: str, description: str = "", cluster: Cluster | None = None) -> Experiment:
    experiment = Experiment(owner=owner, name=name, description=description, cluster=cluster)
    return _save(experiment, duplicate_message=f"You already have an experiment named '{name}'.")


def experiment_update(*, experiment: Experiment, name: str, description: str, cluster: Cluster | None) -> Experiment:
    experiment.name, experiment.description, experiment.cluster = name, description, cluster
    # Only what the form edits: the run counter moves under launches meanwhile.
    return _save(experiment, duplicate_message=f"You already have an experiment named '{name}'.",
                 fields=["name", "description", "cluster", "updated"])


def experiment_delete(*, experiment: Experiment) -> None:
    """Refused while a run is active: its runner would go on starting members that no
    page could show or stop any more."""
    with transaction.atomic():
        Experiment.objects.select_for_update().get(pk=experiment.pk)  # no launch slips in meanwhile
        active = experiment.runs.filter(finished__isnull=True).order_by("number").first()
        if active:
            raise ValidationError(f"Run {active.number} of this experiment is still active: stop it first, then delete.")
        runs = list(experiment.runs.select_related("experiment__owner"))
        with _trashed(runs):  # the names are free at once; the trash is emptied in the background
            experiment.delete()
    for run_as in sorted({run.run_as for run in runs}):
        _enqueue("trash_empty", run_as, experiment.owner_id)


def ensemble_save(
    *, experiment: Experiment, spec: dict, ensemble: Ensemble | None = None, expected_version: int | None = None
) -> Ensemble:
    """Create (``ensemble`` None) or update an ensemble from a spec dict.

    ``spec`` keys: name, description, params, perm_strategy, n_models, seed,
    replicas, params_as_args, run_settings, batch_settings, key_prefixing, tag.
    Run and batch settings are normalised; a random ensemble without a seed
    gets one, so that the preview and every launch agree. ``expected_version``:
    the version the edit form was built from (EditConflict if it is out of date).
    """
    ensemble = ensemble or Ensemble(experiment=experiment)
    for field, value in spec.items():
        setattr(ensemble, field, value)
    try:
        ensemble.run_settings = specs.clean_run_settings(ensemble.run_settings)
        ensemble.batch_settings = specs.clean_batch_settings(ensemble.batch_settings)
    except specs.SpecError as error:
        raise ValidationError({error.field: error.message}) from None
    if ensemble.perm_strategy == Strategy.RANDOM and ensemble.seed is None:
        ensemble.seed = random.randrange(2**31)
    return _save(
        ensemble,
        duplicate_message=f"This experiment already has an ensemble named '{ensemble.name}'.",
        expected_version=expected_version,
    )


def ensemble_delete(*, ensemble: Ensemble) -> None:
    ensemble.delete()


def member_save(
    *,
    experiment: Experiment,
    spec: dict,
    ensemble: Ensemble | None = None,
    member: Member | None = None,
    expected_version: int | None = None,
) -> Member:
    """Create or update a hand-made member (in ``ensemble``) or a standalone model
    (``expected_version`` as for ensemble_save)."""
    member = member or Member(experiment=experiment, ensemble=ensemble)
    for field, value in spec.items():
        setattr(member, field, value)
    try:
        member.run_settings = specs.clean_run_settings(member.run_settings)
        member.batch_settings = specs.clean_batch_settings(member.batch_settings)
    except specs.SpecError as error:
        raise ValidationError({error.field: error.message}) from None
    return _save(
        member, duplicate_message=f"This experiment already has a model named '{member.name}'.", expected_version=expected_version
    )


def member_delete(*, member: Member) -> None:
    member.delete()


def _landing(path: Path, action: str, field: str) -> list[str]:
    try:
        return landing_names(path, action)
    except OSError as error:
        raise ValidationError({field: f"{path.name} cannot be read: {error.strerror or error}."}) from None


def _described(attached: AttachedFile) -> str:
    source = f"the uploaded {attached.name}" if attached.uploaded else attached.path
    if attached.is_dir and attached.action != FileAction.SYMLINK:
        return f"{attached.action} of the contents of {source}/"
    return f"{attached.action} of {source}"


def _already_landing(owner: Ensemble | Member) -> tuple[dict[str, str], list[str]]:
    """What the folders that get ``owner``'s files already receive: {name: what puts it
    there}, and the names of the members whose outputs land there too. An ensemble's
    files go to its hand-added members as well, which also get their own; a hand-added
    member gets its ensemble's."""
    if isinstance(owner, Ensemble):
        groups = [(owner.files.all(), "")]
        members = list(owner.members.prefetch_related("files"))
        groups += [(m.files.all(), f", attached to the member {m.name}, which gets the ensemble's files too") for m in members]
        outputs = [m.name for m in members]
    else:
        groups = [(owner.files.all(), "")]
        if owner.ensemble_id:
            groups.append((owner.ensemble.files.all(), f", attached to its ensemble {owner.ensemble.name}"))
        outputs = [owner.name]
    landed: dict[str, str] = {}
    for files, where in groups:
        for attached in files:
            try:
                names = landing_names(Path(attached.path), attached.action)
            except OSError:
                continue  # gone or unreadable since it was attached: the launch says so
            for name in names:
                landed.setdefault(name, _described(attached) + where)
    return landed, outputs


def _refuse_clashes(owner: Ensemble | Member, action: str, path: Path, field: str) -> None:
    """Refuse a source that would put a name in a member folder that something else
    (another attached file, whatever its action, Flotilla's record, a member's output)
    already takes there. A folder that lands its contents is checked by its top-level
    names as they are now; what is added to an attached folder later is not checked."""
    names = _landing(path, action, field)
    contents = action != FileAction.SYMLINK and path.is_dir()
    what = f"The contents of {path.name}/ clash with what each member folder already gets: " if contents else ""
    if RECORD_FILE_NAME in names:
        raise ValidationError({field: f"{what}'{RECORD_FILE_NAME}' is written by Flotilla for every member and cannot be attached."})
    landed, outputs = _already_landing(owner)
    generated_outputs = re.compile(rf"{re.escape(owner.name)}_[0-9]+\.(out|err)") if isinstance(owner, Ensemble) else None
    for name in sorted(names):
        stem, _, suffix = name.rpartition(".")
        if suffix in ("out", "err") and (stem in outputs or (generated_outputs and generated_outputs.fullmatch(name))):
            raise ValidationError({field: f"{what}{name} is the name of the member {stem}'s output: rename it."})
    clashes = [f"{name} is already attached ({landed[name]})" for name in sorted(names) if name in landed]
    if clashes:
        more = f"; and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        detach = "Detach it first" if len(clashes) == 1 else "Detach them first"
        raise ValidationError({field: f"{what}{'; '.join(clashes[:3])}{more}. {detach}, or rename one of them."})


def _attach(owner: Ensemble | Member, action: str, path: Path, *, uploaded: bool) -> AttachedFile:
    if action not in FileAction.values:
        raise ValidationError({"action": f"Unknown file action {action!r}."})
    field = "upload" if uploaded else "path"
    if action == FileAction.CONFIGURE:
        try:
            check_configurable(path)
        except FileRefused as error:
            raise ValidationError({field: str(error)}) from None
    is_dir = path.is_dir()
    attached = AttachedFile(
        action=action,
        path=str(path),
        uploaded=uploaded,
        is_dir=is_dir,
        size=0 if is_dir else path.stat().st_size,
        **({"ensemble": owner} if isinstance(owner, Ensemble) else {"member": owner}),
    )
    attached.full_clean()
    with transaction.atomic():
        # Attaches to one ensemble (and its hand-added members) are checked one at a time.
        lock = owner if isinstance(owner, Ensemble) or not owner.ensemble_id else owner.ensemble
        type(lock).objects.select_for_update().only("pk").get(pk=lock.pk)
        _refuse_clashes(owner, action, path, field)
        attached.save()
    return attached


def file_attach_path(*, owner: Ensemble | Member, path: str, action: str) -> AttachedFile:
    """Attach a server file or folder; it must lie inside FLOTILLA_FILE_ROOTS."""
    try:
        source = resolve_source(path, settings.FILE_ROOTS)
    except FileRefused as error:
        raise ValidationError({"path": str(error)}) from None
    return _attach(owner, action, source, uploaded=False)


def file_attach_upload(*, owner: Ensemble | Member, uploaded_file, action: str, user) -> AttachedFile:
    """Store an uploaded file under the uploads folder and attach it."""
    name = Path(uploaded_file.name or "").name
    if not name or name.startswith(".") or len(name.encode()) > 255:
        raise ValidationError({"upload": "The file needs a name that does not start with a dot, of at most 255 bytes."})
    if uploaded_file.size > settings.MAX_UPLOAD_BYTES:
        raise ValidationError({"upload": f"The file is larger than {settings.MAX_UPLOAD_BYTES:,} bytes."})
    folder = settings.UPLOAD_DIR / str(user.pk) / uuid.uuid4().hex
    try:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        with open(target, "wb") as out:
            for chunk in uploaded_file.chunks():
                out.write(chunk)
        return _attach(owner, action, target, uploaded=True)
    except OSError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise ValidationError({"upload": f"The file could not be stored: {error.strerror}."}) from None
    except ValidationError:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def file_detach(*, attached: AttachedFile) -> None:
    """Detach a file; an upload's own folder is removed once the detach commits, so that a
    caller whose transaction rolls back (its answer failed) loses nothing."""
    if attached.uploaded:
        # Uploads live in UPLOAD_DIR/<user>/<uuid>/<name>: remove exactly that <uuid> folder.
        folder = Path(attached.path).resolve().parent
        uploads = Path(settings.UPLOAD_DIR).resolve()
        if folder.parent.parent == uploads:
            transaction.on_commit(partial(shutil.rmtree, folder, ignore_errors=True))
    attached.delete()


# --- runs ----------------------------------------------------------------------


def owner_folder(user) -> str:
    """The owner's folder under FLOTILLA_DATA_DIR (a username may legally be '.' or '..')."""
    return user.get_username() if user.get_username() not in {".", ".."} else f"user-{user.pk}"


def _files_of(owner) -> dict:
    """{"copy": [...], "symlink": [...], "configure": [...]}: Generator's keyword arguments."""
    files = {action: [] for action in FileAction.values}
    for attached in owner.files.all():
        files[attached.action].append(attached.path)
    return files


def _resolve_cluster(experiment: Experiment) -> Cluster | None:
    """The cluster a launch goes to; None for this machine's processes. "Detect at launch"
    takes the first scheduler of SmartSim's order (PBS, LSF, Slurm) whose command is on
    PATH and that has a cluster here, else local processes."""
    cluster = experiment.cluster
    if cluster is None:
        for scheduler, command in launching.DETECTION_ORDER:
            if shutil.which(command):
                cluster = Cluster.objects.filter(scheduler=scheduler).order_by("name").first()
                if cluster:
                    break
    if cluster is not None and cluster.scheduler not in launching.AVAILABLE_SCHEDULERS:
        raise ValidationError(f"The cluster {cluster.name} uses {cluster.get_scheduler_display()}, which Flotilla cannot drive yet.")
    return cluster


def _run_as(user) -> str:
    """The Unix account the user's members run as ("" for the server's own)."""
    if settings.RUN_AS == "server":
        return ""
    account = UnixAccount.objects.filter(user=user).values_list("name", flat=True).first()
    if account is None:
        raise ValidationError("You have no Unix account to run members as (this Flotilla runs every member as its "
                              "owner's account): ask an administrator to map one to your user in the admin.")
    try:
        launching.account_root(account)
    except KeyError:
        raise ValidationError(f"Your Unix account {account!r} does not exist on this machine: ask an administrator.") from None
    return account


def _names(names) -> str:
    names = sorted(names)
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]


def _refuse_overlap(experiment: Experiment, entities, *, besides: int | None = None) -> None:
    """Runs active at once in one experiment share no ensemble or model (SmartSim starts
    entities one by one): refuse ``entities`` while another active run holds one of them."""
    active = experiment.runs.filter(finished__isnull=True).exclude(pk=besides).order_by("number").only("number", "entities")
    for other in active:
        shared = set(other.entities) & set(entities)
        if shared:
            raise ValidationError(f"Run {other.number} is still active with {_names(shared)}: stop it or wait for it to end, "
                                  "or launch other ensembles and models.")


def home_of(run_as: str, user) -> Path:
    """The folder that holds a user's experiments (and, with run_as, their runs' journals)."""
    return launching.account_root(run_as) if run_as else settings.DATA_DIR / owner_folder(user)


def run_launch(*, user, experiment: Experiment, concurrency: int | None = None, entities: list[str] | None = None) -> Run:
    """Create a run with one MemberRun per member of ``entities`` (names of ensembles and
    models; None: all of them), in bulk, and submit it after commit.

    Refuses (ValidationError) nothing to launch, an empty ensemble, too many members, or
    an entity that another active run of the experiment holds.
    """
    if experiment.owner_id != user.pk:
        raise PermissionDenied
    cluster = _resolve_cluster(experiment)
    launcher = cluster.scheduler if cluster else Launcher.LOCAL
    run_as = _run_as(user)
    if run_as and launcher != Launcher.LOCAL:
        raise ValidationError(f"Members on the cluster {cluster.name} cannot run as their owner's Unix account yet: "
                              "this Flotilla runs every member as its owner (FLOTILLA_RUN_AS=user).")
    ensembles = list(experiment.ensembles.prefetch_related("members__files", "files"))
    models = list(experiment.members.filter(ensemble__isnull=True).prefetch_related("files"))
    if not ensembles and not models:
        raise ValidationError("Nothing to launch: add an ensemble or a model first.")
    if entities is not None:
        chosen = set(entities)
        unknown = chosen - {e.name for e in ensembles} - {m.name for m in models}
        if unknown:
            raise ValidationError(f"This experiment has no ensemble or model named {_names(unknown)}.")
        ensembles = [e for e in ensembles if e.name in chosen]
        models = [m for m in models if m.name in chosen]
        if not ensembles and not models:
            raise ValidationError("Choose at least one ensemble or model to launch.")
    spaces = {}
    total = 0
    for ensemble in ensembles:
        try:
            spaces[ensemble.pk] = space = ensemble.space()
        except ValidationError as error:
            raise ValidationError(f"Ensemble '{ensemble.name}' is invalid: {' '.join(error.messages)}") from None
        size = space.size + len(ensemble.members.all())
        if size == 0:
            detail = " ".join(space.warnings)
            raise ValidationError(f"Ensemble '{ensemble.name}' has no members, so there is nothing to launch. {detail}".strip())
        total += size
    total += len(models)
    if total > settings.MAX_MEMBERS_PER_RUN:
        raise ValidationError(
            f"This launch would create {format_count(total)} members; at most {settings.MAX_MEMBERS_PER_RUN:,} are allowed in one run "
            "(FLOTILLA_MAX_MEMBERS_PER_RUN). Sample fewer with the random strategy."
        )
    home = home_of(run_as, user)
    names = [e.name for e in ensembles] + [m.name for m in models]
    with transaction.atomic():
        # One launch at a time per experiment: the overlap check and the run's number hold.
        number = Experiment.objects.select_for_update().values_list("run_count", flat=True).get(pk=experiment.pk) + 1
        _refuse_overlap(experiment, names)
        Experiment.objects.filter(pk=experiment.pk).update(run_count=number)
        generation = {e.name: {**_files_of(e), "tag": e.tag} for e in ensembles}
        generation.update({m.name: {**_files_of(m), "tag": ";"} for m in models})
        for ensemble in ensembles:
            for member in ensemble.members.all():  # the ensemble's files, then its own
                own, shared = _files_of(member), generation[ensemble.name]
                generation[member.name] = {key: shared[key] + own[key] for key in own} | {"tag": ensemble.tag}
        # Each run has a folder of its own: a later run never touches an earlier one's files
        # (one of an experiment renamed since may hold this name).
        folder = home / experiment.name / "runs" / str(number)
        if Run.objects.filter(folder=str(folder)).exists():
            folder = folder.with_name(f"{number}-{uuid.uuid4().hex[:6]}")
        run = Run.objects.create(
            experiment=experiment,
            number=number,
            launcher=launcher,
            cluster=cluster,
            batch={e.name: e.batch_settings for e in ensembles if e.batch_settings}
            | {m.name: m.batch_settings for e in ensembles for m in e.members.all() if m.batch_settings}
            | {m.name: m.batch_settings for m in models if m.batch_settings},
            entities=names,
            folder=str(folder),
            run_as=run_as,
            concurrency=concurrency,
            generation=generation,
            work_dir=str((home / ".runs" if run_as else settings.DATA_DIR / "runs") / uuid.uuid4().hex),
        )
        _insert_many(MemberRun, list(_member_rows(folder, ensembles, spaces, models)), run=run)
        _enqueue_submit(run)
    return run  # run.waiting_for_queue: the task queue could not take it (see QUEUE_UNREACHABLE)


def _member_rows(root, ensembles, spaces, models):
    """The run's members as MemberRun field values (by attname), in order."""
    position = 0

    def row(kind, entity, name, params, settings_, params_as_args, key_prefixing, cwd, ensemble=None):
        nonlocal position
        position += 1
        return {
            "ensemble_id": ensemble.pk if ensemble else None,
            "kind": kind,
            "entity": entity,
            "name": name,
            "position": position,
            "params": params,
            "param_names": list(params),
            "params_text": text_overrides(params),  # the values as typed, for configured files
            "argv": specs.member_argv(settings_, params, params_as_args),
            "env": specs.member_env(settings_, name, key_prefixing=key_prefixing),
            "cwd": str(cwd),
        }

    for ensemble in ensembles:
        for index, params in enumerate(spaces[ensemble.pk]):
            name = ensemble.member_name(index)
            yield row(MemberKind.GENERATED, ensemble.name, name, params, ensemble.run_settings, ensemble.params_as_args,
                      ensemble.key_prefixing, root / ensemble.name / name, ensemble)
        for member in ensemble.members.all():
            yield row(MemberKind.ADDED, ensemble.name, member.name, member.param_dict(), member.run_settings, member.params_as_args,
                      member.key_prefixing, root / ensemble.name / member.name, ensemble)
    for model in models:
        yield row(MemberKind.MODEL, model.name, model.name, model.param_dict(), model.run_settings, model.params_as_args,
                  model.key_prefixing, root / model.name)


QUEUE_UNREACHABLE = "The task queue is not reachable; the run will start as soon as it is back."


def _enqueue(task_name: str, *args, on_unreachable=None) -> None:
    """Send a task once the current transaction commits (at once outside one).

    A broker that is down or hangs fails the send within ~2 s (CELERY_TASK_PUBLISH_RETRY_POLICY,
    CELERY_BROKER_TRANSPORT_OPTIONS) without failing the caller, whose work is committed
    by then: the failure is logged and ``on_unreachable()`` is called."""
    transaction.on_commit(partial(_send, task_name, args, on_unreachable))


def _send(task_name: str, args: tuple, on_unreachable) -> None:
    from . import tasks

    try:
        getattr(tasks, task_name).delay(*args)
    except BrokerUnreachable as error:
        log.warning("could not send %s%r, the task queue is not reachable: %s", task_name, args, error)
        if on_unreachable:
            on_unreachable()


def _enqueue_and_tell(task_name: str, arg, *, sent: str, unreachable: str) -> str:
    """Enqueue a user's action and return what to tell them. Called outside a transaction
    (the action views), so the send happens here and its failure is known at once."""
    failed = []
    _enqueue(task_name, arg, on_unreachable=lambda: failed.append(True))
    return unreachable if failed else sent


def _enqueue_submit(run: Run) -> bool:
    """Send run_submit for a pending run after commit (see _enqueue_recorded)."""
    return _enqueue_recorded(run, "run_submit", submit_state=SubmitState.PENDING)


def _enqueue_recorded(run: Run, task_name: str, **still_wanted) -> bool:
    """Send a task for ``run`` after commit, and record when in run.enqueued_at.

    The record is a conditional UPDATE on the enqueued_at ``run`` holds (and on
    ``still_wanted``, the state that calls for the task), so that of two callers that saw
    the same state (two monitors repairing) one sends. If the broker cannot take the task,
    enqueued_at goes back to None: the run page says why the run waits, and the monitor's
    next repair pass sends it again (runs_reconcile). Returns whether this call sent (or
    will send, on commit) the task."""
    sent_at = timezone.now()
    if not Run.objects.filter(pk=run.pk, enqueued_at=run.enqueued_at, **still_wanted).update(enqueued_at=sent_at):
        return False
    run.enqueued_at = sent_at

    def unreachable():
        Run.objects.filter(pk=run.pk, enqueued_at=sent_at, **still_wanted).update(enqueued_at=None)
        run.enqueued_at = None

    _enqueue(task_name, run.pk, on_unreachable=unreachable)
    return True


def _record_events(members: list[MemberRun], status: str, at=None) -> None:
    at = at or timezone.now()
    _insert_many(StatusEvent, [{"run_id": m.run_id, "member_id": m.pk, "status": status, "at": at} for m in members])


def run_submit(*, run_id: int) -> bool:
    """Hand the run's new members to the launcher (which generates each member's
    directory just before starting it).

    Claimed with a conditional UPDATE, so a task delivered twice submits once;
    a job already started by a runner is never generated or submitted again.
    Returns at once: nothing here waits for a simulation.
    """
    claimed = Run.objects.filter(pk=run_id, submit_state=SubmitState.PENDING).update(
        submit_state=SubmitState.SUBMITTING, claimed_at=timezone.now(), claimed_by=f"{socket.gethostname()}:{os.getpid()}"
    )
    if not claimed:
        return False
    run = Run.objects.get(pk=run_id)
    try:
        launcher = launcher_for(run)
        members = list(run.members.filter(latest=True, status=MemberStatus.NEW).order_by("position").only(*JOB_FIELDS))
        _submit_members(run, launcher, members)
    except LauncherError as error:
        Run.objects.filter(pk=run_id).update(submit_state=SubmitState.FAILED, submit_error=str(error))
        _fail_members(run.members.filter(latest=True, status=MemberStatus.NEW), str(error))
        return False
    Run.objects.filter(pk=run_id, submit_state=SubmitState.SUBMITTING).update(submit_state=SubmitState.SUBMITTED)
    return True


def _fail_members(members, error: str) -> None:
    members = list(members)
    now = timezone.now()
    failed = MemberRun.objects.filter(pk__in=[m.pk for m in members], status=MemberStatus.NEW).update(
        status=MemberStatus.FAILED, error=error, ended=now, updated=now
    )
    if failed:
        _record_events(members, MemberStatus.FAILED, now)
        realtime.run_changed(members[0].run_id, [m.pk for m in members])


def _mark_queued(run: Run, members: list[MemberRun]) -> None:
    now = timezone.now()
    queued = MemberRun.objects.filter(pk__in=[m.pk for m in members], status=MemberStatus.NEW)
    queued_ids = set(queued.values_list("pk", flat=True))
    queued.update(status=MemberStatus.QUEUED, updated=now)
    _record_events([m for m in members if m.pk in queued_ids], MemberStatus.QUEUED, now)
    realtime.run_changed(run.pk, sorted(queued_ids))


def _file_roots() -> list[str]:
    return [str(path) for path in (*settings.FILE_ROOTS, settings.UPLOAD_DIR)]


def _submit_members(run: Run, launcher, members: list[MemberRun]) -> None:
    """Hand the members to the launcher. Their directories are generated by the
    launcher's runner just before each starts (the ``prepare`` hook), so this
    returns at once whatever the number of members, and the first member starts
    while later ones are still being generated. Each file set is checked here
    first, so that a missing or refused source fails its members with a clear message."""
    roots = _file_roots()
    problems: dict[str, str] = {}
    for key in {member.files_key for member in members}:
        try:
            Generator(roots=roots, **run.generation.get(key, {}))
        except (FileRefused, OSError, UnicodeDecodeError) as error:
            problems[key] = f"Cannot prepare the files of {key}: {error}"
    for error in set(problems.values()):
        _fail_members([m for m in members if problems.get(m.files_key) == error], error)
    members = [m for m in members if m.files_key not in problems]
    # A job some runner already claimed (this submission is a retry) is not handed over again.
    ready = launcher.unstarted(_generating_jobs(run, members, roots))
    if ready:
        _hand_over(run, launcher, ready, members)
    _mark_queued(run, members)


def _hand_over(run: Run, launcher, jobs: list[JobSpec], members: list[MemberRun]) -> None:
    """A local runner takes the jobs as they come. A scheduler that makes job arrays gets
    each ensemble's generated members as arrays (they share their resources: SmartSim's
    shape, and one sbatch where there would be thousands), the others job by job."""
    if not hasattr(launcher, "submit_array"):
        launcher.submit(jobs, group=str(run.pk), concurrency=run.concurrency)
        return
    generated = {str(m.pk): m.entity for m in members if m.kind == MemberKind.GENERATED}
    arrays: dict[str, list[JobSpec]] = {}
    for job in jobs:
        if job.key in generated:
            arrays.setdefault(generated[job.key], []).append(job)
    for entity, array in arrays.items():
        launcher.submit_array(array, group=str(run.pk), concurrency=run.concurrency, name=f"{run.experiment_id}-{run.number}-{entity}")
    launcher.submit([job for job in jobs if job.key not in generated], group=str(run.pk), concurrency=run.concurrency)


def _generating_jobs(run: Run, members: list[MemberRun], roots: list[str]) -> list[JobSpec]:
    """The members as jobs that generate their directories just before they start, and
    read their ensemble's results file when they complete."""
    results_files = dict(Ensemble.objects.filter(pk__in={m.ensemble_id for m in members}).values_list("pk", "results_file"))
    return [job_spec(m, files=run.generation.get(m.files_key, {}), roots=roots, results_file=results_files.get(m.ensemble_id, ""),
                     resources=run.batch.get(m.files_key) or run.batch.get(m.entity))
            for m in members]


def _cancel(run: Run, members: list[MemberRun]) -> None:
    if members:
        launcher_for(run).cancel([job_spec(m) for m in members], group=str(run.pk))


def run_stop(*, run: Run) -> str:
    """The Stop button. A run whose submission has not started (pending) is cancelled
    here and now: its new members end as Cancelled, the run is finished, so that it
    may be launched again, and a submit task that comes later has nothing to claim.
    Anything else is stopped through the launcher, by the run_cancel task.
    Returns what to tell the user."""
    if _cancel_unsubmitted(run.pk) and Run.objects.filter(pk=run.pk, finished__isnull=False).exists():
        return "Stopped: the run had not been submitted yet, so none of its members started."
    return _enqueue_and_tell("run_cancel", run.pk, sent="Stopping the run: queued members will not start, running ones are terminated.",
                             unreachable="The task queue is not reachable, so the run cannot be stopped yet; try again in a moment.")


def run_rerun(*, run: Run) -> str:
    """The Re-run button: refuses (ValidationError) what the run_rerun_failed task would
    refuse, then enqueues it after commit. Returns what to tell the user."""
    run.refresh_from_db(fields=["submit_state"])
    if run.submit_state in (SubmitState.PENDING, SubmitState.SUBMITTING):
        raise ValidationError("The run is still being submitted; try again in a moment.")
    entities = set(run.members.filter(latest=True, status__in=RERUNNABLE).values_list("entity", flat=True).distinct())
    if not entities:
        raise ValidationError("Nothing to re-run: no member of this run failed, was cancelled or was lost.")
    _refuse_overlap(run.experiment, entities, besides=run.pk)
    return _enqueue_and_tell("run_rerun_failed", run.pk, sent="Re-running the failed, cancelled and lost members as new attempts.",
                             unreachable="The task queue is not reachable, so the failed members cannot be re-run yet; try again in a moment.")


def member_stop(*, member: MemberRun) -> str:
    """A member's Stop button: refuses (ValidationError) a member that has already ended,
    then enqueues member_cancel after commit. Returns what to tell the user."""
    member.refresh_from_db(fields=["status"])
    if member.status in TERMINAL_STATUSES:
        raise ValidationError(f"{member.name} has already ended ({member.status}): there is nothing to stop.")
    return _enqueue_and_tell("member_cancel", member.pk, sent=f"Stopping {member.name}.",
                             unreachable=f"The task queue is not reachable, so {member.name} cannot be stopped yet; try again in a moment.")


# --- deleting runs ------------------------------------------------------------------
# A delete first moves a run's folders into its home's trash (a rename: instant, and their
# names are free for new runs at once), then a task removes them and the rows.

DELETE_GRACE_SECONDS = 300  # a delete task not done by then was lost with its worker: send again


def _trash_moves(run: Run) -> list[tuple[str, str]]:
    """(folder, its place in the trash) for the run's member folders and its journals. A run
    made before runs had folders of their own keeps its member folders (they may be shared)."""
    trash = home_of(run.run_as, run.experiment.owner) / ".trash"
    moves = [(run.work_dir, str(trash / f"run-{run.pk}.work"))]
    if run.folder:
        moves.append((run.folder, str(trash / f"run-{run.pk}")))
    return moves


def _trash(runs: list[Run]) -> list[tuple[Run, list[tuple[str, str]]]]:
    """Move the runs' folders to the trash; returns, per run, the moves that put them back
    (done at once if a move fails part way)."""
    undo = []
    try:
        for run in runs:
            moves = _trash_moves(run)
            moved = launching.member_side(run).rename(moves)
            undo.append((run, [(target, source) for (source, target), was in zip(moves, moved) if was]))
    except BaseException:
        _untrash(undo)
        raise
    return undo


def _untrash(undo) -> None:
    for run, back in undo:
        if back:
            launching.member_side(run).rename(back)


@contextlib.contextmanager
def _trashed(runs: list[Run]):
    """The runs' folders are in the trash during the block, and back if it fails."""
    undo = _trash(runs)
    try:
        yield
    except BaseException:
        _untrash(undo)
        raise


def run_delete(*, run: Run) -> str:
    """The Delete button of a finished run: the run disappears from every page at once, and
    a task removes its folders and rows. Refuses (ValidationError) an active run. Returns
    what to tell the user."""
    if not Run.objects.filter(pk=run.pk, finished__isnull=False, deleting=False).update(deleting=True, enqueued_at=None):
        raise ValidationError(f"Run {run.number} is still active: stop it first, then delete it.")
    run.deleting, run.enqueued_at = True, None
    try:
        _trash([run])
    except LauncherError as error:
        Run.objects.filter(pk=run.pk).update(deleting=False)
        raise ValidationError(f"Run {run.number} cannot be deleted: {error}") from None
    _enqueue_recorded(run, "run_purge", deleting=True)
    return f"Run {run.number} deleted; its files are being removed."


def run_purge(*, run_id: int) -> None:
    """The task behind a delete: empty the trash of the run's home, then delete its rows.
    Idempotent: a delete whose request died before the move is moved here."""
    run = Run.objects.filter(pk=run_id, deleting=True).select_related("experiment__owner").first()
    if run is None:
        return
    side = launching.member_side(run)
    try:
        side.rename(_trash_moves(run))
        side.remove([str(home_of(run.run_as, run.experiment.owner) / ".trash")])
    except LauncherError as error:  # e.g. sudo refused: the monitor sends the delete again later
        log.warning("cannot remove the files of run %s: %s", run.pk, error)
        return
    run.delete()


def trash_empty(*, run_as: str, user_id: int) -> None:
    """Remove what deleted experiments left in a home's trash."""
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None and not run_as:
        return
    side = launching.account(run_as) if run_as else launching.SERVER_SIDE
    try:
        side.remove([str(home_of(run_as, user) / ".trash")])
    except (LauncherError, KeyError) as error:  # sudo refused, or the account is gone
        log.warning("cannot empty the trash of %s: %s", run_as or user, error)


def _cancel_unsubmitted(run_id: int) -> bool:
    """If the run is pending, take it from the submission (a conditional UPDATE: of this
    and run_submit's claim, one wins) and cancel its new members; the run is finished
    unless members of an earlier submission still run (a re-run in progress)."""
    now = timezone.now()
    with transaction.atomic():
        if not Run.objects.filter(pk=run_id, submit_state=SubmitState.PENDING).update(
            submit_state=SubmitState.CANCELLED, enqueued_at=None
        ):
            return False
        new = MemberRun.objects.filter(run_id=run_id, latest=True, status=MemberStatus.NEW)
        ids = list(new.values_list("pk", flat=True))
        new.update(status=MemberStatus.CANCELLED, ended=now, updated=now)
        _insert_many(StatusEvent, [{"run_id": run_id, "member_id": pk, "status": MemberStatus.CANCELLED, "at": now} for pk in ids])
        runs_finish([run_id])
        transaction.on_commit(partial(realtime.run_changed, run_id, ids))
    return True


def run_cancel(*, run_id: int) -> None:
    """Stop every unfinished member: new ones of a pending run at once, queued ones
    never start, running ones are terminated."""
    _cancel_unsubmitted(run_id)
    # Only what launcher_for and job_spec read: not the run's file plan, nor members' results or errors.
    run = Run.objects.only(*CANCEL_RUN_FIELDS).get(pk=run_id)
    members = run.members.filter(latest=True).exclude(status__in=TERMINAL_STATUSES).order_by("position").only(*JOB_FIELDS)
    _cancel(run, list(members))


CANCEL_RUN_FIELDS = ("launcher", "cluster", "work_dir", "run_as")  # what launching.launcher_for reads


def member_cancel(*, member_id: int) -> None:
    member = MemberRun.objects.select_related("run").get(pk=member_id)
    if member.status not in TERMINAL_STATUSES:
        _cancel(member.run, [member])


RERUNNABLE = (MemberStatus.FAILED, MemberStatus.CANCELLED, MemberStatus.LOST)


def run_rerun_failed(*, run_id: int) -> int:
    """A new attempt for every failed, cancelled or lost member; the old attempt's
    directory is kept under ``.attempts/`` and linked from the new one. The folders are
    moved before the transaction commits, and moved back if it does not."""
    moved_back = []
    run = Run.objects.select_related("experiment").get(pk=run_id)
    try:
        with transaction.atomic():
            Experiment.objects.select_for_update().filter(pk=run.experiment_id).exists()  # as run_launch: one at a time
            run = Run.objects.select_for_update().get(pk=run_id)
            if run.deleting:
                return 0
            if run.submit_state in (SubmitState.PENDING, SubmitState.SUBMITTING):
                raise ValidationError("The run is still being submitted; try again in a moment.")
            old = list(run.members.select_for_update().filter(latest=True, status__in=RERUNNABLE))
            if not old:
                return 0
            _refuse_overlap(run.experiment, {m.entity for m in old}, besides=run.pk)
            # Unique even across runs of the experiment (and data dirs outliving a database).
            archives = [str(Path(m.cwd).parent / ".attempts" / f"{m.name}.run{run.number}.{m.attempt}-{uuid.uuid4().hex[:6]}")
                        for m in old]
            side = launching.member_side(run)
            moved = side.rename([(m.cwd, archive) for m, archive in zip(old, archives)])
            moved_back = [(archive, m.cwd) for m, archive, was in zip(old, archives, moved) if was]
            fresh = []
            for member, archive, was_moved in zip(old, archives, moved):
                fresh.append(
                    MemberRun(
                        run=run, ensemble_id=member.ensemble_id, kind=member.kind, entity=member.entity, name=member.name,
                        position=member.position, params=member.params, param_names=member.param_names,
                        params_text=member.params_text,
                        argv=member.argv, env=member.env,
                        cwd=member.cwd, attempt=member.attempt + 1, previous=member,
                    )
                )
                member.latest = False
                if was_moved:
                    member.cwd = archive
            MemberRun.objects.bulk_update(old, ["latest", "cwd"], batch_size=2000)
            MemberRun.objects.bulk_create(fresh, batch_size=2000)
            Run.objects.filter(pk=run.pk).update(submit_state=SubmitState.PENDING, finished=None, submit_error="")
            run.submit_state = SubmitState.PENDING
            _enqueue_submit(run)
            # The new attempts are new rows: pages that watch the run reload their table.
            transaction.on_commit(partial(realtime.run_changed, run.pk, [], reload=True))
    except BaseException:
        if moved_back:
            side.rename(moved_back)
        raise
    return len(fresh)


def _timestamp(epoch: float | None):
    return datetime.fromtimestamp(epoch, tz=dt_timezone.utc) if epoch else None


APPLIED_FIELDS = ["status", "job_id", "returncode", "signal", "started", "ended", "updated", "results", "error", "reason"]


def _reason_changed(status: JobStatus, old: str, reason: str) -> bool:
    """A queued member whose scheduler now gives another reason for the wait."""
    return old == MemberStatus.QUEUED and status.state == JobState.QUEUED and (status.reason or "") != reason


def member_runs_apply(statuses: dict[int, JobStatus]) -> dict[int, list[int]]:
    """Apply launcher statuses in bulk. Statuses only move forward (the first terminal
    one wins), so events replayed or read twice change nothing. Returns the changed
    member ids by run.

    The monitor's hot path: it reads only the columns it needs and writes with one
    prepared statement per table, without building model instances."""
    now = timezone.now()
    updates, events, by_run, ended_runs = [], [], {}, set()
    ids = list(statuses)
    for chunk in range(0, len(ids), 5000):
        current = MemberRun.objects.filter(pk__in=ids[chunk : chunk + 5000]).values_list(
            "pk", "run_id", "status", "job_id", "started", "error", "reason"
        )
        for pk, run_id, old, job_id, started, error, reason in current:
            status = statuses[pk]
            new = STATE_TO_STATUS[status.state]
            if _reason_changed(status, old, reason):  # still queued: only the reason is new, no event
                updates.append((old, status.job_id or job_id, None, None, started, None, now, None, error, status.reason or "", pk))
                by_run.setdefault(run_id, []).append(pk)
                continue
            if STATUS_RANK[new] <= STATUS_RANK[old]:
                continue
            started = _timestamp(status.started) or started
            ended = _timestamp(status.ended)
            if new != MemberStatus.RUNNING and old != MemberStatus.RUNNING and started:
                # The Running event was missed (or came in the same batch): keep the history whole.
                events.append({"run_id": run_id, "member_id": pk, "status": MemberStatus.RUNNING, "at": started})
            results = status.results if new == MemberStatus.COMPLETED else None  # read by the member's runner
            updates.append((new, status.job_id or job_id, status.returncode, status.signal, started, ended, now, results,
                            status.error or error, (status.reason or "") if new == MemberStatus.QUEUED else "", pk))
            events.append({"run_id": run_id, "member_id": pk, "status": new, "at": ended or started or now})
            by_run.setdefault(run_id, []).append(pk)
            if new in TERMINAL_STATUSES:
                ended_runs.add(run_id)
    if not updates:
        return {}
    with transaction.atomic():
        _execute_many(MemberRun, f"UPDATE {{table}} SET {', '.join(f'{{{f}}} = %s' for f in APPLIED_FIELDS)} WHERE {{id}} = %s",
                      APPLIED_FIELDS + ["id"], updates)
        _insert_many(StatusEvent, events)
    if ended_runs:
        runs_finish(sorted(ended_runs))
    return by_run


def _insert_many(model, rows: list[dict], **common) -> None:
    """Insert rows without reading their ids back: with COPY on PostgreSQL, with one
    prepared statement elsewhere (bulk_create on SQLite splits 1000 members into
    INSERTs of ~40 rows, and builds a model instance per row). Every row gives the
    same fields, by attname; the others take the values of one ``model(**common)``
    (defaults, auto_now), prepared once."""
    if not rows:
        return
    db = connections[DEFAULT_DB_ALIAS]
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    given = [field for field in fields if field.attname in rows[0]]
    constant = [field for field in fields if field.attname not in rows[0]]
    template = model(**common)
    constant_values = [field.get_db_prep_save(field.pre_save(template, add=True), db) for field in constant]
    quote = db.ops.quote_name
    table = quote(model._meta.db_table)
    column_list = ", ".join(quote(field.column) for field in given + constant)
    columns = [(field.attname, _preparer(field, db)) for field in given]
    prepared = [[prepare(row[name]) if prepare else row[name] for name, prepare in columns] + constant_values for row in rows]
    with db.cursor() as cursor:
        if db.vendor == "postgresql":  # COPY costs the client and the server a fraction of an INSERT per row
            with cursor.cursor.copy(f"COPY {table} ({column_list}) FROM STDIN") as copy:
                for row in prepared:
                    copy.write_row(row)
        else:
            cursor.executemany(f"INSERT INTO {table} ({column_list}) VALUES ({', '.join(['%s'] * len(fields))})", prepared)


def _execute_many(model, template: str, fields: list[str], rows: list[tuple]) -> None:
    """One prepared statement run for many rows: much cheaper than the ORM's bulk
    methods when every row has values of its own. ``template`` names the table as
    {table} and columns by field name; values are prepared by the model's fields."""
    model_fields = [model._meta.get_field(name) for name in fields]
    db = connections[DEFAULT_DB_ALIAS]  # the connection itself: each use of the proxy costs a context lookup
    quote = db.ops.quote_name
    sql = template.format(table=quote(model._meta.db_table), **{f: quote(mf.column) for f, mf in zip(fields, model_fields)})
    preparers = [_preparer(field, db) for field in model_fields]
    prepared = [[prepare(value) if prepare else value for prepare, value in zip(preparers, row)] for row in rows]
    with db.cursor() as cursor:
        cursor.executemany(sql, prepared)


# Fields whose own preparation hands text and integers (the values the hot paths
# give them) to the driver as they are.
PLAIN_FIELD_TYPES = frozenset({
    "AutoField", "BigAutoField", "BigIntegerField", "CharField", "ForeignKey", "IntegerField",
    "PositiveIntegerField", "PositiveSmallIntegerField", "SmallIntegerField", "TextField",
})


def _preparer(field, db):
    """How the bulk writers prepare a field's values for the driver: not at all for
    text and integers, with the backend's adapter for (aware) datetimes, and by the
    field itself otherwise. The field's full preparation costs ~2-5 µs a value, and
    the monitor writes ~18 values per member."""
    kind = field.get_internal_type()
    if kind in PLAIN_FIELD_TYPES:
        return None
    if kind == "DateTimeField":
        return db.ops.adapt_datetimefield_value
    return lambda value: field.get_db_prep_save(value, db)


def runs_finish(run_ids: list[int]) -> None:
    """Mark runs whose members have all ended as finished."""
    unfinished = set(
        MemberRun.objects.filter(run_id__in=run_ids, latest=True)
        .exclude(status__in=TERMINAL_STATUSES)
        .values_list("run_id", flat=True)
        .distinct()
    )
    done = [pk for pk in run_ids if pk not in unfinished]
    if done:
        Run.objects.filter(pk__in=done, finished__isnull=True, submit_state__in=SUBMISSION_OVER).update(finished=timezone.now())


def _claimer_dead(claimed_by: str, claimed_at) -> bool:
    host, _, pid = claimed_by.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return claimed_at is None or timezone.now() - claimed_at > timedelta(hours=1)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def _resend_unclaimed() -> None:
    """Send run_submit again for the pending runs no worker has claimed within
    SUBMIT_GRACE_SECONDS of its last sending, or whose sending failed: the broker was
    down, or a worker took the task and died before claiming it (Redis would deliver
    it again only after its visibility timeout, an hour). A duplicate is harmless:
    run_submit claims first. At most one send a grace period per run, and none more
    in this pass once the broker turns out to be unreachable."""
    cutoff = timezone.now() - timedelta(seconds=settings.SUBMIT_GRACE_SECONDS)
    unclaimed = Run.objects.filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=cutoff), submit_state=SubmitState.PENDING)
    for run in unclaimed.only("pk", "submit_state", "enqueued_at").order_by("pk"):
        if _enqueue_submit(run) and run.waiting_for_queue:
            break


def _resend_lost_deletes() -> None:
    """Send run_purge again for a deleted run whose sending failed, or whose task has not
    removed it within DELETE_GRACE_SECONDS (its worker died; a duplicate is harmless)."""
    cutoff = timezone.now() - timedelta(seconds=DELETE_GRACE_SECONDS)
    lost = Run.objects.filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=cutoff), deleting=True)
    for run in lost.only("pk", "enqueued_at").order_by("pk"):
        if _enqueue_recorded(run, "run_purge", deleting=True) and run.enqueued_at is None:
            break  # the broker is down: the next pass tries again


def runs_reconcile() -> dict[int, list[int]]:
    """Bring unfinished members in line with what the launchers recorded, resume
    submissions whose worker died or whose task never reached a worker, and resubmit
    queued jobs whose runner died before starting them. Returns the changed member
    ids by run."""
    for run in Run.objects.filter(submit_state=SubmitState.SUBMITTING):
        if _claimer_dead(run.claimed_by, run.claimed_at):
            reset = Run.objects.filter(pk=run.pk, submit_state=SubmitState.SUBMITTING, claimed_by=run.claimed_by).update(
                submit_state=SubmitState.PENDING
            )
            if reset:
                run.submit_state = SubmitState.PENDING
                _enqueue_submit(run)
    _resend_unclaimed()
    _resend_lost_deletes()
    changed: dict[int, list[int]] = {}
    for run in Run.objects.filter(finished__isnull=True, submit_state__in=SUBMISSION_OVER):
        # Only ids and statuses: this runs every few seconds for every unfinished run.
        members = list(run.members.filter(latest=True, status__in=[MemberStatus.QUEUED, MemberStatus.RUNNING])
                       .values_list("pk", "status", "reason"))
        if not members:
            runs_finish([run.pk])
            continue
        in_db = {pk: (status, reason) for pk, status, reason in members}
        try:
            launcher = launcher_for(run)
            statuses = launcher.status([str(pk) for pk in in_db])
        except LauncherError as error:  # e.g. the member side (sudo) refused: try again next pass
            log.warning("cannot reconcile run %s: %s", run.pk, error)
            continue
        # Only what the launcher has ahead of the database: events have usually brought the rest.
        ahead = {}
        for key, status in statuses.items():
            old, reason = in_db[int(key)]
            if STATUS_RANK[STATE_TO_STATUS[status.state]] > STATUS_RANK[old] or _reason_changed(status, old, reason):
                ahead[int(key)] = status
        for run_id, ids in member_runs_apply(ahead).items():
            changed.setdefault(run_id, []).extend(ids)
        queued = [pk for pk, status, _ in members if status == MemberStatus.QUEUED]
        try:
            if queued and not launcher.runner_alive():
                queued_members = list(MemberRun.objects.filter(pk__in=queued).order_by("position").only(*JOB_FIELDS))
                orphans = launcher.unstarted(_generating_jobs(run, queued_members, _file_roots()))
                if orphans:
                    launcher.submit(orphans, group=str(run.pk), concurrency=run.concurrency)
        except LauncherError as error:
            log.warning("cannot resubmit the orphans of run %s: %s", run.pk, error)
    return changed


DEMO_DIR = Path(__file__).resolve().parent.parent / "examples" / "heat"


def demo_create(*, user) -> Experiment:
    """An experiment on the example heat simulation: 12 members, a configured input file, results."""
    name = "heat-demo"
    existing = set(Experiment.objects.filter(owner=user, name__startswith=name).values_list("name", flat=True))
    number = 1
    while (name if number == 1 else f"{name}-{number}") in existing:
        number += 1
    with transaction.atomic():
        experiment = experiment_create(
            owner=user,
            name=name if number == 1 else f"{name}-{number}",
            description="1-D heat diffusion (examples/heat/heat.py) over diffusivity alpha and grid size nx.",
            cluster=Cluster.objects.filter(scheduler=Launcher.LOCAL).order_by("pk").first(),  # it runs here
        )
        ensemble = ensemble_save(
            experiment=experiment,
            spec={
                "name": "heat",
                "params": [{"name": "alpha", "values": "0.05, 0.1, 0.2"}, {"name": "nx", "values": "25, 50, 75, 100"}],
                "run_settings": {"exe": sys.executable, "exe_args": ["heat.py", "--input", "input.cfg"]},
                "results_file": "results.json",
            },
        )
        for filename, action in (("heat.py", FileAction.COPY), ("input.cfg", FileAction.CONFIGURE)):
            with open(DEMO_DIR / filename, "rb") as source:
                file_attach_upload(owner=ensemble, uploaded_file=File(source, name=filename), action=action, user=user)
    return experiment
