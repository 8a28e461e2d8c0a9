"""Fail fast: a wait that nothing can end raises `NoWorkerAvailable` after the manager's
`no_worker_timeout`, and a job no host can take says why in its record. On the
FakeCluster, and on a DockerHost whose socket does not exist (no Docker needed)."""

from __future__ import annotations

import pickle
from pathlib import Path

import anyio
import pytest

import containerjobs as cj
from containerjobs.testing import FakeCluster, FakeRun
from tests.conftest import until_status

SPEC = cj.JobSpec(image="example/image:1", command="work")


def fake_hosts(*names: str, slots: int = 2) -> list[cj.DockerHost]:
    return [
        cj.DockerHost(name, f"unix:///fake/{name}.sock", max_concurrent_jobs=slots)
        for name in names
    ]


async def until_error(manager: cj.JobManager, job_id: str) -> cj.Job:
    """The job once its record says why it waits."""
    with anyio.fail_after(10):
        while True:
            job = await manager.get(job_id)
            if job.error is not None:
                return job
            await anyio.sleep(0.05)


async def test_a_client_with_no_worker_raises_and_leaves_the_job_pending() -> None:
    async with cj.JobManager(hosts=[], no_worker_timeout=0.5) as client:
        started = anyio.current_time()
        with pytest.raises(cj.NoWorkerAvailable) as raised:
            await client.run(SPEC)
        assert anyio.current_time() - started < 5
        job = await client.get(raised.value.job_id)
        assert job.status is cj.JobStatus.PENDING  # a worker may come later
        message = str(raised.value)
        assert f"nothing could run job {job.id}" in message
        assert "this manager has no hosts" in message
        assert "no other manager holds a lease on this manager's in-memory store" in message
        assert "stays pending" in message and "cancel" in message
        assert (await client.cancel(job.id)).status is cj.JobStatus.CANCELLED


async def test_a_docker_host_that_is_not_there_ends_run_with_its_error(tmp_path: Path) -> None:
    socket = tmp_path / "no-such-docker.sock"
    host = cj.DockerHost("local", f"unix://{socket}")
    async with cj.JobManager(hosts=[host], no_worker_timeout=1) as manager:
        with pytest.raises(cj.NoWorkerAvailable) as raised:
            with anyio.fail_after(10):
                await manager.run(SPEC)
        message = str(raised.value)
        assert "'local'" in message and str(socket) in message  # the host and its error
        assert (await manager.get(raised.value.job_id)).status is cj.JobStatus.PENDING
        # wait() on it fails the same way, and a timeout of its own comes first.
        with pytest.raises(TimeoutError):
            await manager.wait(raised.value.job_id, timeout=0.2)
        with pytest.raises(cj.NoWorkerAvailable):
            await manager.wait(raised.value.job_id)


async def test_a_host_back_within_the_grace_runs_the_job() -> None:
    cluster = FakeCluster(lambda job: FakeRun(stdout="ran\n"))
    async with cj.JobManager(
        hosts=fake_hosts("a"), executor_factory=cluster, no_worker_timeout=30
    ) as manager:
        cluster.executors["a"].healthy = False
        await manager.health()
        job = await manager.submit(SPEC)
        await anyio.sleep(1.5)  # nothing can run it meanwhile
        cluster.executors["a"].healthy = True  # back before the grace ends
        with anyio.fail_after(10):
            done = await manager.wait(job.id)
        assert done.status is cj.JobStatus.COMPLETED and done.stdout == "ran\n"


async def test_none_waits_for_ever() -> None:
    async with cj.JobManager(hosts=[], no_worker_timeout=None) as client:
        job = await client.submit(SPEC)
        with pytest.raises(TimeoutError):
            await client.wait(job.id, timeout=2.5)
    with pytest.raises(ValueError, match="no_worker_timeout"):
        cj.JobManager(hosts=[], no_worker_timeout=-1)


async def test_a_live_worker_keeps_the_wait_and_its_record_says_why(tmp_path: Path) -> None:
    # The job needs a host the only worker does not have: the client waits (a worker
    # with that host may come), the record says why, and the wait ends the moment the
    # worker is gone.
    db = tmp_path / "jobs.db"
    cluster = FakeCluster()
    async with cj.JobManager(
        hosts=[], storage=cj.SQLiteStorage(db), poll_interval=0.05, no_worker_timeout=1
    ) as client:
        async with cj.JobManager(
            hosts=fake_hosts("a"),
            executor_factory=cluster,
            storage=cj.SQLiteStorage(db),
            poll_interval=0.05,
        ) as worker:
            pinned = await client.submit(cj.JobSpec(image="example/image:1", host="gpu"))
            placed = await client.submit(
                cj.JobSpec(image="example/image:1", placement=("node.labels.zone==a",))
            )
            with pytest.raises(TimeoutError):  # not NoWorkerAvailable: a worker lives
                await client.wait(pinned.id, timeout=2.5)
            waiting = await until_error(client, pinned.id)
            assert waiting.status is cj.JobStatus.PENDING
            assert waiting.error == (
                f"waiting for a host (worker {worker.id}): it needs host 'gpu', which "
                "this worker does not have (its hosts: a)"
            )
            assert (await until_error(client, placed.id)).error == (
                f"waiting for a host (worker {worker.id}): its placement "
                "['node.labels.zone==a'] needs a Swarm host, and this worker has none "
                "(its hosts: a)"
            )
        with pytest.raises(cj.NoWorkerAvailable) as raised:
            with anyio.fail_after(10):
                await client.wait(pinned.id)
        assert f"no other manager holds a lease on SQLiteStorage({str(db)!r})" in str(
            raised.value
        )


async def test_a_reason_is_cleared_when_the_job_runs() -> None:
    cluster = FakeCluster(lambda job: FakeRun(stdout="ok\n"))
    async with cj.JobManager(
        hosts=fake_hosts("a", "b"), executor_factory=cluster, poll_interval=0.05
    ) as manager:
        cluster.executors["b"].healthy = False
        await manager.health()
        job = await manager.submit(cj.JobSpec(image="example/image:1", host="b"))
        waiting = await until_error(manager, job.id)
        assert waiting.error is not None
        assert waiting.error.startswith(f"waiting for a host (worker {manager.id}): ")
        assert "host 'b' is down (fake)" in waiting.error
        cluster.executors["b"].healthy = True
        with anyio.fail_after(10):
            done = await manager.wait(job.id)
        assert (done.status, done.error, done.host) == (cj.JobStatus.COMPLETED, None, "b")


async def test_another_workers_live_reason_stands(tmp_path: Path) -> None:
    # Two workers that both lack the host: the first reason written stays (no
    # flip-flop between them, one write each at most).
    db = tmp_path / "jobs.db"
    cluster = FakeCluster()
    async with cj.JobManager(
        hosts=fake_hosts("a"), executor_factory=cluster, storage=cj.SQLiteStorage(db),
        poll_interval=0.05,
    ) as first, cj.JobManager(
        hosts=fake_hosts("b"), executor_factory=cluster, storage=cj.SQLiteStorage(db),
        poll_interval=0.05,
    ) as second:
        async with cj.JobManager(hosts=[], storage=cj.SQLiteStorage(db)) as client:
            job = await client.submit(cj.JobSpec(image="example/image:1", host="gpu"))
            reason = (await until_error(client, job.id)).error
            assert reason is not None
            await anyio.sleep(1)  # several rounds of both
            assert (await client.get(job.id)).error == reason
            assert f"(worker {first.id})" in reason or f"(worker {second.id})" in reason


async def test_own_jobs_only_takes_and_adopts_nothing_else(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    cluster = FakeCluster(lambda job: FakeRun(stdout=f"{job.name}\n", duration=0.2))
    async with cj.JobManager(hosts=[], storage=cj.SQLiteStorage(db)) as client:
        queued = await client.submit(cj.JobSpec(image="example/image:1", name="queued"))
        async with cj.JobManager(
            hosts=fake_hosts("a"),
            executor_factory=cluster,
            storage=cj.SQLiteStorage(db),
            poll_interval=0.05,
            own_jobs_only=True,
        ) as own:
            mine = await own.run(cj.JobSpec(image="example/image:1", name="mine"), timeout=10)
            assert (mine.status, mine.stdout) == (cj.JobStatus.COMPLETED, "mine\n")
            await anyio.sleep(0.5)  # rounds enough to have taken it, were it taking any
            assert (await client.get(queued.id)).status is cj.JobStatus.PENDING
            assert (await client.get(queued.id)).error is None  # not its to explain
        assert [job.name for job in cluster.executors["a"].launched] == ["mine"]
        # A plain worker takes it.
        async with cj.JobManager(
            hosts=fake_hosts("a"), executor_factory=cluster, storage=cj.SQLiteStorage(db),
            poll_interval=0.05,
        ):
            done = await client.wait(queued.id, timeout=10)
        assert done.stdout == "queued\n"


async def test_own_jobs_only_does_not_adopt_a_dead_managers_job(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    cluster = FakeCluster(lambda job: FakeRun(duration=60))
    async with cj.JobManager(
        hosts=fake_hosts("a"), executor_factory=cluster, storage=cj.SQLiteStorage(db),
        on_exit="detach",
    ) as first:
        left = await first.submit(SPEC)
        await until_status(first, left.id, cj.JobStatus.RUNNING)
    async with cj.JobManager(
        hosts=fake_hosts("a"), executor_factory=cluster, storage=cj.SQLiteStorage(db),
        own_jobs_only=True, lease_ttl=0.3, on_exit="cancel",
    ) as own:
        await own.reconcile()
        await anyio.sleep(0.5)
        job = await own.get(left.id)
        assert (job.status, job.owner) == (cj.JobStatus.RUNNING, first.id)
    # A plain worker adopts it, and ends it.
    async with cj.JobManager(
        hosts=fake_hosts("a"), executor_factory=cluster, storage=cj.SQLiteStorage(db),
        on_exit="cancel",
    ) as adopter:
        await adopter.reconcile()
        assert (await adopter.get(left.id)).owner == adopter.id
    assert (await _read(db, left.id)).status is cj.JobStatus.CANCELLED


async def _read(db: Path, job_id: str) -> cj.Job:
    store = cj.SQLiteStorage(db)
    await store.open()
    try:
        return await store.get(job_id)
    finally:
        await store.close()


def test_the_error_is_a_containerjobs_error_and_pickles() -> None:
    error = cj.NoWorkerAvailable("nothing could run job x for 15 s", "x")
    assert isinstance(error, cj.ContainerJobsError)
    again = pickle.loads(pickle.dumps(error))
    assert (str(again), again.job_id) == (str(error), "x")
