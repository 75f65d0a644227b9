from django.urls import path, re_path
from django.views.generic import RedirectView

from . import views

app_name = "ensembles"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="ensembles:experiment_list"), name="home"),
    path("experiments/", views.experiment_list, name="experiment_list"),
    path("experiments/new", views.experiment_create, name="experiment_create"),
    path("experiments/<int:pk>/", views.experiment_detail, name="experiment_detail"),
    path("experiments/<int:pk>/edit", views.experiment_edit, name="experiment_edit"),
    path("experiments/<int:pk>/delete", views.experiment_delete, name="experiment_delete"),
    path("experiments/<int:experiment_pk>/ensembles/new", views.ensemble_edit, name="ensemble_create"),
    path("experiments/<int:experiment_pk>/ensembles/preview", views.ensemble_preview, name="ensemble_preview_new"),
    path("experiments/<int:experiment_pk>/models/new", views.member_edit, name="model_create"),
    path("ensembles/<int:pk>/", views.ensemble_edit, name="ensemble_edit"),
    path("ensembles/<int:pk>/preview", views.ensemble_preview, name="ensemble_preview"),
    path("ensembles/<int:pk>/delete", views.ensemble_delete, name="ensemble_delete"),
    path("ensembles/<int:pk>/files", views.file_attach, name="file_attach"),
    path("ensembles/<int:ensemble_pk>/members/new", views.member_edit, name="member_create"),
    path("files/<int:pk>/detach", views.file_detach, name="file_detach"),
    path("files/browse", views.file_browse, name="file_browse"),
    path("members/<int:pk>/", views.member_edit, name="member_edit"),
    path("members/<int:pk>/delete", views.member_delete, name="member_delete"),
]

urlpatterns += [
    path("experiments/<int:pk>/launch", views.run_launch, name="run_launch"),
    path("runs/<int:pk>/", views.run_detail, name="run_detail"),
    path("runs/<int:pk>/members", views.run_members, name="run_members"),
    path("runs/<int:pk>/compare", views.run_compare, name="run_compare"),
    path("runs/<int:pk>/plots", views.run_plots, name="run_plots"),
    path("runs/<int:pk>/cancel", views.run_cancel, name="run_cancel"),
    path("runs/<int:pk>/rerun", views.run_rerun, name="run_rerun"),
    path("runs/<int:pk>/delete", views.run_delete, name="run_delete"),
    re_path(r"^runs/(?P<pk>[0-9]+)/export\.(?P<fmt>csv|json)$", views.run_export, name="run_export"),
    path("member-runs/<int:pk>/", views.member_run_detail, name="member_run_detail"),
    path("member-runs/<int:pk>/cancel", views.member_run_cancel, name="member_run_cancel"),
    path("member-runs/<int:pk>/status", views.member_run_status, name="member_run_status"),
    path("member-runs/<int:pk>/files/", views.member_run_files, name="member_run_files"),
    path("member-runs/<int:pk>/files/<str:name>", views.member_run_file, name="member_run_file"),
]

urlpatterns += [path("experiments/demo", views.demo_create, name="demo_create")]
