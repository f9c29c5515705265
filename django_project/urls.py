"""The contract's routes, plus Django's admin at ``/admin/``."""

from django.contrib import admin
from django.urls import path

from django_project import views

urlpatterns = [
    path("", views.index),
    path("assets/<str:name>", views.page_asset),
    path("healthz", views.healthz),
    path("completion", views.completion),
    path("completionChat", views.completion_chat),
    path("completions/chat", views.completions_chat),
    path("api/stream", views.api_stream),
    path("admin/", admin.site.urls),
]
