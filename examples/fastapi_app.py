"""A FastAPI app that queues container jobs and streams their logs as server-sent events.

The web process runs no job: its manager is a *client* (``hosts=[]``) on a shared
store, opened and closed by the app's lifespan, and a separate worker process runs
the jobs. Run as many web processes and workers as you like on one store.

Run it, in two terminals, both on the same store::

    pip install 'containerjobs[examples]'
    export CONTAINERJOBS_DB=jobs.db        # a SQLite file, or postgresql://USER:PASSWORD@HOST/DB
    python examples/worker.py              # or: containerjobs worker --db "$CONTAINERJOBS_DB"
    uvicorn --app-dir examples fastapi_app:app

Then::

    curl -s localhost:8000/jobs -H 'content-type: application/json' -d '{"steps": 3}'
    curl -sN localhost:8000/jobs/JOB_ID/logs  # "event: log" per line, then "event: end"
    curl -s localhost:8000/jobs/JOB_ID        # its status and exit code

The log stream ends with an ``end`` event that tells how the job ended (its status,
exit code and error), so a browser's ``EventSource`` knows when to close. Its test,
with the library's fake cluster and no Docker, is examples/test_fastapi_app.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

import containerjobs as cj

IMAGE = os.environ.get("CONTAINERJOBS_IMAGE", "containerjobs-test/busybox:latest")


class JobRequest(BaseModel):
    """What a caller may ask for. The command is built here from checked numbers and
    never taken from the request: whoever can post would run anything otherwise."""

    steps: int = Field(3, ge=1, le=100)
    exit_code: int = Field(0, ge=0, le=255)


class JobOut(BaseModel):
    """A job as the API shows it: how it stands or how it ended, not its output."""

    id: str
    name: str | None
    status: str
    host: str | None
    exit_code: int | None
    error: str | None

    @classmethod
    def of(cls, job: cj.Job) -> JobOut:
        return cls(
            id=job.id,
            name=job.name,
            status=job.status.value,
            host=job.host,
            exit_code=job.exit_code,
            error=job.error,
        )


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event; JSON keeps a line's text on one ``data:`` line."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def client_manager(request: Request) -> cj.JobManager:
    """The app's client manager, which its lifespan opened."""
    manager: cj.JobManager = request.app.state.jobs
    return manager


Jobs = Annotated[cj.JobManager, Depends(client_manager)]


def create_app(store_url: str | None = None) -> FastAPI:
    """The app, on the store `store_url` (default: $CONTAINERJOBS_DB, else jobs.db)."""
    url = store_url or os.environ.get("CONTAINERJOBS_DB", "jobs.db")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A client: it stores and reads jobs; the workers on the same store run them.
        async with cj.JobManager(hosts=[], storage=cj.storage_from_url(url)) as client:
            app.state.jobs = client
            yield

    app = FastAPI(title="containerjobs example", lifespan=lifespan)

    @app.exception_handler(cj.JobNotFound)
    async def not_found(request: Request, exc: cj.JobNotFound) -> JSONResponse:
        return JSONResponse({"detail": f"no job {request.path_params.get('job_id')}"}, 404)

    @app.post("/jobs", status_code=202)
    async def submit(body: JobRequest, client: Jobs) -> JobOut:
        steps, code = body.steps, body.exit_code
        job = await client.submit(
            cj.JobSpec(
                IMAGE,
                f'for i in $(seq 1 {steps}); do echo "step $i of {steps}"; sleep 0.2; done; '
                f'echo "finished with {code}" >&2; exit {code}',
                name=f"steps-{steps}",
                memory_limit_mb=64,
                cpu_limit=0.5,
                timeout_seconds=120,
            )
        )
        return JobOut.of(job)  # pending: a worker picks it up within a second

    @app.get("/jobs")
    async def list_jobs(client: Jobs, status: cj.JobStatus | None = None) -> list[JobOut]:
        return [JobOut.of(job) for job in await client.list_jobs(status=status, limit=20)]

    @app.get("/jobs/{job_id}")
    async def get_job(job_id: str, client: Jobs) -> JobOut:
        return JobOut.of(await client.get(job_id))

    @app.get("/jobs/{job_id}/logs")
    async def logs(job_id: str, client: Jobs) -> StreamingResponse:
        await client.get(job_id)  # an unknown id is a 404 now, not an error mid-stream

        async def events() -> AsyncIterator[str]:
            try:
                async for line in client.logs(job_id):  # live; ends when the job ends
                    data = {"stream": line.stream, "text": line.text,
                            "at": line.timestamp.isoformat()}
                    yield sse("log", data)
                # The last event says how the job ended.
                yield sse("end", JobOut.of(await client.wait(job_id)).model_dump())
            except cj.ContainerJobsError as exc:  # the store failed, say
                yield sse("error", {"error": str(exc)})

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            # Not cached, and not buffered by a proxy such as nginx: each line as it comes.
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


app = create_app()
