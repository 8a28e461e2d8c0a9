"""``python manage.py runjobs``: run the jobs that the views queue, until Ctrl+C or
SIGTERM (``--drain``: until no job is waiting or running). See manage.py."""

from __future__ import annotations

import signal
from typing import Any

import anyio
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

import containerjobs as cj

UNFINISHED = ("pending", "launching", "running")


class Command(BaseCommand):
    help = "Run the containerjobs jobs that the web app queues."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--max-jobs", type=int, default=4, help="jobs at a time (4)")
        parser.add_argument(
            "--drain",
            action="store_true",
            help="exit once no job is waiting or running (for cron jobs, CI and tests)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        anyio.run(self.serve, options["max_jobs"], options["drain"])

    async def serve(self, max_jobs: int, drain: bool) -> None:
        # The Docker daemon at DOCKER_HOST, else the local socket. Name it the same in
        # every worker: slots and adoption go by host name.
        host = cj.DockerHost.from_env("local", max_concurrent_jobs=max_jobs)
        store = cj.storage_from_url(settings.CONTAINERJOBS_DB)
        async with cj.JobManager(hosts=[host], storage=store) as worker:
            if drain:
                self.stdout.write(f"worker {worker.id}: running jobs until none is left")
                while True:
                    counts = (await worker.summary())["jobs"]
                    if not any(counts.get(status) for status in UNFINISHED):
                        break
                    await anyio.sleep(0.5)
            else:
                self.stdout.write(f"worker {worker.id}: running jobs; Ctrl+C to stop")
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
        # Leaving the block detaches jobs still running (the default with a store that
        # persists): the next runjobs, or a `containerjobs worker` on the store, adopts them.
        self.stdout.write("worker stopped")
