from django.urls import path
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
    path("members/<int:pk>/", views.member_edit, name="member_edit"),
    path("members/<int:pk>/delete", views.member_delete, name="member_delete"),
]
