from django.contrib import admin

from .models import AttachedFile, Ensemble, Experiment, Member


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
