"""Forms: parse what the user typed into the structures services take.

Text the user types (argument lists, KEY=VALUE lines, value lists) is parsed
here so that each error lands next to its field; the structural rules live in
models.py / specs.py and come back as ValidationErrors mapped onto fields.
"""

from __future__ import annotations

import shlex

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from . import launching, specs
from .expansion import format_value
from .models import PARAM_NAME, Cluster, Experiment, FileAction, Launcher, Strategy, name_validator
from .values import ValueSyntaxError, infer_type, parse_values

RUN_FIELDS = ("exe", "exe_args", "run_command", "run_args", "env_vars")
BATCH_FIELDS = ("nodes", "time", "account", "queue", "batch_args")


def _lines(text: str):
    for number, line in enumerate((text or "").splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield number, line


def parse_env_lines(text: str) -> dict[str, str]:
    env = {}
    for number, line in _lines(text):
        name, sep, value = line.partition("=")
        if not sep:
            raise ValidationError(f"line {number}: write NAME=value")
        env[name.strip()] = value.strip()
    return env


def parse_option_lines(text: str) -> dict[str, str | None]:
    """``name=value``, ``name value`` or a bare ``name`` flag per line."""
    options = {}
    for _, line in _lines(text):
        name, value = line, None
        for separator in ("=", " "):
            if separator in line:
                name, value = (part.strip() for part in line.split(separator, 1))
                break
        options[name] = value
    return options


def format_option_lines(options: dict | None) -> str:
    return "\n".join(name if value is None else f"{name}={value}" for name, value in (options or {}).items())


class ApplyErrorsMixin:
    def apply_errors(self, error: ValidationError) -> None:
        """Put a service's ValidationError next to the matching fields (else on top of the form)."""
        for key, messages in error.message_dict.items():
            self.add_error(key if key in self.fields else None, messages)


NOT_AVAILABLE_NOTE = "not available yet"


class ClusterSelect(forms.Select):
    """A cluster menu whose clusters with a scheduler Flotilla cannot drive yet are shown, but disabled."""

    def create_option(self, name, value, label, selected, index, subindex=None, attrs=None):
        option = super().create_option(name, value, label, selected, index, subindex=subindex, attrs=attrs)
        cluster = getattr(value, "instance", None)
        if cluster is not None:
            option["label"] = f"{cluster.name} ({cluster.get_scheduler_display()})"
            if cluster.scheduler not in launching.AVAILABLE_SCHEDULERS:
                option["attrs"]["disabled"] = True
                option["label"] += f" — {NOT_AVAILABLE_NOTE}"
        return option


class ExperimentForm(ApplyErrorsMixin, forms.ModelForm):
    class Meta:
        model = Experiment
        fields = ["name", "description", "cluster"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3}), "cluster": ClusterSelect}
        help_texts = {
            "name": "Used as a folder name: letters, digits, '_', '.', '-'.",
            "cluster": "Where its members run. Detect at launch: a PBS, LSF or Slurm cluster whose commands are "
                       "on this server's PATH, in that order (SmartSim's), else local processes.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["cluster"]
        field.empty_label = "Detect at launch"
        field.label = "Cluster"
        if self.instance.pk is None and not self.is_bound:
            field.initial = Cluster.objects.filter(scheduler=Launcher.LOCAL).order_by("pk").first()

    def clean_cluster(self):
        cluster = self.cleaned_data["cluster"]
        if cluster is not None and cluster.scheduler not in launching.AVAILABLE_SCHEDULERS:
            raise ValidationError(f"{cluster.get_scheduler_display()} clusters are {NOT_AVAILABLE_NOTE}: choose another cluster.")
        return cluster


class VersionedForm(forms.Form):
    """An edit form of an ensemble or member: it carries, hidden, the version of the row it
    was built from, so that a save over a newer version is a conflict (services.version_check)."""

    version = forms.IntegerField(widget=forms.HiddenInput, required=False, min_value=0)

    @property
    def expected_version(self) -> int:
        # No version (a page from before versions existed) matches none: a conflict, never an overwrite.
        return self.cleaned_data.get("version") or 0

    def carry_version(self, version: int) -> None:
        """Re-show the bound form carrying ``version``: saving it again is then a save over that version."""
        self.data = self.data.copy()
        self.data[self.add_prefix("version")] = str(version)


class SettingsForm(ApplyErrorsMixin, forms.Form):
    """Run settings and batch settings, shared by ensembles and hand-made members."""

    exe = forms.CharField(label="Executable", max_length=4096, help_text="A program on PATH or an absolute path.")
    exe_args = forms.CharField(
        label="Arguments", required=False, max_length=20000, help_text="Split like a shell would; quotes keep spaces."
    )
    run_command = forms.CharField(
        label="Run command", required=False, max_length=4096, help_text="e.g. srun or mpirun; empty runs the executable directly."
    )
    run_args = forms.CharField(
        label="Run command options",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="One per line: ntasks=4, or a bare flag.",
    )
    env_vars = forms.CharField(
        label="Environment", required=False, widget=forms.Textarea(attrs={"rows": 2}), help_text="One NAME=value per line."
    )
    nodes = forms.IntegerField(label="Nodes", required=False, min_value=1)
    time = forms.CharField(label="Walltime", required=False, max_length=20, help_text="e.g. 1:30:00")
    account = forms.CharField(label="Account", required=False, max_length=200)
    queue = forms.CharField(label="Queue / partition", required=False, max_length=200)
    batch_args = forms.CharField(
        label="Batch options", required=False, widget=forms.Textarea(attrs={"rows": 2}), help_text="One per line: mem=4G"
    )

    def clean_exe_args(self):
        try:
            return shlex.split(self.cleaned_data["exe_args"])
        except ValueError as error:
            raise ValidationError(f"Cannot split the arguments: {error}.") from None

    def clean_env_vars(self):
        return parse_env_lines(self.cleaned_data["env_vars"])

    def clean_run_args(self):
        return parse_option_lines(self.cleaned_data["run_args"])

    def clean_batch_args(self):
        return parse_option_lines(self.cleaned_data["batch_args"])

    def settings_spec(self) -> dict:
        data = self.cleaned_data
        return {
            "run_settings": {key: data.get(key) for key in RUN_FIELDS},
            "batch_settings": {key: data.get(key) for key in BATCH_FIELDS},
        }

    def normalised_settings(self) -> tuple[dict, dict | None] | None:
        """(run settings, batch settings) as the services store them, or None with each
        problem next to its field (for forms that validate before a service sees them)."""
        spec, normalised = self.settings_spec(), {}
        for key, names, clean in (
            ("run_settings", RUN_FIELDS, specs.clean_run_settings),
            ("batch_settings", BATCH_FIELDS, specs.clean_batch_settings),
        ):
            if any(name in self.errors for name in names):
                continue  # a field already refused: the rest of its group is checked once it is fixed
            try:
                normalised[key] = clean(spec[key])
            except specs.SpecError as error:
                self.add_error(error.field if error.field in self.fields else None, error.message)
        if len(normalised) < 2:
            return None
        return normalised["run_settings"], normalised["batch_settings"]

    @staticmethod
    def settings_initial(run_settings: dict, batch_settings: dict | None) -> dict:
        run_settings, batch_settings = run_settings or {}, batch_settings or {}
        return {
            "exe": run_settings.get("exe", ""),
            "exe_args": shlex.join(run_settings.get("exe_args") or []),
            "run_command": run_settings.get("run_command", ""),
            "run_args": format_option_lines(run_settings.get("run_args")),
            "env_vars": "\n".join(f"{k}={v}" for k, v in (run_settings.get("env_vars") or {}).items()),
            "nodes": batch_settings.get("nodes"),
            "time": batch_settings.get("time", ""),
            "account": batch_settings.get("account", ""),
            "queue": batch_settings.get("queue", ""),
            "batch_args": format_option_lines(batch_settings.get("batch_args")),
        }


class ParamRowForm(forms.Form):
    name = forms.CharField(max_length=100, required=False, widget=forms.TextInput(attrs={"placeholder": "name"}))
    values = forms.CharField(
        max_length=20000, required=False, widget=forms.TextInput(attrs={"placeholder": '1, 2.5, "a,b", range(0, 10)'})
    )
    as_arg = forms.BooleanField(required=False, label="as argument")

    def clean(self):
        data = super().clean()
        name, text = data.get("name", "").strip(), data.get("values", "")
        if not name and not text.strip():
            return data
        if not name:
            self.add_error("name", "Give the parameter a name.")
        elif not PARAM_NAME.fullmatch(name):
            self.add_error("name", "Use letters, digits, '_', '.', '-' (may start with - or --).")
        try:
            data["parsed"] = parse_values(text)
        except ValueSyntaxError as error:
            self.add_error("values", str(error))
        data["name"] = name
        return data


class BaseParamFormSet(forms.BaseFormSet):
    def clean(self):
        seen = set()
        for form in self.forms:
            name = form.cleaned_data.get("name") if hasattr(form, "cleaned_data") else None
            if form in self.deleted_forms or not name:
                continue
            if name in seen:
                form.add_error("name", f"'{name}' is already a parameter.")
            seen.add(name)

    def rows(self):
        """The filled, kept rows' cleaned data, in order."""
        return [
            form.cleaned_data
            for form in self.forms
            if form not in self.deleted_forms and form.cleaned_data.get("name")
        ]


ParamFormSet = forms.formset_factory(
    ParamRowForm, formset=BaseParamFormSet, extra=0, can_delete=True, max_num=200, validate_max=True
)


class EnsembleForm(VersionedForm, SettingsForm):
    field_order = ["name", "description", "perm_strategy", "n_models", "seed", "replicas"]

    name = forms.CharField(max_length=100, validators=[name_validator], help_text="Members are named <name>_0, <name>_1, ...")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    perm_strategy = forms.ChoiceField(label="Strategy", choices=Strategy.choices, initial=Strategy.ALL_PERM)
    n_models = forms.IntegerField(
        label="Members to sample (n_models)", required=False, min_value=0, max_value=2**63 - 1, help_text="random only; empty or 0 takes every combination."
    )
    seed = forms.IntegerField(
        label="Seed", required=False, min_value=0, max_value=2**63 - 1, help_text="random only; empty picks one when you save."
    )
    replicas = forms.IntegerField(label="Replicas", min_value=1, max_value=1_000_000, initial=1, help_text="Copies of every combination.")
    key_prefixing = forms.BooleanField(label="Prefix the members' database keys (SSKEYOUT)", required=False, initial=True)
    tag = forms.CharField(label="Tag", max_length=10, initial=";", help_text="Configured files replace <tag>NAME<tag>.")
    results_file = forms.CharField(
        label="Results file",
        required=False,
        max_length=255,
        help_text="A JSON file each member writes in its folder, e.g. results.json; its numbers are plotted against the parameters.",
    )

    def ensemble_spec(self, rows: list[dict]) -> dict:
        data = self.cleaned_data
        return {
            "name": data["name"],
            "description": data["description"],
            "params": [{"name": row["name"], "values": row["values"]} for row in rows],
            "params_as_args": [row["name"] for row in rows if row.get("as_arg")],
            "perm_strategy": data["perm_strategy"],
            "n_models": data["n_models"],
            "seed": data["seed"],
            "replicas": data["replicas"],
            "key_prefixing": data["key_prefixing"],
            "tag": data["tag"],
            "results_file": data["results_file"],
            **self.settings_spec(),
        }


def parse_member_params(text: str) -> list[dict]:
    params = []
    for number, line in _lines(text):
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValidationError(f"line {number}: write name=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            typed = value[1:-1]
        else:
            typed = infer_type(value)
        row = {"name": name, "value": typed}
        if format_value(typed) != value and not isinstance(typed, str):
            row["text"] = value  # written as typed ("true", "1e-3"), not as str(value)
        params.append(row)
    return params


class MemberForm(VersionedForm, SettingsForm):
    field_order = ["name", "params", "params_as_args", "key_prefixing"]

    name = forms.CharField(max_length=100, validators=[name_validator])
    params = forms.CharField(
        label="Parameters", required=False, widget=forms.Textarea(attrs={"rows": 3}), help_text="One name=value per line."
    )
    params_as_args = forms.CharField(
        label="Parameters passed as arguments", required=False, help_text="Names separated by commas."
    )
    key_prefixing = forms.BooleanField(label="Prefix database keys (SSKEYOUT)", required=False)

    def clean_params(self):
        return parse_member_params(self.cleaned_data["params"])

    def clean_params_as_args(self):
        return [name.strip() for name in self.cleaned_data["params_as_args"].split(",") if name.strip()]

    def member_spec(self) -> dict:
        data = self.cleaned_data
        return {
            "name": data["name"],
            "params": data["params"],
            "params_as_args": data["params_as_args"],
            "key_prefixing": data["key_prefixing"],
            **self.settings_spec(),
        }

    @classmethod
    def initial_for(cls, member) -> dict:
        def literal(value):
            # Quote text that would otherwise read back as a number or a bool.
            return f'"{value}"' if isinstance(value, str) and infer_type(value) != value else value

        return {
            "version": member.version,
            "name": member.name,
            "params": "\n".join(f"{row['name']}={row.get('text') or literal(row['value'])}" for row in member.params),
            "params_as_args": ", ".join(member.params_as_args),
            "key_prefixing": member.key_prefixing,
            **cls.settings_initial(member.run_settings, member.batch_settings),
        }


class AttachFileForm(ApplyErrorsMixin, forms.Form):
    action = forms.ChoiceField(choices=FileAction.choices, initial=FileAction.CONFIGURE)
    path = forms.CharField(
        label="Server path",
        required=False,
        max_length=4096,
        help_text="A file or folder: its absolute path, or its path inside an allowed folder (inputs/mesh.dat).",
    )
    upload = forms.FileField(label="or upload a file", required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The server folders files may be attached from (the template names them); none: uploads only.
        self.roots = [str(root) for root in settings.FILE_ROOTS]

    def clean(self):
        data = super().clean()
        if bool(data.get("path")) == bool(data.get("upload")):
            raise ValidationError("Give either a server path or a file to upload." if self.roots else "Choose a file to upload.")
        return data



class LaunchForm(forms.Form):
    """Launch options: how many members at once, and which ensembles and models (all by default)."""

    concurrency = forms.IntegerField(
        label="Members at once",
        required=False,
        min_value=1,
        max_value=4096,
        help_text="Local launcher: how many members run at the same time (empty: one per CPU).",
    )
    entities = forms.MultipleChoiceField(
        label="Launch", required=False, widget=forms.CheckboxSelectMultiple,
        error_messages={"invalid_choice": "%(value)s is not an ensemble or model of this experiment (any more)."},
    )

    def __init__(self, *args, entities: list[str], busy: dict[str, int], **kwargs):
        """``entities``: the experiment's ensembles and models by name; ``busy``: those an active run holds (its number)."""
        super().__init__(*args, **kwargs)
        self.busy = busy
        self.fields["entities"].choices = [(name, name) for name in entities]
        self.fields["entities"].initial = [name for name in entities if name not in busy]

    def entity_boxes(self):
        """(checkbox, number of the active run that holds its entity or None), for the template."""
        return [(box, self.busy.get(box.data["value"])) for box in self["entities"]]

    # Sent by the page's form, whose boxes may all be unticked; a launch without it (the API,
    # scripts) launches every entity.
    subset = forms.BooleanField(required=False, initial=True, widget=forms.HiddenInput)

    def clean(self):
        data = super().clean()
        if not data.get("entities"):
            if data.get("subset") and "entities" not in self.errors:
                self.add_error("entities", "Choose at least one ensemble or model to launch.")
            data["entities"] = None
        return data
