"""Waiting is cheap: many waiters cost one read of the store per round, not a record
read each (FakeCluster and SQLite; no Docker)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio

import containerjobs as cj
from containerjobs.testing import FakeCluster, FakeRun

SPEC = cj.JobSpec("example/image:1", "work")


def counted(storage: cj.SQLiteStorage) -> Counter[str]:
    """Count the calls of the store's reads a waiter makes."""
    calls: Counter[str] = Counter()
    for name in ("get", "statuses"):
        original = getattr(storage, name)

        async def call(*args: Any, _name: str = name, _original: Any = original) -> Any:
            calls[_name] += 1
            return await _original(*args)

        setattr(storage, name, call)
    return calls


def host(slots: int) -> cj.DockerHost:
    return cj.DockerHost("a", "unix:///fake/a.sock", max_concurrent_jobs=slots)


async def test_queued_jobs_with_a_waiter_each_read_their_record_twice(tmp_path: Path) -> None:
    storage = cj.SQLiteStorage(tmp_path / "jobs.db")
    cluster = FakeCluster(lambda job: FakeRun(stdout="ok\n", duration=0.01))
    async with cj.JobManager(hosts=[host(4)], storage=storage,
                             executor_factory=cluster) as manager:
        calls = counted(storage)  # (the poll was given the store's reads before)
        jobs = await manager.submit_many([SPEC] * 200)
        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(manager.wait, job.id)
    # Each waiter reads the record when it starts and when its job ends; the moves in
    # between this manager made itself, and told its waiters of them.
    assert calls["get"] <= 2 * len(jobs) + 10
    # The queue changes behind nobody's back here, but the store is shared: one read
    # of every status per round, however many wait.
    assert calls["statuses"] < len(jobs) / 4


async def test_a_client_s_waiters_see_what_a_worker_elsewhere_did(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    cluster = FakeCluster(
        lambda job: FakeRun(stdout="ok\n", duration=30 if job.spec.command == "long" else 0.2)
    )
    client_store = cj.SQLiteStorage(db)
    calls = counted(client_store)
    async with (
        cj.JobManager(hosts=[], storage=client_store, poll_interval=0.2) as client,
        cj.JobManager(hosts=[host(8)], storage=cj.SQLiteStorage(db),
                      executor_factory=cluster) as worker,
    ):
        jobs = await client.submit_many([SPEC] * 40)
        long = await client.submit(cj.JobSpec("example/image:1", "long"))
        done: dict[str, cj.Job] = {}

        async def wait(job_id: str) -> None:
            done[job_id] = await client.wait(job_id, timeout=30)

        async with anyio.create_task_group() as tg:
            for job in [*jobs, long]:
                tg.start_soon(wait, job.id)
            async for _ in worker.logs(long.id):
                break  # it runs
            await worker.cancel(long.id)  # another manager: only a read shows it
    assert done.pop(long.id).status is cj.JobStatus.CANCELLED
    assert {job.status for job in done.values()} == {cj.JobStatus.COMPLETED}
    assert calls["get"] <= 2 * (len(jobs) + 1) + 10  # the polls read statuses, not records
    assert 1 <= calls["statuses"] < 40 * 10
