"""Async views: queue a job, read how it stands, follow its logs as server-sent events.

They only store and read jobs, through a client manager (``hosts=[]``); the
``runjobs`` command runs them. How to run the project: see manage.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET, require_POST

import containerjobs as cj


def job_client() -> cj.JobManager:
    # Django has no lifespan to hold one manager open, so each request opens its own
    # client: a client holds no lease and runs nothing, so opening one is cheap.
    return cj.JobManager(hosts=[], storage=cj.storage_from_url(settings.CONTAINERJOBS_DB))


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


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event; JSON keeps a line's text on one ``data:`` line."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def checked(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int | None:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


@require_POST
async def submit(request: HttpRequest) -> JsonResponse:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"error": "expected a JSON object"}, status=400)
    body = body if isinstance(body, dict) else {}
    # The command is built from checked numbers, never taken from the request.
    steps, code = checked(body, "steps", 3, 1, 100), checked(body, "exit_code", 0, 0, 255)
    if steps is None or code is None:
        return JsonResponse({"error": "steps: 1..100, exit_code: 0..255"}, status=422)
    async with job_client() as client:
        job = await client.submit(
            cj.JobSpec(
                settings.CONTAINERJOBS_IMAGE,
                f'for i in $(seq 1 {steps}); do echo "step $i of {steps}"; sleep 0.2; done; '
                f'echo "finished with {code}" >&2; exit {code}',
                name=f"steps-{steps}",
                memory_limit_mb=64,
                cpu_limit=0.5,
                timeout_seconds=120,
            )
        )
    return JsonResponse(job_out(job), status=202)


@require_GET
async def job(request: HttpRequest, job_id: str) -> JsonResponse:
    async with job_client() as client:
        try:
            found = await client.get(job_id)
        except cj.JobNotFound:
            return JsonResponse({"error": f"no job {job_id}"}, status=404)
    return JsonResponse(job_out(found))


@require_GET
async def logs(request: HttpRequest, job_id: str) -> HttpResponse:
    async with job_client() as client:
        try:
            await client.get(job_id)  # an unknown id is a 404 now, not an error mid-stream
        except cj.JobNotFound:
            return JsonResponse({"error": f"no job {job_id}"}, status=404)

    async def events() -> AsyncIterator[str]:
        # The stream holds a client of its own for as long as it lasts.
        async with job_client() as client:
            try:
                async for line in client.logs(job_id):  # live; ends when the job ends
                    data = {"stream": line.stream, "text": line.text,
                            "at": line.timestamp.isoformat()}
                    yield sse("log", data)
                # The last event says how the job ended.
                yield sse("end", job_out(await client.wait(job_id)))
            except cj.ContainerJobsError as exc:  # the store failed, say
                yield sse("error", {"error": str(exc)})

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response
