#!/usr/bin/env python3
"""Job lifecycle throughput: containerjobs against raw aiodocker and docker-py.

Every runner does the whole honest lifecycle of a short job (``echo hello``) with the
same container settings: create (the hardened config containerjobs builds), start,
wait for exit, read stdout and stderr apart, read the exit code, remove the container.

    python3 benchmarks/lifecycle.py [--jobs N] [--concurrency 1 8] [--rounds R] [--image IMG]

Runners:

- ``cj-memory``: ``JobManager`` with the default ``InMemoryStorage``;
- ``cj-sqlite``: ``JobManager`` with ``SQLiteStorage`` on a fresh temporary file;
- ``aiodocker``: one ``aiodocker.Docker()`` client and an ``asyncio.Semaphore(C)``;
- ``docker-py``: one ``docker.DockerClient`` and a ``ThreadPoolExecutor(C)``.

Each measurement builds its runner (manager started, client opened) and warms it with a
couple of jobs before the clock starts; the clock covers N jobs at concurrency C. The
runners alternate: every round measures each (concurrency, runner) pair once, the
runner order rotating from round to round, so drift on the machine hits all of them
alike. The table shows the median jobs/s over the rounds.

Goals: containerjobs (in-memory store) reaches at least 0.95 of raw aiodocker's
throughput at C=1 and at C=8, and at least 1.2x docker-py's at C=8.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiodocker
import docker
import structlog

import containerjobs as cj

SOCKET = "unix:///var/run/docker.sock"
COMMAND = "echo hello"
EXPECTED = "hello\n"
BENCH_LABEL = "containerjobs.benchmark"  # on every container the raw runners create
WARMUP_JOBS = 2
MAX_ATTEMPTS = 3  # a measurement whose jobs fail verification is redone, and reported
# What this run started: manager ids (label containerjobs.manager) and raw-runner run ids.
OURS: set[str] = set()

# The hardened settings containerjobs applies with the default SecurityPolicy
# (see DockerExecutor._container_config); check_same_config() proves they match.
MEMORY = 512 * 1024 * 1024
NANO_CPUS = 1_000_000_000
PIDS_LIMIT = 256
USER = "65534:65534"
TMPFS = {"/tmp": "rw,nosuid,nodev,mode=1777,size=64m"}


def raw_config(image: str, labels: dict[str, str], command: str = COMMAND) -> dict[str, Any]:
    """The engine config of one job, as containerjobs would send it."""
    return {
        "Image": image,
        "Env": [],
        "Labels": labels,
        "Tty": False,
        "OpenStdin": False,
        "AttachStdin": False,
        "Cmd": ["/bin/sh", "-c", command],
        "User": USER,
        "HostConfig": {
            "Memory": MEMORY,
            "MemorySwap": MEMORY,
            "NanoCpus": NANO_CPUS,
            "Privileged": False,
            "ReadonlyRootfs": True,
            "LogConfig": {"Type": "json-file", "Config": {}},
            "Mounts": [],
            "Tmpfs": dict(TMPFS),
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "PidsLimit": PIDS_LIMIT,
        },
    }


def check_same_config(image: str, command: str = COMMAND) -> None:
    """Fail loudly if containerjobs' config differs from the raw runners' (labels aside)."""
    from containerjobs.executors._docker import DockerExecutor

    policy = cj.SecurityPolicy()
    spec = policy.apply(cj.JobSpec(image=image, command=command))
    job = cj.Job(id="x", spec=spec, name=None, created_at=datetime.now(timezone.utc))
    executor = DockerExecutor(cj.DockerHost("local", SOCKET))
    theirs = executor._container_config(policy.launch_request(job, labels={}))
    ours = raw_config(image, {}, command)
    theirs = {**theirs, "Labels": {}}
    if theirs != ours:
        raise SystemExit(f"container configs differ:\n containerjobs: {theirs}\n raw: {ours}")


# --- runners -----------------------------------------------------------------------
# A runner is an async context manager factory: entering it builds the client (not
# timed); the object it yields has `run(n)` which runs n jobs and checks them.


class CJRunner:
    def __init__(self, image: str, concurrency: int, sqlite: bool) -> None:
        self.image, self.concurrency, self.sqlite = image, concurrency, sqlite
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    async def __aenter__(self) -> CJRunner:
        storage = None
        if self.sqlite:
            self._tmp = tempfile.TemporaryDirectory(prefix="cj-bench-")
            storage = cj.SQLiteStorage(os.path.join(self._tmp.name, "jobs.db"))
        self.manager = cj.JobManager(
            hosts=[cj.DockerHost("local", SOCKET, max_concurrent_jobs=self.concurrency)],
            storage=storage,
        )
        OURS.add(self.manager.id)
        await self.manager.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.manager.__aexit__(*exc)
        if self._tmp is not None:
            self._tmp.cleanup()

    async def run(self, n: int) -> None:
        spec = cj.JobSpec(image=self.image, command=COMMAND)
        jobs = await self.manager.submit_many([spec] * n)
        for job in jobs:
            done = await self.manager.wait(job.id)
            if done.status is not cj.JobStatus.COMPLETED or done.stdout != EXPECTED \
                    or done.stderr != "" or done.exit_code != 0:
                raise AssertionError(f"containerjobs job went wrong: {done!r}")


class AiodockerRunner:
    # lifecycle_profile.py sets this to try engine settings (e.g. NetworkMode); never here.
    host_config_extra: dict[str, Any] = {}

    def __init__(self, image: str, concurrency: int) -> None:
        self.image, self.concurrency = image, concurrency

    async def __aenter__(self) -> AiodockerRunner:
        self.docker = aiodocker.Docker(url=SOCKET)
        await self.docker.version()  # connect and settle the API version up front
        self.sem = asyncio.Semaphore(self.concurrency)
        self.run_id = uuid.uuid4().hex[:8]
        OURS.add(self.run_id)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.docker.close()

    async def one(self) -> None:
        async with self.sem:
            jid = uuid.uuid4().hex
            config = raw_config(self.image, {BENCH_LABEL: self.run_id, "bench.job": jid})
            config["HostConfig"].update(self.host_config_extra)
            container = await self.docker.containers.create(config, name=f"cjb-{jid}")
            try:
                await container.start()
                await container.wait()
                stdout = "".join(await container.log(stdout=True))
                stderr = "".join(await container.log(stderr=True))
                state = (await container.show())["State"]
            finally:
                await container.delete(force=True, v=True)
            if stdout != EXPECTED or stderr != "" or state["ExitCode"] != 0 or state["OOMKilled"]:
                raise AssertionError(f"aiodocker job went wrong: {stdout!r} {stderr!r} {state}")

    async def run(self, n: int) -> None:
        await asyncio.gather(*(self.one() for _ in range(n)))


class DockerPyRunner:
    def __init__(self, image: str, concurrency: int) -> None:
        self.image, self.concurrency = image, concurrency

    async def __aenter__(self) -> DockerPyRunner:
        self.client = docker.DockerClient(base_url=SOCKET, max_pool_size=self.concurrency + 4)
        self.client.version()
        self.pool = ThreadPoolExecutor(self.concurrency)
        self.run_id = uuid.uuid4().hex[:8]
        OURS.add(self.run_id)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()

    def one(self) -> None:
        jid = uuid.uuid4().hex
        container = self.client.containers.create(
            self.image,
            ["/bin/sh", "-c", COMMAND],
            name=f"cjb-{jid}",
            mem_limit=MEMORY,
            memswap_limit=MEMORY,
            nano_cpus=NANO_CPUS,
            pids_limit=PIDS_LIMIT,
            read_only=True,
            tmpfs=dict(TMPFS),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            privileged=False,
            user=USER,
            labels={BENCH_LABEL: self.run_id, "bench.job": jid},
            log_config=docker.types.LogConfig(type="json-file", config={}),
        )
        try:
            container.start()
            container.wait()
            stdout = container.logs(stdout=True, stderr=False).decode()
            stderr = container.logs(stdout=False, stderr=True).decode()
            container.reload()
            state = container.attrs["State"]
        finally:
            container.remove(force=True, v=True)
        if stdout != EXPECTED or stderr != "" or state["ExitCode"] != 0 or state["OOMKilled"]:
            raise AssertionError(f"docker-py job went wrong: {stdout!r} {stderr!r} {state}")

    async def run(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.pool, self.one) for _ in range(n)))


RUNNERS: dict[str, Callable[[str, int], Any]] = {
    "cj-memory": lambda image, c: CJRunner(image, c, sqlite=False),
    "cj-sqlite": lambda image, c: CJRunner(image, c, sqlite=True),
    "aiodocker": AiodockerRunner,
    "docker-py": DockerPyRunner,
}


async def measure(name: str, image: str, concurrency: int, jobs: int) -> float:
    """Jobs per second of one runner for `jobs` jobs at `concurrency`."""
    async with RUNNERS[name](image, concurrency) as runner:
        await runner.run(max(WARMUP_JOBS, min(concurrency, jobs)))
        started = time.perf_counter()
        await runner.run(jobs)
        elapsed = time.perf_counter() - started
    return jobs / elapsed


def leftovers() -> tuple[list[str], list[str]]:
    """Labelled containers still on the daemon: (ours, other processes')."""
    client = docker.DockerClient(base_url=SOCKET)
    try:
        ours, foreign = [], []
        for label in ("containerjobs.job_id", BENCH_LABEL):
            for c in client.containers.list(all=True, filters={"label": label}):
                labels = c.labels or {}
                mine = labels.get("containerjobs.manager") in OURS or labels.get(BENCH_LABEL) in OURS
                (ours if mine else foreign).append(c.id[:12])
        return ours, foreign
    finally:
        client.close()


def header(args: argparse.Namespace) -> None:
    client = docker.DockerClient(base_url=SOCKET)
    try:
        version = client.version()
        info = client.info()
    finally:
        client.close()
    print("containerjobs lifecycle benchmark")
    print(f"  machine : {os.cpu_count()} cores ({platform.machine()}), {platform.platform()}, "
          f"Python {platform.python_version()}")
    print(f"  docker  : server {version.get('Version')} (API {version.get('ApiVersion')}), "
          f"storage {info.get('Driver')}, cgroup v{info.get('CgroupVersion', '?')}, "
          f"runtime {info.get('DefaultRuntime')}")
    print(f"  clients : aiodocker {aiodocker.__version__}, docker-py {docker.__version__}")
    print(f"  run     : {args.jobs} jobs x concurrency {args.concurrency} x {args.rounds} rounds, "
          f"image {args.image}, command {COMMAND!r}")
    print(flush=True)


async def main_async(args: argparse.Namespace) -> int:
    check_same_config(args.image)
    names = list(RUNNERS)
    results: dict[tuple[str, int], list[float]] = {(n, c): [] for n in names for c in args.concurrency}
    redone: list[str] = []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for c in args.concurrency:
            for name in order:
                for attempt in range(1, MAX_ATTEMPTS + 1):
                    try:
                        rate = await measure(name, args.image, c, args.jobs)
                        break
                    except Exception as exc:  # a job failed its checks: say so, redo
                        redone.append(f"round {r + 1} C={c} {name}: {type(exc).__name__}: "
                                      f"{str(exc)[:300]}")
                        print(f"  round {r + 1}/{args.rounds}  C={c:<3} {name:<10} FAILED "
                              f"(attempt {attempt}): {redone[-1]}", flush=True)
                        if attempt == MAX_ATTEMPTS:
                            raise
                results[name, c].append(rate)
                print(f"  round {r + 1}/{args.rounds}  C={c:<3} {name:<10} {rate:7.2f} jobs/s",
                      flush=True)
    print()

    med = {key: statistics.median(values) for key, values in results.items()}
    cols = names + ["cj/aiodocker", "cj/docker-py", "cj-sqlite/aiodocker"]
    print("median jobs/s over rounds (min-max in brackets)")
    width = 21
    print(f"{'C':>3} | " + " | ".join(f"{col:>{width}}" for col in cols))
    print("-" * (6 + (width + 3) * len(cols)))
    for c in args.concurrency:
        cells = [
            f"{med[n, c]:6.2f} [{min(results[n, c]):5.2f}-{max(results[n, c]):5.2f}]"
            for n in names
        ]
        cells += [
            f"{med['cj-memory', c] / med['aiodocker', c]:.3f}",
            f"{med['cj-memory', c] / med['docker-py', c]:.3f}",
            f"{med['cj-sqlite', c] / med['aiodocker', c]:.3f}",
        ]
        print(f"{c:>3} | " + " | ".join(f"{cell:>{width}}" for cell in cells))
    print()
    # Drift moves whole rounds; a ratio taken within each round cancels most of it.
    print("per-round ratios (same round, so less drift), median [min-max]:")
    for c in args.concurrency:
        parts = []
        for a, b in (("cj-memory", "aiodocker"), ("cj-memory", "docker-py"),
                     ("cj-sqlite", "aiodocker"), ("aiodocker", "docker-py")):
            rs = [x / y for x, y in zip(results[a, c], results[b, c])]
            parts.append(f"{a}/{b} {statistics.median(rs):.3f} [{min(rs):.2f}-{max(rs):.2f}]")
        print(f"  C={c:<3} " + "   ".join(parts))
    print()

    ok = True
    print("goals (containerjobs with the default in-memory store):")
    for c in (1, 8):
        if c not in args.concurrency:
            print(f"  C={c}: not measured")
            continue
        ratio = med["cj-memory", c] / med["aiodocker", c]
        met = ratio >= 0.95
        ok &= met
        print(f"  >= 0.95 x raw aiodocker at C={c}: {ratio:.3f}  {'MET' if met else 'NOT MET'}")
    if 8 in args.concurrency:
        ratio = med["cj-memory", 8] / med["docker-py", 8]
        met = ratio >= 1.2
        ok &= met
        print(f"  >= 1.2 x docker-py at C=8:        {ratio:.3f}  {'MET' if met else 'NOT MET'}")
        raw = med["aiodocker", 8] / med["docker-py", 8]
        print(f"  (for reference, raw aiodocker / docker-py at C=8: {raw:.3f})")

    if redone:
        print(f"\n{len(redone)} measurement(s) redone after a failed job:")
        for line in redone:
            print(f"  {line}")
    ours, foreign = leftovers()
    if foreign:
        print(f"\n(labelled containers of other processes on this daemon, not ours: {foreign})")
    if ours:
        print(f"\nLEFTOVER CONTAINERS OF THIS RUN: {ours}")
        return 2
    print("\nno container of this run left behind")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=24, help="jobs per measurement (24)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8],
                        help="concurrency levels (1 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is shown (3)")
    parser.add_argument("--image", default="containerjobs-test/busybox:latest")
    parser.add_argument("--cj-logs", action="store_true",
                        help="keep containerjobs' structlog output (default: warnings only)")
    args = parser.parse_args()
    if not args.cj_logs:
        # As an application would in production: the library's info events filtered out.
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    header(args)
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
