"""Writes. Every change of state goes through a function here, named
``<entity>_<action>(*, ...)``. Callers have already fetched the objects through
selectors, which only return what the user may see."""

from __future__ import annotations

import random
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from . import specs
from .generation import RECORD_FILE_NAME, FileRefused, check_configurable, resolve_source
from .models import AttachedFile, Ensemble, Experiment, FileAction, Member, Strategy


def _save(instance, *, duplicate_message: str):
    """Validate then save; the only unique constraint these models can break is the name's."""
    instance.full_clean(validate_constraints=False)
    try:
        with transaction.atomic():
            instance.save()
    except IntegrityError:
        raise ValidationError({"name": duplicate_message}) from None
    return instance


def experiment_create(*, owner, name: str, description: str = "", launcher: str = "local") -> Experiment:
    experiment = Experiment(owner=owner, name=name, description=description, launcher=launcher)
    return _save(experiment, duplicate_message=f"You already have an experiment named '{name}'.")


def experiment_update(*, experiment: Experiment, name: str, description: str, launcher: str) -> Experiment:
    experiment.name, experiment.description, experiment.launcher = name, description, launcher
    return _save(experiment, duplicate_message=f"You already have an experiment named '{name}'.")


def experiment_delete(*, experiment: Experiment) -> None:
    experiment.delete()


def ensemble_save(*, experiment: Experiment, spec: dict, ensemble: Ensemble | None = None) -> Ensemble:
    """Create (``ensemble`` None) or update an ensemble from a spec dict.

    ``spec`` keys: name, description, params, perm_strategy, n_models, seed,
    replicas, params_as_args, run_settings, batch_settings, key_prefixing, tag.
    Run and batch settings are normalised; a random ensemble without a seed
    gets one, so that the preview and every launch agree.
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
    return _save(ensemble, duplicate_message=f"This experiment already has an ensemble named '{ensemble.name}'.")


def ensemble_delete(*, ensemble: Ensemble) -> None:
    ensemble.delete()


def member_save(*, experiment: Experiment, spec: dict, ensemble: Ensemble | None = None, member: Member | None = None) -> Member:
    """Create or update a hand-made member (in ``ensemble``) or a standalone model."""
    member = member or Member(experiment=experiment, ensemble=ensemble)
    for field, value in spec.items():
        setattr(member, field, value)
    try:
        member.run_settings = specs.clean_run_settings(member.run_settings)
        member.batch_settings = specs.clean_batch_settings(member.batch_settings)
    except specs.SpecError as error:
        raise ValidationError({error.field: error.message}) from None
    return _save(member, duplicate_message=f"This experiment already has a model named '{member.name}'.")


def member_delete(*, member: Member) -> None:
    member.delete()


def _attach(owner: Ensemble | Member, action: str, path: Path, *, uploaded: bool) -> AttachedFile:
    if action not in FileAction.values:
        raise ValidationError({"action": f"Unknown file action {action!r}."})
    if path.name == RECORD_FILE_NAME:
        raise ValidationError({"path": f"'{path.name}' is written by Flotilla for every member and cannot be attached."})
    if action == FileAction.CONFIGURE:
        try:
            check_configurable(path)
        except FileRefused as error:
            raise ValidationError({"path": str(error)}) from None
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
    if not name or name.startswith("."):
        raise ValidationError({"upload": "The uploaded file needs a name that does not start with a dot."})
    if uploaded_file.size > settings.MAX_UPLOAD_BYTES:
        raise ValidationError({"upload": f"The file is larger than {settings.MAX_UPLOAD_BYTES:,} bytes."})
    folder = settings.UPLOAD_DIR / str(user.pk) / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    with open(target, "wb") as out:
        for chunk in uploaded_file.chunks():
            out.write(chunk)
    try:
        return _attach(owner, action, target, uploaded=True)
    except ValidationError:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def file_detach(*, attached: AttachedFile) -> None:
    if attached.uploaded:
        path = Path(attached.path)
        if path.is_relative_to(settings.UPLOAD_DIR):
            shutil.rmtree(path.parent, ignore_errors=True)
    attached.delete()
