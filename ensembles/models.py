"""Flotilla's domain: experiments, ensembles, members and attached files.

JSON fields hold validated structures (see specs.py); ``clean()`` validates
them so that the admin, the forms and the services share one set of rules.
Parameter order matters (all_perm varies the last one fastest) and PostgreSQL
jsonb does not keep object key order, so parameters are stored as lists.
"""

from __future__ import annotations

import math
import os
import pwd
import re
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from . import specs
from .expansion import STRATEGIES, ExpansionError, ParameterSpace, Params, expand, texts_of
from .values import ValueSyntaxError, parse_values

# Names become directory names: no separators, no leading dot.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
name_validator = RegexValidator(
    rf"^{NAME_PATTERN}\Z",
    "Use letters, digits, '_', '.' or '-', starting with a letter or digit (at most 100 characters).",
)
results_file_validator = RegexValidator(
    r"^(?!/)(?!.*(^|/)\.\.(/|$))[^\x00]+\Z", "A path relative to the member directory, e.g. results.json."
)
unix_account_validator = RegexValidator(r"^[a-z_][a-z0-9_-]{0,31}\Z", "A Unix account name, e.g. alice or sim_user.")
PARAM_NAME = re.compile(r"-{0,2}[A-Za-z_][A-Za-z0-9_.-]*")


class Launcher(models.TextChoices):
    LOCAL = "local", "Local processes"
    SLURM = "slurm", "Slurm"
    PBS = "pbs", "PBS"
    LSF = "lsf", "LSF"
    AUTO = "auto", "Detect at launch"


SCHEDULERS = [(value, label) for value, label in Launcher.choices if value != Launcher.AUTO]


class Cluster(models.Model):
    """Where members run: this machine's processes, or a batch scheduler's cluster
    (admin-managed). One server can drive several clusters."""

    name = models.CharField(max_length=100, unique=True, validators=[name_validator])
    scheduler = models.CharField(max_length=10, choices=SCHEDULERS)
    description = models.TextField(blank=True)
    # What the scheduler's commands need in their environment, e.g. {"SLURM_CONF": "/etc/slurm/slurm.conf"}.
    env = models.JSONField(default=dict, blank=True)
    poll_interval = models.FloatField(default=2.0, validators=[MinValueValidator(0.2)],
                                      help_text="Seconds between two status queries of the scheduler.")
    # Site limits, read from the scheduler (Slurm: scontrol show config) by the admin's action.
    max_array_size = models.PositiveIntegerField(null=True, blank=True)
    max_job_count = models.PositiveIntegerField(null=True, blank=True)
    limits_read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        if not isinstance(self.env, dict) or not all(
            isinstance(k, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) and isinstance(v, str) and "\x00" not in v
            for k, v in self.env.items()
        ):
            raise ValidationError({"env": 'An object of variable names and text values, e.g. {"SLURM_CONF": "/etc/slurm/slurm.conf"}.'})
        conf = self.env.get("SLURM_CONF")
        if self.scheduler == Launcher.SLURM and conf and not os.path.isfile(conf):
            # Slurm's commands would spend a minute looking for a controller before saying so.
            raise ValidationError({"env": f"SLURM_CONF: there is no file {conf} on this server."})


class Strategy(models.TextChoices):
    ALL_PERM = "all_perm", "all_perm — every combination"
    STEP = "step", "step — i-th values together"
    RANDOM = "random", "random — a sample of combinations"


assert tuple(Strategy.values) == STRATEGIES


class Experiment(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="experiments")
    name = models.CharField(max_length=100, validators=[name_validator])
    description = models.TextField(blank=True)
    # None: detect at launch (PBS, then LSF, then Slurm, then local: SmartSim's order).
    cluster = models.ForeignKey(Cluster, null=True, blank=True, on_delete=models.PROTECT, related_name="experiments")
    # The number of the last run launched: run numbers (and so run folders) are never reused,
    # even after a run is deleted.
    run_count = models.PositiveIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="experiment_name_unique_per_owner"),
        ]

    def __str__(self):
        return self.name

    @property
    def scheduler(self) -> str:
        """The scheduler of its cluster, or "auto"."""
        return self.cluster.scheduler if self.cluster_id else Launcher.AUTO


def validate_run_settings(value):
    try:
        specs.clean_run_settings(value)
    except specs.SpecError as error:
        raise ValidationError(str(error)) from None


def validate_batch_settings(value):
    try:
        specs.clean_batch_settings(value)
    except specs.SpecError as error:
        raise ValidationError(str(error)) from None


def parse_param_rows(rows) -> dict:
    """``[{"name": ..., "values": "<text>"}, ...]`` -> ``{name: lazy values}``; ValidationError per problem."""
    if not isinstance(rows, list):
        raise ValidationError("params must be a list of {name, values} rows")
    columns = {}
    errors = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or set(row) != {"name", "values"}:
            errors.append(f"row {number}: expected an object with 'name' and 'values'")
            continue
        name, text = row["name"], row["values"]
        if not isinstance(name, str) or not PARAM_NAME.fullmatch(name):
            errors.append(f"row {number}: {name!r} is not a valid parameter name")
            continue
        if name in columns:
            errors.append(f"row {number}: parameter '{name}' is defined twice")
            continue
        try:
            columns[name] = parse_values(text if isinstance(text, str) else "")
        except ValueSyntaxError as error:
            errors.append(f"{name}: {error}")
    if errors:
        raise ValidationError(errors)
    return columns


class Ensemble(models.Model):
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="ensembles")
    name = models.CharField(max_length=100, validators=[name_validator])
    description = models.TextField(blank=True)
    # [{"name": "x", "values": "range(0, 10)"}, ...] in the user's order.
    params = models.JSONField(default=list, blank=True)
    perm_strategy = models.CharField(max_length=10, choices=Strategy.choices, default=Strategy.ALL_PERM)
    n_models = models.PositiveBigIntegerField(null=True, blank=True)
    seed = models.BigIntegerField(null=True, blank=True, validators=[MinValueValidator(0)])
    replicas = models.PositiveIntegerField(default=1)
    params_as_args = models.JSONField(default=list, blank=True)
    run_settings = models.JSONField(default=dict, validators=[validate_run_settings])
    batch_settings = models.JSONField(null=True, blank=True, validators=[validate_batch_settings])
    key_prefixing = models.BooleanField(default=True)  # SmartSim turns it on for expanded members
    tag = models.CharField(max_length=10, default=";")
    # A JSON file each member writes into its directory; its numeric fields are collected on completion.
    results_file = models.CharField(max_length=255, blank=True, validators=[results_file_validator])
    # Incremented by every save: a form built from an older version is a conflict (services._save).
    version = models.PositiveIntegerField(default=1)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "name"], name="ensemble_name_unique_in_experiment"),
        ]

    def __str__(self):
        return self.name

    def param_columns(self) -> dict:
        return parse_param_rows(self.params)

    def space(self) -> ParameterSpace:
        return expand(
            self.param_columns(),
            self.perm_strategy,
            n_models=self.n_models,
            seed=self.seed,
            replicas=self.replicas,
        )

    def member_name(self, index: int) -> str:
        return f"{self.name}_{index}"

    def clean(self):
        errors = {}
        try:
            names = list(self.param_columns())
        except ValidationError as error:
            errors["params"] = error.messages
            names = [row.get("name") for row in self.params if isinstance(row, dict)]
        if not isinstance(self.params_as_args, list) or not all(isinstance(n, str) for n in self.params_as_args):
            errors["params_as_args"] = "must be a list of parameter names"
        else:
            missing = [n for n in self.params_as_args if n not in names]
            if missing:
                errors["params_as_args"] = f"not a parameter: {', '.join(missing)}"
        if not self.tag or any(c.isspace() for c in self.tag):
            errors["tag"] = "The tag must be one or more characters without spaces (default ';')."
        if self.batch_settings and self.experiment_id and self.experiment.scheduler == Launcher.LOCAL:
            errors["batch_settings"] = (
                "The local launcher does not support batch workloads; choose Slurm, PBS or LSF for the experiment."
            )
        if self.perm_strategy == Strategy.RANDOM and self.seed is None:
            errors["seed"] = "A random ensemble needs a seed so that every preview and launch pick the same members."
        if "params" not in errors:
            try:
                self.space()
            except ExpansionError as error:
                errors["params"] = str(error)
        if self.experiment_id and self.name:
            if self.experiment.members.filter(ensemble__isnull=True, name=self.name).exists():
                errors["name"] = f"'{self.name}' is already the name of a model in this experiment."
            if self.experiment.members.filter(name__regex=rf"^{re.escape(self.name)}_[0-9]+$").exists():
                errors["name"] = f"'{self.name}_<n>' would clash with a member added by hand; choose another name."
        if errors:
            raise ValidationError(errors)


class Member(models.Model):
    """One simulation defined by hand: added to an ensemble (SmartSim ``add_model``)
    when ``ensemble`` is set, otherwise a standalone model of the experiment."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="members")
    ensemble = models.ForeignKey(Ensemble, null=True, blank=True, on_delete=models.CASCADE, related_name="members")
    name = models.CharField(max_length=100, validators=[name_validator])
    # [{"name": "x", "value": 1}, ...]: one typed value per parameter, in order, with
    # "text": the value as typed when that is not str(value) (e.g. "true", "1e-3").
    params = models.JSONField(default=list, blank=True)
    params_as_args = models.JSONField(default=list, blank=True)
    run_settings = models.JSONField(default=dict, validators=[validate_run_settings])
    batch_settings = models.JSONField(null=True, blank=True, validators=[validate_batch_settings])
    key_prefixing = models.BooleanField(default=False)  # SmartSim's default for create_model
    version = models.PositiveIntegerField(default=1)  # as Ensemble.version
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "name"], name="member_name_unique_in_experiment"),
        ]

    def __str__(self):
        return self.name

    def param_dict(self) -> Params:
        """The typed values, with ``text``: each as typed (what command lines and files get)."""
        return Params(
            {row["name"]: row["value"] for row in self.params},
            {row["name"]: row["text"] for row in self.params if "text" in row},
        )

    def clean(self):
        errors = {}
        if not isinstance(self.params, list) or not all(
            isinstance(row, dict)
            and set(row) in ({"name", "value"}, {"name", "value", "text"})
            and isinstance(row.get("text", ""), str)
            and isinstance(row["name"], str)
            and PARAM_NAME.fullmatch(row["name"])
            and isinstance(row["value"], (str, int, float, bool))
            and not (isinstance(row["value"], float) and not math.isfinite(row["value"]))
            for row in self.params
        ):
            errors["params"] = "Each parameter needs a valid name and one text or number value."
        elif len({row["name"] for row in self.params}) != len(self.params):
            errors["params"] = "A parameter is defined twice."
        else:
            missing = [n for n in self.params_as_args if n not in self.param_dict()]
            if missing:
                errors["params_as_args"] = f"not a parameter: {', '.join(missing)}"
        if self.experiment_id and self.name:
            if self.experiment.ensembles.filter(name=self.name).exists():
                errors["name"] = f"'{self.name}' is already the name of an ensemble in this experiment."
            if self.ensemble_id and re.fullmatch(rf"{re.escape(self.ensemble.name)}_\d+", self.name):
                errors["name"] = f"'{self.name}' is reserved for the ensemble's generated members."
        if self.ensemble_id and self.ensemble.experiment_id != self.experiment_id:
            errors["ensemble"] = "The ensemble belongs to another experiment."
        if errors:
            raise ValidationError(errors)


class FileAction(models.TextChoices):
    COPY = "copy", "Copy (to_copy)"
    SYMLINK = "symlink", "Symlink (to_symlink)"
    CONFIGURE = "configure", "Configure (to_configure, ;TAG; substitution)"


class AttachedFile(models.Model):
    """A file or folder given to every member of an ensemble (or to one member)."""

    ensemble = models.ForeignKey(Ensemble, null=True, blank=True, on_delete=models.CASCADE, related_name="files")
    member = models.ForeignKey(Member, null=True, blank=True, on_delete=models.CASCADE, related_name="files")
    action = models.CharField(max_length=10, choices=FileAction.choices)
    # Absolute, resolved path: inside FLOTILLA_FILE_ROOTS or the uploads folder.
    path = models.CharField(max_length=4096)
    uploaded = models.BooleanField(default=False)
    is_dir = models.BooleanField(default=False)
    size = models.PositiveBigIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["action", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ensemble__isnull=True) ^ models.Q(member__isnull=True),
                name="attached_file_has_one_owner",
            ),
        ]

    def __str__(self):
        return f"{self.get_action_display()}: {self.path}"

    @property
    def name(self) -> str:
        return Path(self.path).name


class MemberStatus(models.TextChoices):
    NEW = "New"
    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    LOST = "Lost"


TERMINAL_STATUSES = (MemberStatus.COMPLETED, MemberStatus.FAILED, MemberStatus.CANCELLED, MemberStatus.LOST)
# Statuses only move forward; the first terminal status recorded wins.
STATUS_RANK = {MemberStatus.NEW: 0, MemberStatus.QUEUED: 1, MemberStatus.RUNNING: 2, **{s: 3 for s in TERMINAL_STATUSES}}


class SubmitState(models.TextChoices):
    PENDING = "pending", "Waiting for a worker"
    SUBMITTING = "submitting", "Submitting"
    SUBMITTED = "submitted", "Submitted"
    FAILED = "failed", "Submission failed"
    CANCELLED = "cancelled", "Stopped before submission"


# A run in one of these states is no longer waiting for (or in) a submission.
SUBMISSION_OVER = (SubmitState.SUBMITTED, SubmitState.FAILED, SubmitState.CANCELLED)


class Run(models.Model):
    """One launch of an experiment's ensembles and models (SmartSim's RunID)."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="runs")
    number = models.PositiveIntegerField()  # 1, 2, ... within the experiment
    launcher = models.CharField(max_length=10, choices=Launcher.choices)  # the cluster's scheduler, frozen
    cluster = models.ForeignKey(Cluster, null=True, blank=True, on_delete=models.PROTECT, related_name="runs")
    # The ensembles and models it launched, by name: runs active at once share none.
    entities = models.JSONField(default=list)
    # Its members' folders are under it ("" for runs made before it was recorded).
    folder = models.CharField(max_length=4096, blank=True)
    # Set by a delete: the run is hidden, and a task removes its folders and rows.
    deleting = models.BooleanField(default=False)
    concurrency = models.PositiveIntegerField(null=True, blank=True)  # local: members at once; None = CPUs
    # Attached files per ensemble/model name, frozen at launch: {"<entity>": {"copy": [...], ..., "tag": ";"}}
    generation = models.JSONField(default=dict)
    # Batch settings per ensemble/model name (a hand-added member's own, else its ensemble's), frozen at launch.
    batch = models.JSONField(default=dict, blank=True)
    submit_state = models.CharField(max_length=12, choices=SubmitState.choices, default=SubmitState.PENDING)
    submit_error = models.TextField(blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=200, blank=True)  # "<host>:<pid>" of the submitting worker process
    # When run_submit (or, once deleting, run_purge) was last sent for the run; None while the
    # task queue could not take it. A pending run is sent again once this is SUBMIT_GRACE_SECONDS
    # old, a deleted one after services.DELETE_GRACE_SECONDS (services.runs_reconcile).
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # The runners' journals and logs; unique, so that a reused id never meets old files.
    work_dir = models.CharField(max_length=4096)
    # The Unix account its members run as (FLOTILLA_RUN_AS=user), frozen at launch; "" = the server's.
    run_as = models.CharField(max_length=32, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [models.UniqueConstraint(fields=["experiment", "number"], name="run_number_unique_in_experiment")]
        indexes = [
            # services.runs_reconcile, every few seconds: submitting runs, pending ones (_resend_unclaimed)...
            models.Index(fields=["submit_state"], name="run_submit_state_idx"),
            # ... and the unfinished ones (few, while finished runs pile up).
            models.Index(fields=["submit_state"], condition=models.Q(finished__isnull=True), name="run_unfinished_idx"),
        ]

    def __str__(self):
        return f"{self.experiment.name} run {self.number}"

    @property
    def waiting_for_queue(self) -> bool:
        """Pending, and the task queue could not take its submission (the monitor retries)."""
        return self.submit_state == SubmitState.PENDING and self.enqueued_at is None



def params_in_order(params: dict, names: list) -> dict:
    ordered = {name: params[name] for name in names if name in params}
    ordered.update((name, value) for name, value in params.items() if name not in ordered)
    return ordered


class MemberKind(models.TextChoices):
    GENERATED = "generated", "Expanded from the parameters"
    ADDED = "added", "Added to the ensemble by hand"
    MODEL = "model", "Standalone model"


class MemberRun(models.Model):
    """One attempt at running one member. A re-run is a new row linked to the previous attempt."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="members")
    ensemble = models.ForeignKey(Ensemble, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    kind = models.CharField(max_length=10, choices=MemberKind.choices, default=MemberKind.GENERATED)
    entity = models.CharField(max_length=100)  # the ensemble's name, or the standalone model's own name
    name = models.CharField(max_length=200)
    position = models.PositiveIntegerField()  # order within the run
    params = models.JSONField(default=dict)  # typed values: sorting, filtering, plots
    param_names = models.JSONField(default=list)  # the parameters' order (PostgreSQL's jsonb sorts object keys)
    # The values as typed ("true", "1e-3") where that is not str(value) (expansion.text_overrides):
    # what configured files get. The argv was built from the same texts at launch.
    params_text = models.JSONField(default=dict, blank=True)
    argv = models.JSONField(default=list)
    env = models.JSONField(default=dict)
    cwd = models.CharField(max_length=4096)
    status = models.CharField(max_length=10, choices=MemberStatus.choices, default=MemberStatus.NEW)
    attempt = models.PositiveIntegerField(default=1)
    previous = models.OneToOneField("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="next")
    latest = models.BooleanField(default=True)  # False once re-run
    job_id = models.CharField(max_length=64, blank=True)
    returncode = models.IntegerField(null=True, blank=True)
    signal = models.IntegerField(null=True, blank=True)
    started = models.DateTimeField(null=True, blank=True)
    ended = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    # Why a queued member waits, as its scheduler says ("Resources", "Priority"...); "" once it left the queue.
    reason = models.CharField(max_length=200, blank=True)
    results = models.JSONField(null=True, blank=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["position", "attempt"]
        indexes = [
            models.Index(fields=["run", "latest", "status"]),
            models.Index(fields=["run", "latest", "position"]),
        ]

    def __str__(self):
        return self.name

    @property
    def ordered_params(self) -> dict:
        return params_in_order(self.params, self.param_names)

    @property
    def written_params(self) -> dict[str, str]:
        """The parameters as its command line and files got them (``true``, ``1e-3``), in order."""
        return texts_of(self.ordered_params, self.params_text)

    @property
    def files_key(self) -> str:
        """Its entry in Run.generation: the ensemble's files, or its own (added members, models)."""
        return self.entity if self.kind == MemberKind.GENERATED else self.name

    @property
    def stdout(self) -> str:
        return os.path.join(self.cwd, f"{self.name}.out")

    @property
    def stderr(self) -> str:
        return os.path.join(self.cwd, f"{self.name}.err")

    @property
    def runtime(self) -> float | None:
        if self.started and self.ended:
            return (self.ended - self.started).total_seconds()
        return None


class StatusEvent(models.Model):
    """Every status a member went through, for the plots of a run over time."""

    # No index of its own: the (run, at) index serves lookups by run, and each index
    # costs every insert (three per member in a run).
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events", db_index=False)
    member = models.ForeignKey(MemberRun, on_delete=models.CASCADE, related_name="events")
    status = models.CharField(max_length=10, choices=MemberStatus.choices)
    at = models.DateTimeField()

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["run", "at"])]


class UnixAccount(models.Model):
    """The Unix account a Flotilla user's members run as when FLOTILLA_RUN_AS=user
    (every member-side action goes through ``sudo -n -u <name>``). Edited in the admin."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="unix_account")
    name = models.CharField(
        max_length=32, unique=True, validators=[unix_account_validator],
        help_text="An existing Unix account that this user, and nobody else, may act as.",
    )

    def __str__(self):
        return f"{self.user} runs as {self.name}"

    def clean(self):
        try:
            entry = pwd.getpwnam(self.name)
        except KeyError:
            raise ValidationError({"name": f"There is no Unix account {self.name!r} on this machine."}) from None
        if entry.pw_uid == os.geteuid():
            raise ValidationError({"name": "That is the server's own account: members would act as the server."})
        if entry.pw_uid < settings.MIN_ACCOUNT_UID:
            raise ValidationError({"name": f"{self.name!r} is a system account (uid {entry.pw_uid}, below "
                                           f"FLOTILLA_MIN_ACCOUNT_UID={settings.MIN_ACCOUNT_UID})."})
