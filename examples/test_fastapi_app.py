"""Testing the FastAPI example with the library's fake cluster: no Docker needed.

Run it::

    pip install 'containerjobs[examples]'
    python -m pytest examples/test_fastapi_app.py

A worker manager in the test process, on the same SQLite file as the app, runs the
jobs on `FakeCluster`, which does what each test tells it (print this, exit with
that). The app talks to the store exactly as in production; only the engine is fake.
httpx calls the app in-process, its lifespan entered by hand (ASGITransport does not).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi_app import create_app

import containerjobs as cj
from containerjobs.testing import FakeCluster, FakeRun

pytestmark = pytest.mark.asyncio


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster(lambda job: FakeRun(stdout="step 1 of 2\nstep 2 of 2\n", stderr="done\n"))


@pytest_asyncio.fixture
async def http(tmp_path: Path, cluster: FakeCluster) -> AsyncIterator[httpx.AsyncClient]:
    store = str(tmp_path / "jobs.db")
    worker = cj.JobManager(
        hosts=[cj.DockerHost("fake", "unix:///fake.sock")],
        storage=cj.SQLiteStorage(store),
        executor_factory=cluster,  # the fake engine in place of Docker
        poll_interval=0.1,  # find the app's jobs quickly
    )
    app = create_app(store)
    async with (
        worker,
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http,
    ):
        yield http


def events(text: str) -> list[tuple[str, dict[str, object]]]:
    """The (event, data) pairs of a text/event-stream body."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields["event"], json.loads(fields["data"])))
    return out


async def test_a_job_streams_its_logs_then_how_it_ended(http: httpx.AsyncClient) -> None:
    posted = await http.post("/jobs", json={"steps": 2})
    assert posted.status_code == 202 and posted.json()["status"] == "pending"
    job_id = posted.json()["id"]

    streamed = await http.get(f"/jobs/{job_id}/logs")
    assert streamed.headers["content-type"].startswith("text/event-stream")
    got = events(streamed.text)
    assert [(name, data.get("stream"), data.get("text")) for name, data in got[:-1]] == [
        ("log", "stdout", "step 1 of 2"),
        ("log", "stdout", "step 2 of 2"),
        ("log", "stderr", "done"),
    ]
    assert got[-1][0] == "end"
    assert got[-1][1] == {
        "id": job_id, "name": "steps-2", "status": "completed", "host": "fake",
        "exit_code": 0, "error": None,
    }
    assert (await http.get(f"/jobs/{job_id}")).json()["status"] == "completed"


async def test_a_failing_job_ends_its_stream_with_its_exit_code(
    http: httpx.AsyncClient, cluster: FakeCluster
) -> None:
    cluster.behaviour = lambda job: FakeRun(stderr="no input\n", exit_code=3)
    job_id = (await http.post("/jobs", json={"steps": 1, "exit_code": 3})).json()["id"]
    name, end = events((await http.get(f"/jobs/{job_id}/logs")).text)[-1]
    assert (name, end["status"], end["exit_code"]) == ("end", "failed", 3)
    listed = (await http.get("/jobs", params={"status": "failed"})).json()
    assert [job["id"] for job in listed] == [job_id]


async def test_the_app_runs_only_the_commands_it_builds(http: httpx.AsyncClient) -> None:
    refused = await http.post("/jobs", json={"steps": 0})
    assert refused.status_code == 422
    assert (await http.post("/jobs", json={"steps": "1; rm -rf /"})).status_code == 422


async def test_an_unknown_job_is_a_404(http: httpx.AsyncClient) -> None:
    for path in ("/jobs/nope", "/jobs/nope/logs"):
        response = await http.get(path)
        assert (response.status_code, response.json()) == (404, {"detail": "no job nope"})
