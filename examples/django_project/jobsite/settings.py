"""Settings of the example project: only what it needs (no database, no middleware).

A real project keeps its own settings and adds the two CONTAINERJOBS_* ones.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# Set DJANGO_SECRET_KEY in production; this one is for running the example.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = ["reports"]  # the views and the runjobs command
# No middleware, so that curl can post without a CSRF token: a real app keeps its
# CsrfViewMiddleware and authentication in front of views that start jobs.
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "jobsite.urls"
DATABASES: dict[str, dict[str, str]] = {}  # containerjobs keeps its own store
USE_TZ = True

# The job store that the views and the runjobs workers share: a SQLite file or a
# postgresql:// URL (see cj.storage_from_url).
CONTAINERJOBS_DB = os.environ.get("CONTAINERJOBS_DB", str(BASE_DIR / "jobs.db"))
CONTAINERJOBS_IMAGE = os.environ.get("CONTAINERJOBS_IMAGE", "containerjobs-test/busybox:latest")
