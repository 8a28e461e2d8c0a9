#!/usr/bin/env python3
"""The manager's own cost per job, without Docker: companion to lifecycle.py.

    python3 benchmarks/manager_overhead.py [--jobs N] [--concurrency 8 64] [--duration S]

Runs N jobs through a JobManager whose host is containerjobs.testing's FakeCluster
(jobs print "hello" and exit after --duration seconds), so every millisecond measured
is the manager's: dispatch, store, supervisor, log pump. Reports jobs/s and CPU ms per
job for the in-memory and the SQLite store, with the caller waiting for the jobs one
after the other ("serial waits", as lifecycle.py does) or all at once ("gathered waits",
``asyncio.gather(*(manager.wait(id) ...))``), and how many store reads the waits made.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import tempfile
import time

import structlog

import containerjobs as cj
from containerjobs.testing import FakeCluster, FakeRun


async def one(jobs: int, concurrency: int, duration: float, sqlite: bool, gathered: bool) -> str:
    tmp = tempfile.TemporaryDirectory(prefix="cj-overhead-")
    storage = cj.SQLiteStorage(os.path.join(tmp.name, "jobs.db")) if sqlite else None
    cluster = FakeCluster(lambda job: FakeRun(stdout="hello\n", duration=duration))
    gets = 0
    async with cj.JobManager(
        hosts=[cj.DockerHost("fake", "unix:///fake", max_concurrent_jobs=concurrency)],
        storage=storage, executor_factory=cluster,
    ) as manager:
        original_get = manager.storage.get

        async def counted_get(job_id: str) -> cj.Job:
            nonlocal gets
            gets += 1
            return await original_get(job_id)

        manager.storage.get = counted_get  # type: ignore[method-assign]
        spec = cj.JobSpec(image="busybox", command="echo hello")
        await manager.run(spec)  # warm
        gets = 0
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        submitted = await manager.submit_many([spec] * jobs)
        if gathered:
            done = await asyncio.gather(*(manager.wait(j.id) for j in submitted))
        else:
            done = [await manager.wait(j.id) for j in submitted]
        elapsed = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        assert all(d.stdout == "hello\n" for d in done)
    tmp.cleanup()
    cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / jobs * 1000
    store = "sqlite" if sqlite else "memory"
    waits = "gathered" if gathered else "serial"
    return (f"  {store:<7} C={concurrency:<3} {waits:<8} {jobs / elapsed:8.1f} jobs/s   "
            f"{elapsed / jobs * 1000:6.2f} ms/job wall   {cpu:6.2f} ms/job CPU   "
            f"{gets / jobs:5.1f} store.get per job")


async def main_async(args: argparse.Namespace) -> None:
    print(f"manager overhead: {args.jobs} fake jobs of {args.duration} s, "
          f"{os.cpu_count()} cores")
    for c in args.concurrency:
        for sqlite in (False, True):
            for gathered in (False, True):
                print(await one(args.jobs, c, args.duration, sqlite, gathered), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--duration", type=float, default=0.0)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
