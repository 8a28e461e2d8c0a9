"""Each program in examples/ runs as its README header says, against the test bed's
daemon: the script as a process, the web apps through their in-process clients with a
worker on the same store, the notebook through nbclient and a real kernel. The FastAPI
example's own test (the fake cluster, no Docker) runs as a user would run it."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

import containerjobs as cj
from tests.conftest import REPO, Bed, fresh_postgres_database

EXAMPLES = REPO / "examples"


def load(name: str) -> ModuleType:
    """Import examples/NAME.py (examples/ is no package: users run its files)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations there
    spec.loader.exec_module(module)
    return module


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of a text/event-stream body."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields["event"], json.loads(fields["data"])))
    return out


def check_stream(text: str, steps: int, code: int) -> dict[str, Any]:
    """The events of a job of the web examples: its lines, then how it ended."""
    got = events(text)
    lines = [(data["stream"], data["text"]) for name, data in got[:-1] if name == "log"]
    assert lines == [("stdout", f"step {i} of {steps}") for i in range(1, steps + 1)] + [
        ("stderr", f"finished with {code}")
    ], got
    name, end = got[-1]
    assert name == "end", got
    status = "completed" if code == 0 else "failed"
    assert (end["status"], end["exit_code"], end["host"]) == (status, code, "local"), end
    return end


@pytest.fixture
def env(testbed: Bed, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The examples' environment: the test bed's image, and the local daemon."""
    monkeypatch.setenv("CONTAINERJOBS_IMAGE", testbed.image)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    return dict(os.environ)


@contextlib.asynccontextmanager
async def worker_process(store_url: str, env: dict[str, str]) -> AsyncIterator[None]:
    """examples/worker.py on `store_url`, until it said it runs jobs; SIGTERM after."""
    async with await anyio.open_process(
        [sys.executable, str(EXAMPLES / "worker.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env | {"CONTAINERJOBS_DB": store_url},
    ) as worker:
        assert worker.stdout is not None
        said = ""
        with anyio.fail_after(30):
            async for text in TextReceiveStream(worker.stdout):
                said += text
                if "running jobs" in said:
                    break
        try:
            yield
        finally:
            worker.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                async for text in TextReceiveStream(worker.stdout):
                    said += text
                assert await worker.wait() == 0, said
            assert said.rstrip().endswith("worker stopped"), said


# --- the script ------------------------------------------------------------------


def test_the_script_runs_its_jobs(env: dict[str, str], no_leftovers: None) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "script.py")],
        capture_output=True, text=True, timeout=100, env=env, cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    # Each stream in order (the two last lines are written too close together to
    # tell their order across streams).
    assert [line for line in lines[:5] if line.startswith("[stdout]")] == [
        "[stdout] tick 1", "[stdout] tick 2", "[stdout] tick 3", '[stdout] {"ticks": 3}',
    ]
    assert "[stderr] almost done" in lines[3:5]
    assert lines[5].startswith("Job(id=") and "status=completed" in lines[5]
    assert lines[6:] == [
        "parsed output: {'ticks': 3}",
        "1 squared is 1",
        "2 squared is 4",
        "3 squared is 9",
        "failed: exit code 3, stderr 'no input\\n'",
        "timeout: timed out after 1 s; the container was killed; printed 'started\\n'",
    ]
    assert done.stderr == ""


# --- FastAPI ---------------------------------------------------------------------


def test_the_fastapi_example_test_passes_on_the_fake_cluster() -> None:
    """examples/test_fastapi_app.py, run as its header says: no Docker involved."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "examples/test_fastapi_app.py"],
        capture_output=True, text=True, timeout=100, cwd=REPO,
        env=os.environ | {"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "\n4 passed in " in "\n" + done.stdout, done.stdout


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, testbed: Bed, tmp_path: Path
                    ) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "jobs.db")
    else:
        async with fresh_postgres_database(testbed, "cj_examples") as url:
            yield url


async def test_the_fastapi_app_with_a_worker_process(
    store_url: str, env: dict[str, str], no_leftovers: None
) -> None:
    import httpx

    app = load("fastapi_app").create_app(store_url)
    async with (
        worker_process(store_url, env),
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http,
    ):
        for steps, code in ((3, 0), (1, 4)):
            posted = await http.post("/jobs", json={"steps": steps, "exit_code": code})
            assert posted.status_code == 202, posted.text
            job_id = posted.json()["id"]
            streamed = await http.get(f"/jobs/{job_id}/logs")
            assert streamed.headers["content-type"].startswith("text/event-stream")
            end = check_stream(streamed.text, steps, code)
            assert (await http.get(f"/jobs/{job_id}")).json() == end
        listed = (await http.get("/jobs")).json()
        assert [job["exit_code"] for job in listed] == [4, 0]


# --- aiohttp ---------------------------------------------------------------------


async def test_the_aiohttp_app_with_a_worker_in_process(
    tmp_path: Path, env: dict[str, str], local_host: cj.DockerHost, no_leftovers: None
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    store = str(tmp_path / "jobs.db")
    worker = cj.JobManager(hosts=[local_host], storage=cj.SQLiteStorage(store), poll_interval=0.2)
    async with worker, TestClient(TestServer(load("aiohttp_app").create_app(store))) as http:
        posted = await http.post("/jobs", json={"steps": 2})
        assert posted.status == 202
        job_id = (await posted.json())["id"]
        streamed = await http.get(f"/jobs/{job_id}/logs")
        assert streamed.headers["Content-Type"] == "text/event-stream"
        end = check_stream(await streamed.text(), 2, 0)
        assert await (await http.get(f"/jobs/{job_id}")).json() == end
        assert (await http.get("/jobs/nope/logs")).status == 404
        assert (await http.post("/jobs", json={"steps": "1; reboot"})).status == 422


# --- Django ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def django_project() -> Iterator[None]:
    import django

    sys.path.insert(0, str(EXAMPLES / "django_project"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jobsite.settings")
    django.setup()
    yield
    sys.path.remove(str(EXAMPLES / "django_project"))


async def test_the_django_views_and_the_runjobs_command(
    django_project: None, tmp_path: Path, env: dict[str, str], no_leftovers: None
) -> None:
    from django.core.management import call_command
    from django.test import AsyncClient, override_settings

    store = str(tmp_path / "jobs.db")
    http = AsyncClient()
    with override_settings(CONTAINERJOBS_DB=store, CONTAINERJOBS_IMAGE=env["CONTAINERJOBS_IMAGE"]):
        posted = await http.post("/jobs/", {"steps": 2, "exit_code": 5},
                                 content_type="application/json")
        assert posted.status_code == 202, posted.content
        job_id = posted.json()["id"]
        assert posted.json()["status"] == "pending"
        said = io.StringIO()
        async with anyio.create_task_group() as tg:
            # The worker, as `python manage.py runjobs --drain`: it runs the job, then
            # exits since nothing is left (in a thread: the command runs its own loop).
            tg.start_soon(partial(
                anyio.to_thread.run_sync, partial(call_command, "runjobs", "--drain", stdout=said)
            ))
            streamed = await http.get(f"/jobs/{job_id}/logs/")
            assert streamed["Content-Type"] == "text/event-stream"
            body = b"".join([chunk async for chunk in streamed.streaming_content])
        end = check_stream(body.decode(), 2, 5)
        assert (await http.get(f"/jobs/{job_id}/")).json() == end
        assert (await http.get("/jobs/nope/")).status_code == 404
        assert (await http.post("/jobs/", {"steps": 0}, content_type="application/json")
                ).status_code == 422
    assert "running jobs until none is left" in said.getvalue()
    assert said.getvalue().rstrip().endswith("worker stopped")


# --- the notebook ----------------------------------------------------------------


def outputs(nb: Any, tag: str) -> list[Any]:
    [cell] = [cell for cell in nb.cells if tag in cell.metadata.get("tags", [])]
    return list(cell.outputs)


async def test_the_notebook_runs_in_a_kernel(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, no_leftovers: None
) -> None:
    import nbformat
    from nbclient import NotebookClient

    # jupyter_core warns about its coming change of folders unless told which to use.
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    nb = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    client = NotebookClient(
        nb, timeout=60, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working folder
    )
    await client.async_execute()

    every = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in every if output.output_type == "error"]
    assert (tmp_path / "notebook-jobs.db").is_file()
    # Live logs: both streams, line by line, in order.
    printed = "".join(output.text for output in outputs(nb, "logs"))
    assert [line.split(" ", 1)[1] for line in printed.splitlines()] == [
        f"stdout: tick {i}" for i in range(1, 6)
    ] + ["stderr: all done"]
    # A job: a table in Jupyter, one line as text.
    [job] = outputs(nb, "job")
    assert job.data["text/html"].startswith("<table") and "completed" in job.data["text/html"]
    assert job.data["text/plain"].startswith("Job(id=") and "\n" not in job.data["text/plain"]
    # The jobs: one table of five rows, one of them failed.
    [jobs] = outputs(nb, "jobs")
    assert "5 jobs" in jobs.data["text/html"] and jobs.data["text/html"].count("<table") == 1
    assert "failed" in jobs.data["text/html"]
    [summary] = outputs(nb, "summary")
    assert "<table" in summary.data["text/html"] and "local" in summary.data["text/html"]
    assert len(json.dumps([output for output in every])) < 60_000
