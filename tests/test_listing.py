"""Listing is light: `list_jobs` (and so `containerjobs jobs`) reads no job's output.

Issue 12 measured 190 MB of memory to list 20 jobs with 4 MB of output each, as every
record held its whole output. The stores keep the output apart now, read by `get`
alone; these tests measure the listing of those 20 jobs in each store, with
tracemalloc (every allocation of Python, asyncpg's included), and the peak memory of
the `containerjobs jobs` process, SQLite's own page cache included.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import containerjobs as cj
from containerjobs._display import JobList
from containerjobs.storage import InMemoryStorage, PostgresStorage, SQLiteStorage, Storage
from containerjobs.testing._storage_contract import at

from .test_postgres import _admin, _base_url

JOBS = 20
OUTPUT_BYTES = 4 << 20  # each job's stdout
LIMIT_BYTES = 30 << 20  # what issue 12 allows the listing of them


def _output(job: int) -> str:
    # Lines as a program prints them, distinct per job (nothing is shared between jobs
    # that a store could keep once).
    lines, size, n = [], 0, 0
    while size < OUTPUT_BYTES:
        line = f"job {job:02} line {n:07}: value={n * 7919 % 100003} status=ok\n"
        lines.append(line)
        size += len(line)
        n += 1
    return "".join(lines)


async def _fill(storage: Storage) -> None:
    """20 completed jobs with 4 MB of stdout each, written as a run writes them: the
    record first, the output with the final move."""
    for n in range(JOBS):
        job = cj.Job(
            id=f"job-{n:02}",
            spec=cj.JobSpec("alpine:3.18", "seq 1 1000000"),
            created_at=at(n),
        )
        await storage.create([job])
        job = job.advance(cj.JobStatus.LAUNCHING, host="local", owner="m", attempts=1)
        assert await storage.compare_and_set(
            job, expected=cj.JobStatus.PENDING, expected_owner=None
        )
        running = job.advance(cj.JobStatus.RUNNING, container_id="c0ffee", started_at=at(n))
        assert await storage.compare_and_set(
            running, expected=cj.JobStatus.LAUNCHING, expected_owner="m"
        )
        done = running.advance(
            cj.JobStatus.COMPLETED, exit_code=0, completed_at=at(n + 1), stdout=_output(n)
        )
        assert await storage.compare_and_set(
            done, expected=cj.JobStatus.RUNNING, expected_owner="m"
        )


async def _peak(call: Callable[[], Awaitable[Any]]) -> tuple[Any, int]:
    """What `call` returns, and the peak of the memory it allocated, in bytes."""
    tracemalloc.start()
    try:
        result = await call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


async def _check_listing(storage: Storage) -> None:
    await storage.open()  # the manager's enter opens it again: a no-op
    await _fill(storage)
    async with cj.JobManager(hosts=[], storage=storage) as manager:
        await manager.list_jobs()  # first use: imports and caches warmed up
        listed, peak = await _peak(manager.list_jobs)
        print(f"{type(storage).__name__}: list_jobs of {JOBS} jobs took {peak / 1024:.0f} KiB")
        assert peak < LIMIT_BYTES
        # Light, yet a whole listing: 20 rows, every field but the output.
        assert isinstance(listed, JobList)
        assert [job.id for job in listed] == [f"job-{n:02}" for n in reversed(range(JOBS))]
        assert all(job.status is cj.JobStatus.COMPLETED and job.exit_code == 0 for job in listed)
        assert not any(job.output_loaded for job in listed)
        with pytest.raises(cj.ContainerJobsError, match=r"get\('job-19'\)"):
            listed[0].stdout  # noqa: B018
        assert "<table" in listed._repr_html_() and "not loaded" in repr(listed[0])
        # get reads the output, and only that job's.
        job, peak = await _peak(lambda: manager.get("job-07"))
        assert job.output_loaded and job.stdout == _output(7)
        assert peak < 3 * OUTPUT_BYTES


async def test_listing_20_jobs_of_4_mb_reads_no_output_in_memory() -> None:
    await _check_listing(InMemoryStorage())


async def test_listing_20_jobs_of_4_mb_reads_no_output_in_sqlite(tmp_path: Path) -> None:
    await _check_listing(SQLiteStorage(tmp_path / "jobs.db"))


@pytest.fixture
async def postgres_schema() -> AsyncIterator[str]:
    """A schema of its own in the test bed's database, dropped after the test."""
    schema = f"listing_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        await _admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def test_listing_20_jobs_of_4_mb_reads_no_output_in_postgres(postgres_schema: str) -> None:
    await _check_listing(PostgresStorage(_base_url(), schema=postgres_schema))


# The peak resident memory of a process (SQLite's page cache and every library's own
# allocations included) running the CLI's `jobs` on a store.
_JOBS_COMMAND = textwrap.dedent(
    """
    import contextlib, io, resource, sys
    from containerjobs.cli import main

    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(["jobs", "--db", sys.argv[1]])
    assert code == 0 and out.getvalue().count("completed") == int(sys.argv[2]), out.getvalue()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    """
)


def _peak_rss_of_jobs(path: Path, jobs: int) -> int:
    env = {k: v for k, v in os.environ.items() if k != "CONTAINERJOBS_DB"}
    done = subprocess.run(
        [sys.executable, "-c", _JOBS_COMMAND, str(path), str(jobs)],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    )
    return int(done.stdout)


async def test_the_jobs_command_lists_them_in_under_30_mb_more(tmp_path: Path) -> None:
    # The same command on 20 jobs that printed nothing is the baseline: what the
    # interpreter and the libraries take. The output may add no more than 30 MB.
    heavy, light = tmp_path / "heavy.db", tmp_path / "light.db"
    store = SQLiteStorage(heavy)
    await store.open()
    try:
        await _fill(store)
    finally:
        await store.close()
    store = SQLiteStorage(light)
    await store.open()
    try:
        for n in range(JOBS):
            await store.create(
                [
                    cj.Job(
                        id=f"job-{n:02}",
                        spec=cj.JobSpec("alpine:3.18", "seq 1 1000000"),
                        status=cj.JobStatus.COMPLETED,
                        created_at=at(n),
                        completed_at=at(n + 1),
                        exit_code=0,
                    )
                ]
            )
    finally:
        await store.close()
    baseline = _peak_rss_of_jobs(light, JOBS)
    peak = _peak_rss_of_jobs(heavy, JOBS)
    print(f"containerjobs jobs: {peak / 2**20:.0f} MiB peak, {baseline / 2**20:.0f} without output")
    assert peak - baseline < LIMIT_BYTES
