"""Shared fixtures. Docker tests need the project's test bed (scripts/testbed up):
when it is missing they fail, loudly, rather than skip."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import attrs
import pytest
from anyio.streams.text import TextReceiveStream
from hypothesis import HealthCheck, settings

import containerjobs as cj

# Hypothesis judges speed by the clock; on a loaded 2-core CI machine that is noise,
# and timed assertions have no place in the tests (benchmarks/ measures speed).
settings.register_profile(
    "containerjobs", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("containerjobs")

TESTBED_ENV = Path(os.environ.get("CJ_TESTBED_ENV", "/var/lib/containerjobs-testbed/env"))
LOCAL_SOCKET = "unix:///var/run/docker.sock"
REPO = Path(__file__).resolve().parent.parent


@attrs.frozen
class Bed:
    image: str
    tls_url: str
    cert_dir: Path
    wrong_ca: Path
    docker2_socket: str
    registry: str
    registry_image: str
    registry_user: str
    registry_password: str
    postgres_url: str  # postgresql://cjtest:...@127.0.0.1:55432/containerjobs_test
    swarm2_socket: str  # the swarm's second node (a worker), "" when the bed has none
    swarm2_node: str  # its node id

    def docker(self, *args: str, socket: str = LOCAL_SOCKET) -> str:
        """Run the docker CLI against a daemon of the test bed; return its stdout."""
        done = subprocess.run(
            ["docker", "-H", socket, *args], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def testbed_script(self, command: str) -> None:
        """Run ``scripts/testbed COMMAND`` (start-second, stop-second, ...)."""
        done = subprocess.run([str(REPO / "scripts" / "testbed"), command],
                              capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise AssertionError(f"scripts/testbed {command} failed: {done.stderr}")

    @staticmethod
    def docker2_pid() -> int:
        """The second daemon's process id (to freeze it with SIGSTOP)."""
        return int(Path("/run/containerjobs-testbed/docker2.pid").read_text().strip())

    def labelled_containers(self, socket: str = LOCAL_SOCKET) -> list[str]:
        out = self.docker("ps", "-aq", "--filter", "label=containerjobs.job_id", socket=socket)
        return out.split()


def _read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            values[key] = shlex.split(value)[0] if value else ""
    return values


@pytest.fixture(scope="session")
def testbed() -> Bed:
    if not TESTBED_ENV.is_file():
        pytest.fail(
            f"the Docker test bed is missing ({TESTBED_ENV} not found): run scripts/testbed up",
            pytrace=False,
        )
    env = _read_env(TESTBED_ENV)
    if "CJ_POSTGRES_URL" not in env:
        pytest.fail(
            f"the test bed has no PostgreSQL (no CJ_POSTGRES_URL in {TESTBED_ENV}):"
            " run scripts/testbed up",
            pytrace=False,
        )
    bed = Bed(
        image=env["CJ_TEST_IMAGE"],
        tls_url=env["CJ_TLS_HOST"],
        cert_dir=Path(env["CJ_TLS_CERT_DIR"]),
        wrong_ca=Path(env["CJ_TLS_WRONG_CA"]),
        docker2_socket=env["CJ_DOCKER2_SOCKET"],
        registry=env["CJ_REGISTRY"],
        registry_image=env["CJ_REGISTRY_IMAGE"],
        registry_user=env["CJ_REGISTRY_USER"],
        registry_password=env["CJ_REGISTRY_PASSWORD"],
        postgres_url=env["CJ_POSTGRES_URL"],
        swarm2_socket=env.get("CJ_SWARM2_SOCKET", ""),
        swarm2_node=env.get("CJ_SWARM2_NODE", ""),
    )
    try:
        info = json.loads(bed.docker("info", "--format", "{{json .ServerVersion}}"))
    except (AssertionError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(
            f"the test bed's dockerd does not answer: {exc}; run scripts/testbed up", pytrace=False
        )
    assert info, "dockerd answered without a version"
    return bed


@pytest.fixture
def image(testbed: Bed) -> str:
    return testbed.image


@pytest.fixture
def local_host(testbed: Bed) -> cj.DockerHost:
    return cj.DockerHost("local", LOCAL_SOCKET, max_concurrent_jobs=8)


@pytest.fixture
def no_leftovers(testbed: Bed) -> Iterator[None]:
    """Fail a test that leaves a labelled container behind on the local daemon.

    Only containers that appeared during the test count, so that other users of the
    daemon (a benchmark, another checkout's tests) neither fail it nor lose theirs.
    """
    before = set(testbed.labelled_containers())
    yield
    left = set(testbed.labelled_containers()) - before
    assert not left, f"containers left behind: {sorted(left)}"


def labelled_services(bed: Bed) -> list[str]:
    out = bed.docker("service", "ls", "--filter", "label=containerjobs.job_id",
                     "--format", "{{.ID}}")
    ids = out.split()
    # The CLI shortens ids: the full ones, as jobs record them.
    return bed.docker("service", "inspect", "--format", "{{.ID}}", *ids).split() if ids else []


@pytest.fixture
def no_services(testbed: Bed, no_leftovers: None) -> Iterator[None]:
    """Fail a test that leaves a labelled service (or task container) behind."""
    before = set(labelled_services(testbed))
    yield
    left = set(labelled_services(testbed)) - before
    assert not left, f"services left behind: {sorted(left)}"


@pytest.fixture
async def manager(local_host: cj.DockerHost, no_leftovers: None) -> AsyncIterator[cj.JobManager]:
    async with cj.JobManager(hosts=[local_host]) as manager:
        yield manager


async def until_status(manager: cj.JobManager, job_id: str, status: cj.JobStatus) -> cj.Job:
    """Wait, on the manager's events, until the job reaches `status`."""
    events = manager.events()  # subscribed from this call on: no change slips by
    try:
        job = await manager.get(job_id)
        while job.status is not status:
            assert not job.status.is_terminal, f"job ended {job.status} before {status}"
            async for event in events:
                if event.job_id == job_id:
                    break
            job = await manager.get(job_id)
        return job
    finally:
        await events.aclose()


async def kill_when_ready(script: str, folder: Path, *args: str) -> None:
    """Run the Python `script` (written into `folder`) with `args`, and SIGKILL it once
    it prints "ready": a manager that dies without a word, jobs running."""
    path = folder / "hang.py"
    path.write_text(script)
    async with await anyio.open_process(
        [sys.executable, str(path), *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO,
    ) as child:
        assert child.stdout is not None
        with anyio.fail_after(60):
            async for text in TextReceiveStream(child.stdout):
                if "ready" in text:
                    break
        child.send_signal(signal.SIGKILL)
        await child.wait()


async def _postgres_admin(url: str, statement: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    with anyio.fail_after(30):
        while True:  # the server may still be starting after a test restarted it
            try:
                connection = await asyncpg.connect(url)
                break
            except OSError:
                await anyio.sleep(0.2)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def fresh_postgres_database(bed: Bed, prefix: str) -> AsyncIterator[str]:
    """The URL of a new, empty database on the test bed's PostgreSQL, dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await _postgres_admin(bed.postgres_url, f'CREATE DATABASE "{name}"')
    try:
        yield bed.postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        # A new connection: a test may have restarted the server meanwhile.
        await _postgres_admin(bed.postgres_url, f'DROP DATABASE "{name}" WITH (FORCE)')
