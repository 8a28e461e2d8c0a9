#!/usr/bin/env python3
"""Where a job's time goes: companion to lifecycle.py.

    python3 benchmarks/lifecycle_profile.py [--jobs N] [--concurrency 1 8] [--image IMG]

For each runner of lifecycle.py (same container settings) and each concurrency, runs
N jobs and reports:

- the engine API requests per job, by endpoint, with their mean duration (for streams
  the duration is the stream's life), counted by wrapping aiodocker's ``_query`` and
  docker-py's ``APIClient.request`` (instrumentation only; the library is unchanged);
- CPU seconds per job spent by dockerd, containerd and this Python process;
- for containerjobs, the mean timeline of a job inside the manager: dispatch, launch
  (create + start), the wait, the log stream's drain after exit, remove, and the gap
  until ``manager.wait`` returns.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import logging
import os
import re
import resource
import statistics
import sys
import time
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
import docker
import structlog

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lifecycle  # noqa: E402

from containerjobs.executors._docker import DockerExecutor  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


class AiodockerNoNetwork(lifecycle.AiodockerRunner):
    """Raw aiodocker with NetworkMode "none": what a network-less job would cost.
    Not the same settings as containerjobs; an experiment, never in lifecycle.py's table."""

    host_config_extra = {"NetworkMode": "none"}


lifecycle.RUNNERS["aiodocker-nonet"] = AiodockerNoNetwork


class CJNoStats(lifecycle.CJRunner):
    """containerjobs with its per-job stats stream replaced by an idle one (no engine
    request): what the stats sampling costs. An experiment; loses peak memory and CPU."""

    def __init__(self, image: str, concurrency: int) -> None:
        super().__init__(image, concurrency, sqlite=False)

    async def __aenter__(self) -> CJNoStats:
        await super().__aenter__()

        async def no_stats(container_id: str):
            await asyncio.Event().wait()
            yield  # pragma: no cover

        for state in self.manager._hosts.values():
            state.executor.stats = no_stats
        return self


lifecycle.RUNNERS["cj-nostats"] = CJNoStats

# --- request accounting ------------------------------------------------------------

REQUESTS: list[tuple[str, float]] = []  # (endpoint, seconds)


def _endpoint(method: str, path: str) -> str:
    path = str(path).split("?", 1)[0]
    path = "/" + re.sub(r"^.*?(?=containers/|_ping|version|info)", "", path)
    path = re.sub(r"/containers/(?!create$|json$)[^/]+", "/containers/{id}", path)
    return f"{method.upper()} {path}"


_orig_query = aiodocker.Docker._query


@asynccontextmanager
async def _counted_query(self: Any, path: Any, method: str = "GET", **kwargs: Any):
    started = time.perf_counter()
    name = _endpoint(method, path)
    extra = ""
    params = kwargs.get("params") or {}
    if name.endswith("/logs"):
        extra = " follow" if str(params.get("follow")) in ("1", "True", "true") else ""
        extra += " " + "+".join(k for k in ("stdout", "stderr") if str(params.get(k)) in ("1", "True", "true"))
    try:
        async with _orig_query(self, path, method, **kwargs) as response:
            yield response
    finally:
        REQUESTS.append((name + extra, time.perf_counter() - started))


aiodocker.Docker._query = _counted_query  # type: ignore[method-assign]

_orig_request = docker.api.client.APIClient.request


def _counted_request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
    started = time.perf_counter()
    try:
        return _orig_request(self, method, url, *args, **kwargs)
    finally:
        name = _endpoint(method, url)
        params = kwargs.get("params") or {}
        if name.endswith("/logs"):
            name += " " + "+".join(k for k in ("stdout", "stderr") if params.get(k) in (1, True, "1"))
        REQUESTS.append((name, time.perf_counter() - started))


docker.api.client.APIClient.request = _counted_request  # type: ignore[method-assign]

# --- containerjobs timeline ----------------------------------------------------------

MARKS: dict[str, dict[str, float]] = collections.defaultdict(dict)  # container id -> marks
JOB_MARKS: dict[str, dict[str, float]] = collections.defaultdict(dict)  # job id -> marks


def _wrap_async(name: str, key_of: Any) -> None:
    orig = getattr(DockerExecutor, name)

    @functools.wraps(orig)
    async def wrapper(self: Any, arg: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        result = await orig(self, arg, *args, **kwargs)
        marks = key_of(arg, result)
        marks.setdefault(f"{name}_start", t0)
        marks.setdefault(f"{name}_end", time.perf_counter())
        return result

    setattr(DockerExecutor, name, wrapper)


def _launch_key(request: Any, container_id: str) -> dict[str, float]:
    MARKS[container_id]["job"] = request.job_id  # type: ignore[assignment]
    return MARKS[container_id]


_wrap_async("launch", _launch_key)
_wrap_async("wait", lambda cid, _r: MARKS[cid])
_wrap_async("remove", lambda cid, _r: MARKS[cid])

_orig_logs = DockerExecutor.logs


def _timed_logs(self: Any, container_id: str) -> Any:
    # The first read of a job's reader is its follow stream: time it and its first line.
    reader = _orig_logs(self, container_id)
    orig_read = reader.read

    async def read(sink: Any, *, follow: bool) -> None:
        marks = MARKS[container_id]
        t0 = time.perf_counter()

        def timed(item: Any) -> None:
            marks.setdefault("logs_first_line", time.perf_counter())
            sink(item)

        await orig_read(timed, follow=follow)
        marks.setdefault("logs_start", t0)
        marks.setdefault("logs_first_line", time.perf_counter())
        marks.setdefault("logs_end", time.perf_counter())

    reader.read = read
    return reader


DockerExecutor.logs = _timed_logs  # type: ignore[method-assign]

# --- CPU of the daemons ----------------------------------------------------------------


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def _pid_of(cmd_prefix: str) -> int | None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmd.strip() == cmd_prefix or cmd.startswith(cmd_prefix + " "):
            return int(pid)
    return None


DOCKERD = _pid_of("dockerd")
CONTAINERD = _pid_of("containerd --config /var/run/docker/containerd/containerd.toml")


def cpu_snapshot() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    snap = {"client": usage.ru_utime + usage.ru_stime}
    if DOCKERD:
        snap["dockerd"] = _cpu_of(DOCKERD)
    if CONTAINERD:
        snap["containerd"] = _cpu_of(CONTAINERD)
    return snap


# --- one profiled measurement ------------------------------------------------------------


async def profile(name: str, image: str, concurrency: int, jobs: int) -> None:
    async with lifecycle.RUNNERS[name](image, concurrency) as runner:
        await runner.run(max(2, min(concurrency, jobs)))
        REQUESTS.clear()
        MARKS.clear()
        JOB_MARKS.clear()
        submit_at = time.perf_counter()
        before = cpu_snapshot()
        if name.startswith("cj"):
            await _run_cj_timed(runner, jobs)
        else:
            await runner.run(jobs)
        elapsed = time.perf_counter() - submit_at
        after = cpu_snapshot()
    print(f"\n== {name}  C={concurrency}  {jobs} jobs  {jobs / elapsed:.2f} jobs/s  "
          f"({elapsed / jobs * 1000:.0f} ms of wall time per job)")
    cpu = {k: (after[k] - before[k]) / jobs * 1000 for k in after}
    print("   CPU ms per job: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    by = collections.defaultdict(list)
    for endpoint, seconds in REQUESTS:
        by[endpoint].append(seconds)
    total = sum(len(v) for v in by.values())
    print(f"   engine requests per job: {total / jobs:.2f}")
    for endpoint, values in sorted(by.items(), key=lambda kv: -sum(kv[1])):
        print(f"     {len(values) / jobs:5.2f} x {endpoint:<48} mean {statistics.mean(values) * 1000:7.1f} ms"
              f"   p50 {statistics.median(values) * 1000:7.1f} ms   max {max(values) * 1000:7.1f} ms")
    if name.startswith("cj"):
        _print_timeline(jobs)


STORAGE_CALLS: list[tuple[str, float]] = []


def _instrument_storage(storage: Any) -> None:
    """Count and time the store's calls (on this instance only)."""
    for name in ("create", "get", "compare_and_set", "claim_next", "count_active", "log_count",
                 "append_logs", "read_logs"):
        orig = getattr(storage, name)

        async def wrapper(*args: Any, __orig: Any = orig, __name: str = name, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await __orig(*args, **kwargs)
            finally:
                STORAGE_CALLS.append((__name, time.perf_counter() - t0))

        setattr(storage, name, wrapper)


async def _run_cj_timed(runner: Any, jobs: int) -> None:
    import containerjobs as cj

    manager = runner.manager
    if not getattr(manager.storage, "_bench_instrumented", False):
        _instrument_storage(manager.storage)
        manager.storage._bench_instrumented = True
    STORAGE_CALLS.clear()
    spec = cj.JobSpec(image=runner.image, command=lifecycle.COMMAND)
    submitted = await manager.submit_many([spec] * jobs)
    t_sub = time.perf_counter()

    async def waiter(job_id: str) -> None:
        done = await manager.wait(job_id)
        JOB_MARKS[job_id]["returned"] = time.perf_counter()
        JOB_MARKS[job_id]["submitted"] = t_sub
        assert done.stdout == lifecycle.EXPECTED, done

    await asyncio.gather(*(waiter(j.id) for j in submitted))


def _print_timeline(jobs: int) -> None:
    calls = collections.defaultdict(list)
    for name, seconds in STORAGE_CALLS:
        calls[name].append(seconds)
    print(f"   store calls per job: {len(STORAGE_CALLS) / jobs:.2f}, "
          f"{sum(x for _, x in STORAGE_CALLS) / jobs * 1000:.1f} ms per job in them")
    for name, values in sorted(calls.items(), key=lambda kv: -sum(kv[1])):
        print(f"     {len(values) / jobs:5.2f} x {name:<14} mean {statistics.mean(values) * 1000:6.2f} ms"
              f"   max {max(values) * 1000:6.1f} ms")
    ordered = sorted((m for m in MARKS.values() if "remove_end" in m and "launch_start" in m),
                     key=lambda m: m["launch_start"])
    gaps = [b["launch_start"] - a["remove_end"] for a, b in zip(ordered, ordered[1:])
            if b["launch_start"] > a["remove_end"]]
    if gaps:
        print(f"   idle between one job's remove and a later launch (serial runs only, "
              f"mean/max): {statistics.mean(gaps) * 1000:.1f} / {max(gaps) * 1000:.1f} ms "
              f"over {len(gaps)} gaps")
    rows = collections.defaultdict(list)
    for marks in MARKS.values():
        job = marks.get("job")
        if not isinstance(job, str) or "remove_end" not in marks:
            continue
        jm = JOB_MARKS.get(job, {})
        spans = {
            "launch (create+start)": marks["launch_end"] - marks["launch_start"],
            "launch end -> logs/stats/wait issued": marks["wait_start"] - marks["launch_end"],
            "wait + inspect": marks["wait_end"] - marks["wait_start"],
            "logs stream: last frame after wait": marks["logs_end"] - marks["wait_end"],
            "wait end -> remove issued": marks["remove_start"] - marks["wait_end"],
            "remove": marks["remove_end"] - marks["remove_start"],
            "remove end -> manager.wait returns": jm.get("returned", marks["remove_end"]) - marks["remove_end"],
            "launch start -> manager.wait returns (job)": jm.get("returned", marks["remove_end"]) - marks["launch_start"],
        }
        for k, v in spans.items():
            rows[k].append(v)
    if not rows:
        return
    print("   containerjobs per-job timeline (mean / p50 / max ms):")
    for k, v in rows.items():
        print(f"     {k:<46} {statistics.mean(v) * 1000:7.1f} {statistics.median(v) * 1000:7.1f} "
              f"{max(v) * 1000:7.1f}")


async def main_async(args: argparse.Namespace) -> None:
    if args.rounds:
        # Only throughput, runners alternated as in lifecycle.py.
        rates = collections.defaultdict(list)
        for r in range(args.rounds):
            order = args.runners[r % len(args.runners):] + args.runners[: r % len(args.runners)]
            for c in args.concurrency:
                for name in order:
                    rate = await lifecycle.measure(name, args.image, c, args.jobs)
                    rates[name, c].append(rate)
                    print(f"  round {r + 1} C={c} {name:<16} {rate:6.2f} jobs/s", flush=True)
        base = args.runners[0]
        for c in args.concurrency:
            for name in args.runners:
                ratios = [x / y for x, y in zip(rates[name, c], rates[base, c])]
                print(f"C={c:<3} {name:<16} median {statistics.median(rates[name, c]):6.2f} jobs/s"
                      f"   per-round ratio to {base}: median {statistics.median(ratios):.3f} "
                      f"[{min(ratios):.2f}-{max(ratios):.2f}]")
        return
    for c in args.concurrency:
        for name in args.runners:
            await profile(name, args.image, c, args.jobs)
    ours, foreign = lifecycle.leftovers()
    print(f"\nleftover containers of this run: {ours or 'none'}"
          + (f" (other processes': {foreign})" if foreign else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runners", nargs="+", default=["cj-memory", "aiodocker", "docker-py"],
                        choices=list(lifecycle.RUNNERS))
    parser.add_argument("--image", default="containerjobs-test/busybox:latest")
    parser.add_argument("--rounds", type=int, default=0,
                        help="only throughput, alternating the runners for this many rounds")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
