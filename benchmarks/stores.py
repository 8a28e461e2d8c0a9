#!/usr/bin/env python3
"""The job stores side by side: in memory, SQLite and PostgreSQL (issue 9).

    python3 benchmarks/stores.py [--quick]

For each store, on a ``JobManager(hosts=[], storage=...)`` (a client that runs no job):

1. ``submit_many`` of 10,000 specs, in one call (jobs/s);
2. 2,000 single ``submit`` calls, one after the other (calls/s, p50/p99 latency);
3. with 100,000 jobs stored (topped up fast through ``storage.create`` in batches),
   ``get`` latency over 2,000 random ids and ``list_jobs(limit=100)`` latency over 200
   calls (p50/p99);
4. SQLite and PostgreSQL only, on a fresh store: the cross-process wait latency. A
   worker in another process (a JobManager with one fake host of 8 slots,
   ``containerjobs.testing.FakeCluster``, every job a ``FakeRun(duration=0.05)``) runs
   the jobs a client here submits, 8 at a time; for each of 200 jobs the latency is
   (when the client's ``wait(job_id)`` returned) minus (the job's ``completed_at`` as
   stored). SQLite wakes waiters by polling (the default ``poll_interval``, 1 s);
   PostgreSQL by LISTEN/NOTIFY.

``--quick`` runs a tenth of every size. SQLite lives in a temporary file; PostgreSQL in
a fresh, uniquely named database on the test bed's server (``CJ_POSTGRES_URL`` in
/var/lib/containerjobs-testbed/env, or the environment), created through that user and
dropped at the end with ``DROP DATABASE ... WITH (FORCE)``. Without that URL, the
PostgreSQL column is skipped.

Goals (issue 9): PostgreSQL ``submit_many`` at least 5,000 jobs/s, p99 ``get`` under
5 ms, wait latency p99 under 200 ms.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio

import containerjobs as cj

ENV_FILE = "/var/lib/containerjobs-testbed/env"
SPEC = cj.JobSpec(image="busybox", command="echo hello")
CREATE_BATCH = 1_000
WAVE = 8  # jobs in flight at once in the wait measurement (the fake host's slots)

WORKER = '''
import logging, sys
import anyio
import containerjobs as cj
from containerjobs.testing import FakeCluster, FakeRun

async def main(url):
    cluster = FakeCluster(lambda job: FakeRun(duration=0.05))
    host = cj.DockerHost("fake", "unix:///fake.sock", max_concurrent_jobs=8)
    async with cj.JobManager(hosts=[host], storage=cj.storage_from_url(url),
                             executor_factory=cluster, on_exit="cancel"):
        print("ready", flush=True)
        # Runs until the benchmark closes this process's stdin.
        await anyio.to_thread.run_sync(sys.stdin.read)

logging.getLogger("containerjobs").setLevel(logging.WARNING)
anyio.run(main, sys.argv[1])
'''


def postgres_url() -> str | None:
    url = os.environ.get("CJ_POSTGRES_URL")
    if url:
        return url
    try:
        with open(ENV_FILE) as env:
            for line in env:
                line = line.strip().removeprefix("export ")
                if line.startswith("CJ_POSTGRES_URL="):
                    return line.split("=", 1)[1].strip().strip("'\"")
    except OSError:
        pass
    return None


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def admin(url: str, statement: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def timed(calls: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    """Latency in ms of each of `calls` awaited calls, one after the other."""
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def store_figures(storage: cj.Storage, sizes: dict[str, int]) -> dict[str, Any]:
    """Steps 1 to 3 on one store; its figures by name."""
    r: dict[str, Any] = {}
    async with cj.JobManager(hosts=[], storage=storage) as client:
        specs = [SPEC] * sizes["many"]
        t0 = time.perf_counter()
        jobs = await client.submit_many(specs)
        r["submit_many"] = len(jobs) / (time.perf_counter() - t0)
        ids = [job.id for job in jobs]

        lat: list[float] = []
        t0 = time.perf_counter()
        for _ in range(sizes["single"]):
            t1 = time.perf_counter()
            job = await client.submit(SPEC)
            lat.append((time.perf_counter() - t1) * 1000)
            ids.append(job.id)
        r["submit_rate"] = sizes["single"] / (time.perf_counter() - t0)
        r["submit_p50"], r["submit_p99"] = pct(lat, 50), pct(lat, 99)

        # Top up to the stored size, straight through the store, in batches.
        effective = client.policy.apply(SPEC)
        t0 = time.perf_counter()
        while len(ids) < sizes["stored"]:
            now = datetime.now(UTC)
            batch = [cj.Job(id=str(uuid.uuid4()), spec=effective, created_at=now)
                     for _ in range(min(CREATE_BATCH, sizes["stored"] - len(ids)))]
            await storage.create(batch)
            ids.extend(job.id for job in batch)
        r["fill_s"] = time.perf_counter() - t0

        rng = random.Random(9)
        sample = [rng.choice(ids) for _ in range(sizes["gets"])]
        lat = []
        for job_id in sample:
            t1 = time.perf_counter()
            await client.get(job_id)
            lat.append((time.perf_counter() - t1) * 1000)
        r["get_p50"], r["get_p99"] = pct(lat, 50), pct(lat, 99)

        lat = await timed(sizes["lists"], lambda: client.list_jobs(limit=100))
        r["list_p50"], r["list_p99"] = pct(lat, 50), pct(lat, 99)
    return r


async def wait_latency(url: str, jobs: int, script: str) -> dict[str, Any]:
    """Step 4: a worker in another process on `url`, a client here; latency in ms."""
    worker = await anyio.open_process(
        [sys.executable, script, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=None,
    )
    lat: list[float] = []
    late_waits = 0  # waits that began after the job had ended (not counted)
    try:
        assert worker.stdout is not None and worker.stdin is not None
        with anyio.fail_after(60):
            ready = await worker.stdout.receive()
        assert ready.startswith(b"ready"), ready
        async with cj.JobManager(hosts=[], storage=cj.storage_from_url(url)) as client:
            await client.wait((await client.submit(SPEC)).id, timeout=60)  # warm
            done = 0
            while done < jobs:
                wave = await client.submit_many([SPEC] * min(WAVE, jobs - done))
                started = datetime.now(UTC)

                async def one(job_id: str, started: datetime) -> None:
                    nonlocal late_waits
                    job = await client.wait(job_id, timeout=60)
                    returned = time.time()
                    assert job.status is cj.JobStatus.COMPLETED, job.error
                    assert job.completed_at is not None
                    if job.completed_at <= started:
                        late_waits += 1
                        return
                    lat.append((returned - job.completed_at.timestamp()) * 1000)

                async with anyio.create_task_group() as tg:
                    for job in wave:
                        tg.start_soon(one, job.id, started)
                done += len(wave)
    finally:
        if worker.stdin is not None:
            await worker.stdin.aclose()
        with anyio.move_on_after(20):
            await worker.wait()
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        await worker.aclose()
    return {"wait_p50": pct(lat, 50), "wait_p99": pct(lat, 99), "wait_max": max(lat),
            "wait_n": len(lat), "late": late_waits}


def table(results: dict[str, dict[str, Any]], sizes: dict[str, int]) -> None:
    names = list(results)
    rows: list[tuple[str, Callable[[dict[str, Any]], str], str]] = [
        (f"submit_many of {sizes['many']:,} (jobs/s)",
         lambda r: f"{r['submit_many']:,.0f}", "submit_many"),
        (f"{sizes['single']:,} x submit (calls/s)", lambda r: f"{r['submit_rate']:,.0f}", ""),
        ("submit p50 / p99 (ms)", lambda r: f"{r['submit_p50']:.2f} / {r['submit_p99']:.2f}", ""),
        (f"fill to {sizes['stored']:,} via create (s)", lambda r: f"{r['fill_s']:.1f}", ""),
        (f"get p50 / p99 (ms), {sizes['gets']:,} ids",
         lambda r: f"{r['get_p50']:.3f} / {r['get_p99']:.3f}", "get"),
        (f"list_jobs(limit=100) p50 / p99 (ms), {sizes['lists']} calls",
         lambda r: f"{r['list_p50']:.2f} / {r['list_p99']:.2f}", ""),
        (f"wait latency p50 / p99 (ms), {sizes['waits']} jobs",
         lambda r: (f"{r['wait_p50']:.0f} / {r['wait_p99']:.0f} (max {r['wait_max']:.0f})"
                    if "wait_p50" in r else "-"), "wait"),
    ]
    goals = {
        "submit_many": ("PostgreSQL >= 5,000 jobs/s",
                        lambda: results["postgres"]["submit_many"] >= 5000, ("postgres",)),
        "get": ("p99 < 5 ms", lambda: all(r["get_p99"] < 5 for r in results.values()), ()),
        "wait": ("p99 < 200 ms",
                 lambda: results["postgres"]["wait_p99"] < 200, ("postgres",)),
    }
    cells = [["", *names, "goal"]]
    for label, show, goal in rows:
        line = [label, *(show(results[n]) for n in names)]
        if goal:
            text, check, needs = goals[goal]
            if all(n in results for n in needs):
                line.append(f"{text}: {'met' if check() else 'NOT MET'}")
            else:
                line.append(f"{text}: not measured")
        else:
            line.append("")
        cells.append(line)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) if j == 0 or j == len(row) - 1 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if "sqlite" in results and "wait_p50" in results["sqlite"]:
        print("(the wait goal is PostgreSQL's, through LISTEN/NOTIFY; SQLite's waits poll, "
              "backing off to the 1 s poll_interval)")
    for name, r in results.items():
        if r.get("late"):
            print(f"({name}: {r['late']} waits began after their job had ended; not counted)")


async def main_async(args: argparse.Namespace) -> None:
    scale = 10 if args.quick else 1
    sizes = {"many": 10_000 // scale, "single": 2_000 // scale,
             "stored": 100_000 // scale, "gets": 2_000 // scale, "lists": 200 // scale,
             "waits": 200 // scale}
    pg = postgres_url()
    print(f"stores benchmark{' (--quick)' if args.quick else ''}: {os.cpu_count()} cores "
          f"({platform.machine()}), Python {platform.python_version()}, "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.1f}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cj-stores-") as tmp:
        script = os.path.join(tmp, "worker.py")
        await anyio.Path(script).write_text(WORKER)
        async with AsyncExitStack() as stack:
            databases: dict[str, str] = {}
            if pg is not None:
                tag = uuid.uuid4().hex[:12]
                for use in ("store", "wait"):
                    name = f"cj_bench_{tag}_{use}"
                    await admin(pg, f'CREATE DATABASE "{name}" TEMPLATE template0')
                    stack.push_async_callback(
                        admin, pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    databases[use] = with_database(pg, name)
                import asyncpg

                conn = await asyncpg.connect(pg)
                try:
                    version = await conn.fetchval("SHOW server_version")
                finally:
                    await conn.close()
                print(f"PostgreSQL {version} at {urlsplit(pg).hostname}:{urlsplit(pg).port}"
                      f", asyncpg {asyncpg.__version__}", flush=True)
            stores: dict[str, Callable[[], cj.Storage]] = {
                "memory": cj.InMemoryStorage,
                "sqlite": lambda: cj.SQLiteStorage(os.path.join(tmp, "store.db")),
            }
            if pg is not None:
                stores["postgres"] = lambda: cj.PostgresStorage(databases["store"])
            for name, make in stores.items():
                print(f"{name}: submit, get, list ...", flush=True)
                results[name] = await store_figures(make(), sizes)
            wait_urls = {"sqlite": "sqlite://" + os.path.join(tmp, "wait.db")}
            if pg is not None:
                wait_urls["postgres"] = databases["wait"]
            for name, url in wait_urls.items():
                print(f"{name}: wait latency across processes ...", flush=True)
                results[name].update(await wait_latency(url, sizes["waits"], script))
    print(f"\n(load average at the end: {os.getloadavg()[0]:.1f})")
    table(results, sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of every size")
    args = parser.parse_args()
    logging.getLogger("containerjobs").setLevel(logging.WARNING)
    anyio.run(main_async, args)


if __name__ == "__main__":
    main()
