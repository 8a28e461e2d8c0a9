"""A worker: runs the jobs that the web examples queue, until Ctrl+C or SIGTERM.

The web apps (fastapi_app.py, aiohttp_app.py, django_project/) only store jobs and
read them; this process runs them. Point both at the same store::

    pip install 'containerjobs[examples]'
    export CONTAINERJOBS_DB=jobs.db        # a SQLite file, or postgresql://USER:PASSWORD@HOST/DB
    python examples/worker.py

``containerjobs worker --db "$CONTAINERJOBS_DB"`` does the same from the command line.
Start as many workers as you like: each job runs once, and the jobs of a worker that
dies are adopted by another. SQLite serves the processes of one machine; PostgreSQL
serves workers anywhere.

Jobs run on the Docker daemon at DOCKER_HOST (else the local socket), at most
$CONTAINERJOBS_MAX_JOBS (default 4) at a time.
"""

from __future__ import annotations

import os
import signal

import anyio

import containerjobs as cj


async def main() -> None:
    store = cj.storage_from_url(os.environ.get("CONTAINERJOBS_DB", "jobs.db"))
    # Name the daemon the same in every worker: slots and adoption go by host name.
    host = cj.DockerHost.from_env(
        "local", max_concurrent_jobs=int(os.environ.get("CONTAINERJOBS_MAX_JOBS", "4"))
    )
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with cj.JobManager(hosts=[host], storage=store) as worker:
            print(f"worker {worker.id} running jobs on {host.url}; Ctrl+C to stop", flush=True)
            async for _ in signals:
                break
    # Leaving the block detaches the jobs still running (the default with a store
    # that persists): the next worker on the store adopts them and finishes them.
    print("worker stopped", flush=True)


if __name__ == "__main__":
    anyio.run(main)
