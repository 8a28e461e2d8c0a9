"""The example's URLs: queue a job, read it, follow its logs."""

from django.urls import path
from reports import views

urlpatterns = [
    path("jobs/", views.submit),
    path("jobs/<str:job_id>/", views.job),
    path("jobs/<str:job_id>/logs/", views.logs),
]
