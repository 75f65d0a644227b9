from django.conf import settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from .models import AttachedFile, Ensemble, Experiment, Member, UnixAccount

User = get_user_model()


class EnsembleInline(admin.TabularInline):
    model = Ensemble
    fields = ["name", "perm_strategy", "replicas"]
    extra = 0
    show_change_link = True


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "launcher", "created"]
    list_filter = ["launcher"]
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


@admin.register(Ensemble)
class EnsembleAdmin(admin.ModelAdmin):
    list_display = ["name", "experiment", "perm_strategy", "replicas", "updated"]
    list_filter = ["perm_strategy"]
    search_fields = ["name", "experiment__name"]
    inlines = [AttachedFileInline]


@admin.register(Member)
class MemberAdmin(admin.ModelAdmin):
    list_display = ["name", "experiment", "ensemble", "key_prefixing"]
    search_fields = ["name", "experiment__name"]


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
