from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.urls import reverse
from django.utils.html import format_html

from launchers.base import LauncherError

from . import services
from .forms import BATCH_FIELDS, RUN_FIELDS, SettingsForm, VersionedForm
from .models import AttachedFile, Cluster, Ensemble, Experiment, Member, MemberRun, Run, StatusEvent, UnixAccount

User = get_user_model()


class EnsembleInline(admin.TabularInline):
    """Listed only: an ensemble is edited on its own change page, which checks and takes its version."""

    model = Ensemble
    fields = ["name", "perm_strategy", "replicas"]
    readonly_fields = fields
    extra = 0
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = ["name", "scheduler", "poll_interval", "max_array_size", "max_job_count", "limits_read_at"]
    list_filter = ["scheduler"]
    readonly_fields = ["max_array_size", "max_job_count", "limits_read_at"]
    actions = ["read_limits"]

    @admin.action(description="Read the site limits from the scheduler")
    def read_limits(self, request, queryset):
        for cluster in queryset:
            try:
                services.cluster_read_limits(cluster=cluster)
            except LauncherError as error:
                self.message_user(request, f"{cluster}: {error}", messages.ERROR)
            else:
                self.message_user(request, f"{cluster}: MaxArraySize {cluster.max_array_size}, MaxJobCount {cluster.max_job_count}.")


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "cluster", "created"]
    list_filter = ["owner", "cluster", "created"]
    list_select_related = ["owner", "cluster"]
    search_fields = ["name", "owner__username"]
    inlines = [EnsembleInline]


class AttachedFileInline(admin.TabularInline):
    model = AttachedFile
    fields = ["action", "path", "uploaded", "is_dir", "size"]
    readonly_fields = ["path", "uploaded", "is_dir", "size"]  # paths are checked only when attached in the app
    extra = 0
    can_delete = True

    def has_add_permission(self, request, obj=None):
        return False


class SettingsAdminForm(VersionedForm, SettingsForm, forms.ModelForm):
    """The change form of an ensemble or member: run and batch settings as the builder's
    fields, parsed and checked as the builder does (not raw JSON), and the version the form
    was built from, so that a save over a newer one (from the builder, or another admin)
    is refused with the fields that differ."""

    class Meta:
        exclude = ["version", "run_settings", "batch_settings"]

    def __init__(self, *args, instance=None, initial=None, **kwargs):
        if instance is not None and instance.pk is not None:
            initial = {
                **self.settings_initial(instance.run_settings, instance.batch_settings),
                "version": instance.version,
                **(initial or {}),
            }
        super().__init__(*args, instance=instance, initial=initial, **kwargs)
        for name in (*RUN_FIELDS, *BATCH_FIELDS):
            widget = self.fields[name].widget
            widget.attrs["class"] = "vLargeTextField" if isinstance(widget, forms.Textarea) else "vTextField"

    def clean(self):
        data = super().clean()
        normalised = self.normalised_settings()
        if normalised:
            self.instance.run_settings, self.instance.batch_settings = normalised
        return data

    def _post_clean(self):
        super()._post_clean()  # the instance now has the form's values: a conflict can name what differs
        if self.instance.pk is None:
            return
        try:
            # The lock lasts until the admin's transaction (the whole change view) ends.
            services.version_check(instance=self.instance, expected_version=self.expected_version)
        except services.EditConflict as conflict:
            self.carry_version(conflict.current.version)
            fields = ", ".join(str(self[name].label) if name in self.fields else name for name in conflict.changed)
            self.add_error(None, (
                f"{conflict.headline} The current version differs from yours in: {fields}. "
                "Open this page in a new tab to see it; saving this form again replaces it with yours."
            ))
        except ValidationError as error:  # deleted meanwhile
            self.add_error(None, error.messages)

    def _update_errors(self, errors):
        # The model's rules name run_settings / batch_settings, shown here field by field: on top.
        if hasattr(errors, "error_dict"):
            moved = {}
            for key, messages in errors.error_dict.items():
                moved.setdefault(key if key in self.fields else NON_FIELD_ERRORS, []).extend(messages)
            errors = ValidationError(moved)
        super()._update_errors(errors)


SETTINGS_FIELDSETS = [
    ("Run settings", {"fields": list(RUN_FIELDS)}),
    ("Batch settings (Slurm, PBS, LSF)", {"fields": list(BATCH_FIELDS)}),
]


@admin.register(Ensemble)
class EnsembleAdmin(admin.ModelAdmin):
    form = SettingsAdminForm
    fieldsets = [
        (None, {"fields": ["experiment", "name", "description", "version"]}),
        ("Parameters", {"fields": ["params", "params_as_args", "perm_strategy", "n_models", "seed", "replicas"]}),
        *SETTINGS_FIELDSETS,
        ("Files, results and keys", {"fields": ["tag", "results_file", "key_prefixing"]}),
    ]
    list_display = ["name", "experiment", "owner", "perm_strategy", "replicas", "updated"]
    list_filter = ["perm_strategy", "experiment__owner"]
    list_select_related = ["experiment__owner"]
    search_fields = ["name", "experiment__name", "experiment__owner__username"]
    inlines = [AttachedFileInline]

    @admin.display(ordering="experiment__owner__username")
    def owner(self, ensemble):
        return ensemble.experiment.owner

    def save_model(self, request, obj, form, change):
        # Through the service, as the builder saves: settings normalised, the next version taken.
        services.ensemble_save(experiment=obj.experiment, ensemble=obj, spec={}, expected_version=form.expected_version)


@admin.register(Member)
class MemberAdmin(admin.ModelAdmin):
    form = SettingsAdminForm
    fieldsets = [
        (None, {"fields": ["experiment", "ensemble", "name", "version"]}),
        ("Parameters", {"fields": ["params", "params_as_args", "key_prefixing"]}),
        *SETTINGS_FIELDSETS,
    ]
    list_display = ["name", "experiment", "ensemble", "owner", "key_prefixing"]
    list_filter = ["experiment__owner"]
    list_select_related = ["experiment__owner", "ensemble"]
    search_fields = ["name", "experiment__name", "experiment__owner__username"]

    @admin.display(ordering="experiment__owner__username")
    def owner(self, member):
        return member.experiment.owner

    def save_model(self, request, obj, form, change):
        services.member_save(
            experiment=obj.experiment, ensemble=obj.ensemble, member=obj, spec={}, expected_version=form.expected_version
        )


# --- runs: read-only (the app and its tasks write them; an edit here would bypass both) ---


class ReadOnlyAdmin(admin.ModelAdmin):
    show_full_result_count = False  # members and events run into millions: no second COUNT(*)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class RunFilter(admin.SimpleListFilter):
    """By run, among the latest ones (a related-field filter would list every run, each
    with a query for its experiment's name)."""

    title = "run"
    parameter_name = "run"
    CHOICES = 50

    def lookups(self, request, model_admin):
        runs = Run.objects.select_related("experiment__owner").order_by("-created")[: self.CHOICES]
        return [(str(run.pk), f"{run} ({run.experiment.owner})") for run in runs]

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(run_id=value) if value and value.isdigit() else queryset


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "owner", "cluster", "submit_state", "concurrency", "run_as", "created", "finished", "members"]
    list_filter = ["submit_state", "launcher", "cluster", "experiment__owner", "created", "finished"]
    list_select_related = ["experiment__owner"]
    search_fields = ["experiment__name", "experiment__owner__username"]
    date_hierarchy = "created"

    @admin.display(ordering="experiment__owner__username")
    def owner(self, run):
        return run.experiment.owner

    @admin.display(description="members")
    def members(self, run):
        url = reverse("admin:ensembles_memberrun_changelist") + f"?run={run.pk}"
        return format_html('<a href="{}">members</a>', url)


@admin.register(MemberRun)
class MemberRunAdmin(ReadOnlyAdmin):
    list_display = ["name", "run", "kind", "status", "attempt", "latest", "returncode", "job_id", "started", "ended"]
    list_filter = ["status", RunFilter, "kind", "latest"]
    list_select_related = ["run__experiment"]
    search_fields = ["name", "entity", "run__experiment__name"]
    raw_id_fields = ["run", "ensemble", "previous"]


@admin.register(StatusEvent)
class StatusEventAdmin(ReadOnlyAdmin):
    list_display = ["at", "member", "status", "run"]
    list_filter = ["status", RunFilter]
    list_select_related = ["member", "run__experiment"]
    search_fields = ["member__name"]
    raw_id_fields = ["run", "member"]


# --- who members run as -------------------------------------------------------------


class UnixAccountInline(admin.StackedInline):
    model = UnixAccount
    can_delete = True
    verbose_name = "Unix account (members run as it when FLOTILLA_RUN_AS=user)"
    verbose_name_plural = verbose_name


class FlotillaUserAdmin(UserAdmin):
    inlines = [*UserAdmin.inlines, UnixAccountInline]
    list_display = [*UserAdmin.list_display, "unix_account"]
    list_select_related = ["unix_account"]


admin.site.unregister(User)
admin.site.register(User, FlotillaUserAdmin)


@admin.register(UnixAccount)
class UnixAccountAdmin(admin.ModelAdmin):
    list_display = ["user", "name"]
    search_fields = ["user__username", "name"]
    autocomplete_fields = ["user"]


def run_as_warning(request) -> dict:
    """A context processor: on admin pages, say plainly what FLOTILLA_RUN_AS=server means
    while more than one user can launch."""
    if settings.RUN_AS != "server" or not request.path.startswith("/admin/") or not getattr(request.user, "is_staff", False):
        return {}
    launchers = get_user_model().objects.filter(is_active=True).count()
    if launchers <= 1:
        return {}
    return {"run_as_warning": (
        f"Members run as the server's own Unix account (FLOTILLA_RUN_AS=server), and {launchers} users can launch: "
        "each of them can read the server's secrets and every other user's data through their members. "
        "Set FLOTILLA_RUN_AS=user and map each user to a Unix account, or keep one user per Flotilla."
    )}
