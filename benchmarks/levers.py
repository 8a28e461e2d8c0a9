#!/usr/bin/env python3
"""Engine levers: what a job without network, and the runsc (gVisor) and crun runtimes,
cost a short job, side by side in one run on the same daemon.

    python3 benchmarks/levers.py [--jobs N] [--concurrency 1 4] [--rounds R] [--image IMG]

Variants, each a ``JobManager`` with one ``DockerHost`` on the test bed's main daemon
(``scripts/testbed up`` registers runsc and crun there):

- ``default``: the default bridge, the daemon's default runtime (runc);
- ``none+runc``: ``JobSpec(network_mode="none")``, runc;
- ``bridge+runsc``: the default bridge, ``DockerHost(runtime="runsc")``;
- ``none+runsc``: no network, runsc;
- ``crun``: the default bridge, ``DockerHost(runtime="crun")``, measured only when a
  probe job on crun completes (Debian's crun 1.8 cannot start containers on a machine
  with cgroup v1's hybrid layout; the table then says how it failed).

Each job is ``echo hello``, its stdout checked. Each measurement builds a fresh manager
and warms it with a few jobs before the clock starts; C client tasks then each submit a
job, wait for it, check it and submit the next, until N jobs have run. Every round
measures each (concurrency, variant) pair once, the variant order rotating from round
to round, so drift on the machine hits all alike. The table shows the median jobs/s
over the rounds, its ratio to ``default`` at the same concurrency, and the median and
95th-percentile latency (submit to ``wait`` returning) over every measured job.

Before it starts a container it waits until no ``pytest`` and no ``bash .ci/run``
process runs (``pgrep -f``): someone else's Docker tests would skew both.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import anyio
import attrs

import containerjobs as cj

SOCKET = "unix:///var/run/docker.sock"
IMAGE = "containerjobs-test/busybox:latest"
WARMUP = 2
BUSY = ("pytest", "bash .ci/run")


@attrs.frozen
class Variant:
    name: str
    network_mode: str | None
    runtime: str | None


VARIANTS = (
    Variant("default", None, None),
    Variant("none+runc", "none", None),
    Variant("bridge+runsc", None, "runsc"),
    Variant("none+runsc", "none", "runsc"),
    Variant("crun", None, "crun"),
)


@attrs.frozen
class Measure:
    jobs_per_s: float
    latencies: list[float]


def busy() -> list[str]:
    found = []
    for pattern in BUSY:
        done = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        found += [f"{pattern} ({pid})" for pid in done.stdout.split()]
    return found


async def wait_until_quiet() -> None:
    said = 0.0
    while others := busy():
        if time.monotonic() - said > 30:
            print(f"waiting: {', '.join(others)} running", file=sys.stderr, flush=True)
            said = time.monotonic()
        await anyio.sleep(2)


def spec(variant: Variant, image: str) -> cj.JobSpec:
    return cj.JobSpec(image, "echo hello", network_mode=variant.network_mode)


def manager(variant: Variant, concurrency: int) -> cj.JobManager:
    host = cj.DockerHost(
        "local", SOCKET, max_concurrent_jobs=concurrency, runtime=variant.runtime
    )
    return cj.JobManager(hosts=[host])


async def probe(variant: Variant, image: str) -> str | None:
    """None when a job on `variant` completes with the right output, else why not."""
    async with manager(variant, 1) as m:
        job = await m.run(spec(variant, image), timeout=60)
    if job.status is cj.JobStatus.COMPLETED and job.stdout == "hello\n":
        return None
    return job.error or f"{job.status}, stdout {job.stdout!r}"


async def measure(variant: Variant, concurrency: int, jobs: int, image: str) -> Measure:
    async with manager(variant, concurrency) as m:
        for _ in range(WARMUP):
            await m.run(spec(variant, image), timeout=60)
        latencies: list[float] = []
        left = jobs

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                start = time.perf_counter()
                job = await m.run(spec(variant, image), timeout=120)
                latencies.append(time.perf_counter() - start)
                if job.status is not cj.JobStatus.COMPLETED or job.stdout != "hello\n":
                    raise RuntimeError(f"{variant.name}: job {job.id} {job.status}: {job.error}")

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(client)
        elapsed = time.perf_counter() - start
    return Measure(jobs / elapsed, latencies)


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def machine() -> str:
    docker = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"],
        capture_output=True, text=True,
    ).stdout.strip()
    runsc = subprocess.run(["runsc", "--version"], capture_output=True, text=True).stdout
    crun = subprocess.run(["crun", "--version"], capture_output=True, text=True).stdout
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cores, Docker {docker}, "
        f"{runsc.splitlines()[0] if runsc else 'runsc ?'}, "
        f"{crun.splitlines()[0] if crun else 'crun ?'}, Python {platform.python_version()}"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12, help="measured jobs per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image", default=IMAGE)
    args = parser.parse_args()

    await wait_until_quiet()
    began = time.perf_counter()
    variants: list[Variant] = []
    failed: dict[str, str] = {}
    for variant in VARIANTS:
        why = await probe(variant, args.image)
        if why is None:
            variants.append(variant)
        else:
            failed[variant.name] = why
    results: dict[tuple[int, str], list[Measure]] = {}
    for round_ in range(args.rounds):
        order = variants[round_ % len(variants):] + variants[: round_ % len(variants)]
        for concurrency in args.concurrency:
            for variant in order:
                await wait_until_quiet()
                result = await measure(variant, concurrency, args.jobs, args.image)
                results.setdefault((concurrency, variant.name), []).append(result)
                print(
                    f"round {round_ + 1} c={concurrency} {variant.name}: "
                    f"{result.jobs_per_s:.2f} jobs/s",
                    file=sys.stderr, flush=True,
                )

    print(f"\n{machine()}")
    print(f"{args.jobs} jobs per measurement, {args.rounds} rounds, "
          f"{time.perf_counter() - began:.0f} s in all\n")
    print("| concurrency | variant | jobs/s (median) | vs default | latency median | latency p95 |")
    print("|---:|---|---:|---:|---:|---:|")
    for concurrency in args.concurrency:
        base = statistics.median(m.jobs_per_s for m in results[(concurrency, "default")])
        for variant in variants:
            measures = results[(concurrency, variant.name)]
            rate = statistics.median(m.jobs_per_s for m in measures)
            lat = [x for m in measures for x in m.latencies]
            print(
                f"| {concurrency} | {variant.name} | {rate:.2f} | {rate / base:.2f} | "
                f"{statistics.median(lat) * 1000:.0f} ms | {p95(lat) * 1000:.0f} ms |"
            )
    for name, why in failed.items():
        print(f"\n{name}: not measured, its probe job failed: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
