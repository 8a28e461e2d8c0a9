"""PostgreSQL as the one store of many workers: exactly once across daemons, waits
told across processes, a server restart ridden out. On the test bed's real daemons
and PostgreSQL."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

import containerjobs as cj
from tests.conftest import LOCAL_SOCKET, REPO, Bed, fresh_postgres_database

pytestmark = pytest.mark.docker

@pytest.fixture
async def pg_url(testbed: Bed) -> AsyncIterator[str]:
    """A fresh database on the test bed's PostgreSQL."""
    async with fresh_postgres_database(testbed, "cj_scale") as url:
        yield url


def _worker(url: str, host: str, cert_dir: Path | None = None) -> list[str]:
    command = [sys.executable, "-m", "containerjobs", "worker", "--db", url,
               "--host", host, "--max-jobs", "2", "--lease-ttl", "5"]
    if cert_dir is not None:
        command += ["--tls-dir", str(cert_dir)]
    return command


def _running(testbed: Bed, socket: str) -> int:
    out = testbed.docker("ps", "-q", "--filter", "label=containerjobs.job_id",
                         "--filter", "status=running", socket=socket)
    return len(out.split())


async def test_three_workers_on_two_daemons_run_each_job_once(
    testbed: Bed, pg_url: str, no_leftovers: None
) -> None:
    # Two workers share the local daemon (one name, so one set of two slots); the
    # third has the second daemon, over TLS.
    commands = [
        _worker(pg_url, f"local={LOCAL_SOCKET}"),
        _worker(pg_url, f"local={LOCAL_SOCKET}"),
        _worker(pg_url, f"remote={testbed.tls_url}", testbed.cert_dir),
    ]
    workers = [
        await anyio.open_process(command, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, cwd=REPO)
        for command in commands
    ]
    peaks = {"local": 0, "remote": 0}
    sampling = True

    async def sample() -> None:
        while sampling:
            for name, socket in (("local", LOCAL_SOCKET), ("remote", testbed.docker2_socket)):
                count = await anyio.to_thread.run_sync(_running, testbed, socket)
                peaks[name] = max(peaks[name], count)
            await anyio.sleep(0.1)

    try:
        async with cj.JobManager(hosts=[], storage=cj.storage_from_url(pg_url)) as client:
            specs = [cj.JobSpec(image=testbed.image, command=f"sleep 0.3; echo job {i}")
                     for i in range(60)]
            async with anyio.create_task_group() as tg:
                tg.start_soon(sample)
                jobs = await client.submit_many(specs)
                done = [await client.wait(job.id, timeout=300) for job in jobs]
                sampling = False
    finally:
        for worker in workers:
            worker.terminate()
        with anyio.fail_after(60):
            codes = [await worker.wait() for worker in workers]
        for worker in workers:
            await worker.aclose()
    assert codes == [0, 0, 0]
    for i, job in enumerate(done):
        assert job.status is cj.JobStatus.COMPLETED, job.error
        assert job.attempts == 1 and job.stdout == f"job {i}\n"
    assert {job.host for job in done} == {"local", "remote"}  # both daemons ran jobs
    assert peaks["local"] <= 2 and peaks["remote"] <= 2, peaks
    assert not testbed.labelled_containers(testbed.docker2_socket)


async def test_a_client_is_told_when_another_process_ends_a_job(
    testbed: Bed, pg_url: str, no_leftovers: None
) -> None:
    worker = await anyio.open_process(_worker(pg_url, f"local={LOCAL_SOCKET}"),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      cwd=REPO)
    try:
        # A poll interval far longer than the latency asked: only the store's
        # notification can wake the client in time.
        async with cj.JobManager(hosts=[], storage=cj.storage_from_url(pg_url),
                                 poll_interval=30) as client:
            events = client.events()
            job = await client.submit(cj.JobSpec(image=testbed.image, command="echo hi"))
            done = await client.wait(job.id, timeout=60)
            told = time.time()
            seen = []
            async for event in events:
                seen.append(event.status)
                if event.status.is_terminal:
                    break
    finally:
        worker.terminate()
        await worker.wait()
        await worker.aclose()
    assert done.status is cj.JobStatus.COMPLETED and done.completed_at is not None
    latency = told - done.completed_at.timestamp()
    # Measured, not a benchmark: well under the 5 s fallback poll means it was told.
    assert latency < 1.0, latency
    assert seen == [cj.JobStatus.PENDING, cj.JobStatus.LAUNCHING, cj.JobStatus.RUNNING,
                    cj.JobStatus.COMPLETED]


async def test_a_postgresql_restart_while_jobs_run_loses_nothing(
    testbed: Bed, pg_url: str, caplog: pytest.LogCaptureFixture, no_leftovers: None
) -> None:
    caplog.set_level(logging.WARNING, logger="containerjobs")
    host = cj.DockerHost("local", LOCAL_SOCKET)
    async with cj.JobManager(hosts=[host], storage=cj.storage_from_url(pg_url)) as manager:
        jobs = await manager.submit_many([
            cj.JobSpec(image=testbed.image,
                       command=f"echo start {i}; sleep 4; echo end {i}") for i in range(3)
        ])
        await anyio.sleep(1.5)  # they run
        await anyio.to_thread.run_sync(testbed.testbed_script, "stop-postgres")
        try:
            await anyio.sleep(2)
        finally:
            await anyio.to_thread.run_sync(testbed.testbed_script, "start-postgres")
        done = [await manager.wait(job.id, timeout=60) for job in jobs]
        lines = [[line.text async for line in manager.logs(job.id)] for job in jobs]
    for i, job in enumerate(done):
        assert job.status is cj.JobStatus.COMPLETED, job.error
        assert job.attempts == 1 and job.stdout == f"start {i}\nend {i}\n"
        assert lines[i] == [f"start {i}", f"end {i}"]
    assert any(record.levelno >= logging.WARNING for record in caplog.records)  # said so
