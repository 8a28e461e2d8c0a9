"""Placement constraints and jobs no node can take, on the FakeCluster (no Docker)."""

from __future__ import annotations

import attrs
import pytest

import containerjobs as cj
from containerjobs.testing import FakeCluster, FakeRun
from tests.conftest import until_status

PLACED = cj.JobSpec("example/image:1", "work", placement=("node.labels.zone==a",))


def docker(name: str) -> cj.DockerHost:
    return cj.DockerHost(name, f"unix:///fake/{name}.sock", max_concurrent_jobs=4)


def swarm(name: str) -> cj.SwarmHost:
    return cj.SwarmHost(name, f"unix:///fake/{name}.sock", max_concurrent_jobs=4)


async def test_jobs_with_placement_go_to_swarm_hosts_only() -> None:
    cluster = FakeCluster(lambda job: FakeRun(stdout="ok\n", duration=0.05))
    hosts = [docker("a"), swarm("s"), docker("b")]
    async with cj.JobManager(hosts=hosts, executor_factory=cluster) as manager:
        placed = await manager.submit_many([PLACED] * 6)
        free = await manager.submit_many([cj.JobSpec("example/image:1", "work")] * 6)
        placed_done = [await manager.wait(job.id, timeout=10) for job in placed]
        free_done = [await manager.wait(job.id, timeout=10) for job in free]
    assert {job.host for job in placed_done} == {"s"}
    assert {"a", "b"} <= {job.host for job in free_done}  # the others spread as before
    assert {job.status for job in placed_done + free_done} == {cj.JobStatus.COMPLETED}


async def test_placement_needs_a_swarm_host_among_the_manager_s() -> None:
    async with cj.JobManager(hosts=[docker("a")], executor_factory=FakeCluster()) as manager:
        with pytest.raises(cj.InvalidJobSpec, match=r"JobSpec\.placement=.*no Swarm host|needs a"):
            await manager.submit(PLACED)
        assert await manager.list_jobs() == []
    hosts = [docker("a"), swarm("s")]
    async with cj.JobManager(hosts=hosts, executor_factory=FakeCluster()) as manager:
        pinned = cj.JobSpec("example/image:1", "work", placement=("node.role==worker",), host="a")
        with pytest.raises(cj.InvalidJobSpec, match=r"JobSpec\.host='a' is not one"):
            await manager.submit(pinned)


async def test_a_client_leaves_placement_to_the_workers() -> None:
    async with cj.JobManager(hosts=[]) as client:
        job = await client.submit(PLACED)
    assert job.spec.placement == ("node.labels.zone==a",)


async def test_a_job_no_node_can_take_waits_in_pending_saying_why() -> None:
    refusals = 0

    def behaviour(job: cj.Job) -> FakeRun:
        nonlocal refusals
        if refusals < 2:
            refusals += 1
            return FakeRun(launch_error=cj.Unschedulable(
                "Swarm host 's' has no node for job now: no suitable node"
            ))
        return FakeRun(stdout="placed at last\n")

    cluster = FakeCluster(behaviour)
    async with cj.JobManager(hosts=[swarm("s")], executor_factory=cluster) as manager:
        from containerjobs import _run

        _run_delay, _run._PLACEMENT_RETRY = _run._PLACEMENT_RETRY, 0.2
        try:
            job = await manager.submit(PLACED)
            waiting = await until_status(manager, job.id, cj.JobStatus.LAUNCHING)
            waiting = await until_status(manager, job.id, cj.JobStatus.PENDING)
            assert waiting.error is not None and "waiting to be placed" in waiting.error
            assert "no suitable node" in waiting.error
            assert (waiting.attempts, waiting.host, waiting.retry_at is not None) == (0, None, True)
            done = await manager.wait(job.id, timeout=10)
        finally:
            _run._PLACEMENT_RETRY = _run_delay
    assert (done.status, done.stdout, done.attempts, done.error) == (
        cj.JobStatus.COMPLETED, "placed at last\n", 1, None
    )
    assert done.previous_attempts == ()  # waiting for a node is no attempt


@pytest.mark.parametrize("error", [
    cj.Unschedulable("Swarm host 's' has no node for job now: no suitable node"),
    cj.ExecutorError("the daemon refused the create"),  # retryable: max_retries=3 below
])
async def test_a_job_cancelled_while_its_launch_fails_ends_cancelled(error: Exception) -> None:
    # Neither back to the queue (to wait for a node, or for a retry) nor run after all.
    manager: cj.JobManager
    launches: list[str] = []

    def behaviour(job: cj.Job) -> FakeRun:
        launches.append(job.id)
        assert manager._worker is not None
        manager._worker.runs[job.id].request_cancel()  # lands while launch runs
        return FakeRun(launch_error=error)

    cluster = FakeCluster(behaviour)
    async with cj.JobManager(hosts=[swarm("s")], executor_factory=cluster) as manager:
        job = await manager.submit(attrs.evolve(PLACED, max_retries=3))
        done = await manager.wait(job.id, timeout=10)
    assert (done.status, done.error) == (cj.JobStatus.CANCELLED, "cancelled")
    assert launches == [job.id]  # tried once, never again
