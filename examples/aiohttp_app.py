"""An aiohttp app that queues container jobs and streams their logs as server-sent events.

The same API as fastapi_app.py, on aiohttp alone (it comes with containerjobs). The
app holds a client manager (``hosts=[]``) on a shared store; a separate worker
process runs the jobs.

Run it, in two terminals, both on the same store::

    pip install containerjobs
    export CONTAINERJOBS_DB=jobs.db        # a SQLite file, or postgresql://USER:PASSWORD@HOST/DB
    python examples/worker.py              # or: containerjobs worker --db "$CONTAINERJOBS_DB"
    python examples/aiohttp_app.py         # serves http://127.0.0.1:8080

Then::

    curl -s localhost:8080/jobs -H 'content-type: application/json' -d '{"steps": 3}'
    curl -sN localhost:8080/jobs/JOB_ID/logs  # "event: log" per line, then "event: end"
    curl -s localhost:8080/jobs/JOB_ID
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

import containerjobs as cj

IMAGE = os.environ.get("CONTAINERJOBS_IMAGE", "containerjobs-test/busybox:latest")
JOBS = web.AppKey("jobs", cj.JobManager)  # where the app keeps its client manager
routes = web.RouteTableDef()


def job_out(job: cj.Job) -> dict[str, Any]:
    """A job as the API shows it: how it stands or how it ended, not its output."""
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status.value,
        "host": job.host,
        "exit_code": job.exit_code,
        "error": job.error,
    }


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event; JSON keeps a line's text on one ``data:`` line."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def number(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise web.HTTPUnprocessableEntity(text=f"{key} must be a whole number {low}..{high}")
    return value


@routes.post("/jobs")
async def submit(request: web.Request) -> web.Response:
    body = await request.json()
    if not isinstance(body, dict):
        raise web.HTTPUnprocessableEntity(text="expected a JSON object")
    # The command is built from checked numbers, never taken from the request.
    steps = number(body, "steps", 3, 1, 100)
    code = number(body, "exit_code", 0, 0, 255)
    job = await request.app[JOBS].submit(
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
    return web.json_response(job_out(job), status=202)


@routes.get("/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    try:
        return web.json_response(job_out(await request.app[JOBS].get(job_id)))
    except cj.JobNotFound:
        raise web.HTTPNotFound(text=f"no job {job_id}") from None


@routes.get("/jobs/{job_id}/logs")
async def logs(request: web.Request) -> web.StreamResponse:
    client, job_id = request.app[JOBS], request.match_info["job_id"]
    try:
        await client.get(job_id)  # an unknown id is a 404 now, not an error mid-stream
    except cj.JobNotFound:
        raise web.HTTPNotFound(text=f"no job {job_id}") from None
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    try:
        async for line in client.logs(job_id):  # live; ends when the job ends
            data = {"stream": line.stream, "text": line.text, "at": line.timestamp.isoformat()}
            await response.write(sse("log", data))
        # The last event says how the job ended.
        await response.write(sse("end", job_out(await client.wait(job_id))))
    except cj.ContainerJobsError as exc:  # the store failed, say
        await response.write(sse("error", {"error": str(exc)}))
    await response.write_eof()
    return response


def create_app(store_url: str | None = None) -> web.Application:
    """The app, on the store `store_url` (default: $CONTAINERJOBS_DB, else jobs.db)."""
    url = store_url or os.environ.get("CONTAINERJOBS_DB", "jobs.db")

    async def client_manager(app: web.Application) -> AsyncIterator[None]:
        # A client: it stores and reads jobs; the workers on the same store run them.
        # start() and close(), not `async with`: aiohttp may run start-up and clean-up
        # in different tasks, and a manager's `async with` must stay in one.
        client = cj.JobManager(hosts=[], storage=cj.storage_from_url(url))
        await client.start()
        app[JOBS] = client
        try:
            yield
        finally:
            await client.close()

    app = web.Application()
    app.cleanup_ctx.append(client_manager)
    app.add_routes(routes)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=8080)
