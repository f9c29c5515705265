"""The contract's routes, plus Django's admin at ``/admin/``; errors as JSON."""

from django.contrib import admin
from django.urls import path

from django_project import views

handler400 = "django_project.errors.bad_request"
handler403 = "django_project.errors.forbidden"
handler404 = "django_project.errors.not_found"
handler500 = "django_project.errors.server_error"

urlpatterns = [
    path("", views.index),
    path("assets/<str:name>", views.page_asset),
    path("use-chat", views.use_chat_page),
    path("use-chat/<str:name>", views.use_chat_asset),
    path("healthz", views.healthz),
    path("completion", views.completion),
    path("completionChat", views.completion_chat),
    path("completions/chat", views.completions_chat),
    path("api/stream", views.api_stream),
    path("api/chat", views.api_chat),
    path("api/chat/<str:chat_id>/stream", views.api_chat_stream),
    path("streams/<str:answer_id>", views.stop_stream),
    path("admin/", admin.site.urls),
]
