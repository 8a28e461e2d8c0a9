"""The ASGI application, for uvicorn (or daphne, hypercorn):
``uvicorn jobsite.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jobsite.settings")
application = get_asgi_application()
