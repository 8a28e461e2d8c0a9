#!/usr/bin/env python
"""A Django project whose async views queue container jobs and stream their logs, and
whose management command ``runjobs`` runs them.

Django's ASGI handler has no lifespan, so the views open a client manager
(``hosts=[]``) for each request on a shared store, and ``runjobs`` (or
``containerjobs worker``) runs the jobs in another process.

Run it, in two terminals, from examples/django_project, both on the same store::

    pip install 'containerjobs[examples]'
    export CONTAINERJOBS_DB=$PWD/jobs.db   # a SQLite file, or postgresql://USER:PASSWORD@HOST/DB
    python manage.py runjobs               # the worker; --drain exits once the queue is empty
    uvicorn jobsite.asgi:application       # the web app (log streams need an ASGI server)

Then::

    curl -s localhost:8000/jobs/ -H 'content-type: application/json' -d '{"steps": 3}'
    curl -sN localhost:8000/jobs/JOB_ID/logs/  # "event: log" per line, then "event: end"
    curl -s localhost:8000/jobs/JOB_ID/
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jobsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
