"""What survives what: a killed manager, several workers on one store, retries, and a
daemon that goes away. All on the test bed's real daemons."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

import containerjobs as cj
from containerjobs import _run
from containerjobs.storage import storage_from_url
from tests.conftest import (
    LOCAL_SOCKET,
    REPO,
    Bed,
    fresh_postgres_database,
    kill_when_ready,
    until_status,
)

pytestmark = pytest.mark.docker


def local(**kwargs: object) -> cj.DockerHost:
    return cj.DockerHost("local", LOCAL_SOCKET, **kwargs)  # type: ignore[arg-type]


def shared_folder(tmp_path: Path) -> Path:
    # The jobs run as nobody: the folder must be theirs to write.
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(shared, 0o777)
    return shared


SUBMIT_AND_HANG = """
import logging, sys, anyio
import containerjobs as cj
from containerjobs.storage import storage_from_url

logging.basicConfig(level=logging.INFO)  # on stderr, to see what it did when it fails

async def main() -> None:
    host = cj.DockerHost("local", "unix:///var/run/docker.sock")
    manager = cj.JobManager(hosts=[host], storage=storage_from_url(sys.argv[1]),
                            lease_ttl=2.0)
    await manager.start()
    specs = [cj.JobSpec(image=sys.argv[2], command="echo before; sleep 4; echo after",
                        name=f"job{i}") for i in range(4)]
    jobs = await manager.submit_many(specs)
    for job in jobs:
        async for line in manager.logs(job.id):
            break  # "before" is out: the job runs
    print("ready", flush=True)
    await anyio.sleep_forever()

anyio.run(main)
"""

@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, testbed: Bed,
                    tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a new, empty store of each kind the durability promises hold for."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path}/jobs.db"
        return
    async with fresh_postgres_database(testbed, "cj_durability") as url:
        yield url


async def test_a_killed_manager_loses_nothing(testbed: Bed, store_url: str,
                                              tmp_path: Path, no_leftovers: None) -> None:
    db = store_url
    await kill_when_ready(SUBMIT_AND_HANG, tmp_path, str(db), testbed.image)
    async with cj.JobManager(hosts=[local()], storage=storage_from_url(db)) as manager:
        jobs = await manager.list_jobs()
        assert len(jobs) == 4
        done = [await manager.wait(job.id, timeout=60) for job in jobs]
    for job in done:
        assert job.status is cj.JobStatus.COMPLETED, job.error
        assert job.stdout == "before\nafter\n"
        assert job.attempts == 1
    assert not testbed.labelled_containers()


async def test_three_workers_run_each_job_exactly_once(testbed: Bed, store_url: str,
                                                       tmp_path: Path,
                                                       no_leftovers: None) -> None:
    db = store_url
    shared = shared_folder(tmp_path)
    workers = [
        await anyio.open_process(
            # The workers' own policy decides what they run: it must allow the mount.
            [sys.executable, "-m", "containerjobs", "worker", "--db", str(db),
             "--host", f"w{n}={LOCAL_SOCKET}", "--max-jobs", "3", "--lease-ttl", "5",
             "--allow-mount", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
        )
        # Each worker names the daemon its own way, so each has slots of its own and
        # all three compete for the same pending jobs.
        for n in range(3)
    ]
    try:
        policy = cj.SecurityPolicy(allowed_mount_sources=[str(tmp_path)])
        async with cj.JobManager(hosts=[], storage=storage_from_url(db),
                                 policy=policy) as client:
            specs = [
                cj.JobSpec(image=testbed.image,
                           command=f"mkdir /shared/job-{i} && echo made {i}",
                           mounts=[cj.Mount(str(shared), "/shared", read_only=False)])
                for i in range(24)
            ]
            jobs = await client.submit_many(specs)
            done = [await client.wait(job.id, timeout=180) for job in jobs]
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            codes = [await worker.wait() for worker in workers]
        for worker in workers:
            await worker.aclose()
    assert codes == [0, 0, 0]
    for i, job in enumerate(done):
        assert job.status is cj.JobStatus.COMPLETED, job.error
        assert job.attempts == 1 and job.previous_attempts == ()
        assert job.stdout == f"made {i}\n"
    assert sorted(p.name for p in shared.iterdir()) == sorted(f"job-{i}" for i in range(24))
    assert len({job.owner for job in done}) >= 2  # the work was shared


async def test_a_failed_attempt_is_retried(testbed: Bed, store_url: str, tmp_path: Path,
                                           no_leftovers: None) -> None:
    shared = shared_folder(tmp_path)
    policy = cj.SecurityPolicy(allowed_mount_sources=[str(tmp_path)])
    flaky = cj.JobSpec(
        image=testbed.image, max_retries=2,
        command="if [ -e /shared/flag ]; then echo second; else touch /shared/flag; "
                "echo first; exit 1; fi",
        mounts=[cj.Mount(str(shared), "/shared", read_only=False)],
    )
    async with cj.JobManager(hosts=[local()], policy=policy, retry_delay=0.2,
                             storage=storage_from_url(store_url)) as manager:
        job = await manager.run(flaky, timeout=60)
        plain = await manager.run(cj.JobSpec(image=testbed.image, command="exit 1"))
    assert job.status is cj.JobStatus.COMPLETED
    assert job.attempts == 2
    assert job.stdout == "second\n"
    [first] = job.previous_attempts
    assert first.attempt == 1 and first.exit_code == 1 and first.error
    assert plain.status is cj.JobStatus.FAILED and plain.attempts == 1


async def test_losing_the_daemon(testbed: Bed, store_url: str) -> None:
    remote = cj.DockerHost("remote", testbed.tls_url,
                           tls=cj.TLSConfig.from_cert_path(testbed.cert_dir))
    storage = storage_from_url(store_url)
    async with cj.JobManager(hosts=[remote], storage=storage, lease_ttl=3.0) as manager:
        job = await manager.submit(cj.JobSpec(image=testbed.image, command="echo up; sleep 60"))
        await until_status(manager, job.id, cj.JobStatus.RUNNING)
        # Off the event loop: stopping a daemon takes seconds, and the manager must
        # keep running meanwhile, as it would in production.
        await anyio.to_thread.run_sync(testbed.testbed_script, "stop-second")
        try:
            lost = await manager.wait(job.id, timeout=60)
            assert lost.status is cj.JobStatus.FAILED
            assert lost.error and "remote" in lost.error
            health = await manager.health()
            assert not health["remote"].healthy and health["remote"].error
            queued = await manager.submit(cj.JobSpec(image=testbed.image, command="echo back"))
            with pytest.raises(TimeoutError):
                await manager.wait(queued.id, timeout=2)
            assert (await manager.get(queued.id)).status is cj.JobStatus.PENDING
        finally:
            await anyio.to_thread.run_sync(testbed.testbed_script, "start-second")
        back = await manager.wait(queued.id, timeout=60)
        assert back.status is cj.JobStatus.COMPLETED and back.stdout == "back\n"
        # The container the stopped daemon killed is cleaned up once it answers again.
        await manager.reconcile()
    assert not testbed.labelled_containers(testbed.docker2_socket)


async def test_a_kill_the_frozen_daemon_never_confirms_is_not_recorded_as_one(
    testbed: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_run, "_KILL_GRACE", 3.0)
    remote = cj.DockerHost("remote", testbed.tls_url,
                           tls=cj.TLSConfig.from_cert_path(testbed.cert_dir))
    async with cj.JobManager(hosts=[remote]) as manager:
        job = await manager.submit(
            cj.JobSpec(image=testbed.image, command="echo up; sleep 60", timeout_seconds=3)
        )
        await until_status(manager, job.id, cj.JobStatus.RUNNING)
        pid = testbed.docker2_pid()
        os.kill(pid, signal.SIGSTOP)  # the daemon stops answering; its containers run on
        try:
            done = await manager.wait(job.id, timeout=60)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert done.status is cj.JobStatus.FAILED
        assert done.error is not None
        assert "timed out after 3 s, but killing its container on host 'remote' was not " \
            "confirmed" in done.error
        assert "was killed" not in done.error and done.exit_code is None
        # The container stayed on the daemon, labelled, for reconciliation to remove.
        assert testbed.labelled_containers(testbed.docker2_socket)
        assert (await manager.health())["remote"].healthy
        await manager.reconcile()
    assert not testbed.labelled_containers(testbed.docker2_socket)


def test_cli_worker_help() -> None:
    done = subprocess.run([sys.executable, "-m", "containerjobs", "worker", "--help"],
                          capture_output=True, text=True, cwd=REPO, check=True)
    assert "--db" in done.stdout and "--host" in done.stdout
