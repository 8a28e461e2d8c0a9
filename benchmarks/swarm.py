#!/usr/bin/env python3
"""Short jobs on a Swarm host against a Docker host, on the same daemon.

The test bed's main daemon is both a plain Docker host and a single-node Swarm
manager, so the two executors can be compared on the same machine, the same image and
the same job (``echo hello``, its stdout checked):

    python3 benchmarks/swarm.py [--jobs N] [--concurrency 1 4] [--rounds R] [--image IMG]

Runners:

- ``cj-docker``: ``JobManager`` with ``DockerHost("local", SOCKET, max_concurrent_jobs=C)``;
  each job a container, created, started, waited for and removed;
- ``cj-swarm``: ``JobManager`` with ``SwarmHost("swarm", SOCKET, max_concurrent_jobs=C)``;
  each job a one-shot replicated-job service, placed by Swarm's scheduler, its task's
  state read until it ends, then the service removed. Its policy allows
  no-new-privileges to go unenforced, which a service cannot set before Docker 27
  (API 1.46); the test bed runs Docker 20.10.

Each measurement builds a fresh manager and warms it with a few jobs before the clock
starts. C client tasks then each submit one job, wait for it to end, check it, and
submit the next, until N jobs have run: C jobs are in flight at all times, and each
job's latency (from ``submit`` to ``wait`` returning) holds no time queued behind the
others. The runners alternate: every round measures each (concurrency, runner) pair
once, the runner order rotating from round to round, so drift on the machine hits both
alike. The table shows the median jobs/s over the rounds, the ratio swarm/docker (of
the medians, and the median of the ratios within each round), and the median latency
over every measured job.

Where the time goes: the daemon's events (a service's create and remove, a container's
create, start, die and destroy), read from one event stream for the whole run, are set
beside the job's record (submitted, ``started_at``, ``completed_at``): the median time
of each step after the submit. Last, PULL_PROBES pulls of the image through the API time
what a Swarm agent attempts before each task it runs (the Docker host does not pull an
image it has).

At the end, no service and no container labelled ``containerjobs.job_id`` by one of this
run's managers may remain (exit status 2 if one does); those of other processes on the
same daemon are left alone, and only counted. Swarm itself keeps the task record of
each removed replicated-job service (moby/moby#42789); those of this run are counted.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import anyio
import attrs
import docker

import containerjobs as cj

SOCKET = "unix:///var/run/docker.sock"
COMMAND = "echo hello"
EXPECTED = "hello\n"
LABEL_JOB = "containerjobs.job_id"
LABEL_MANAGER = "containerjobs.manager"
WARMUP_JOBS = 2
MAX_ATTEMPTS = 3  # a measurement whose jobs fail their checks is redone, and reported
RUNNERS = ("cj-docker", "cj-swarm")
SERVICE_NAME = re.compile(r"cj-([0-9a-f-]{36})-[0-9]+")
PULL_PROBES = 5
# Every manager this run made: its id is the containerjobs.manager label of its
# containers and services.
OURS: set[str] = set()
# The steps of a job, in the order shown: the daemon's container events and the job's
# own record; each as seconds after the submit.
STEPS = (
    ("service created", "service create"),
    ("container created", "create"),
    ("container started", "start"),
    ("container died (command done)", "die"),
    ("job running (started_at)", "running"),
    ("service removed", "service remove"),
    ("container destroyed", "destroy"),
    ("job completed (completed_at)", "completed"),
)


# --- the daemon's events --------------------------------------------------------------


class Events:
    """The container and service events of this run's jobs, as they happen: job id ->
    action -> epoch seconds (the first of each action). One stream, in a thread, for
    the run."""

    def __init__(self) -> None:
        self.client = docker.DockerClient(base_url=SOCKET)
        # A service event carries the service's name, not its labels: the Swarm
        # executor names a job's service cj-<job id>-<attempt>.
        self.stream = self.client.events(decode=True, filters={"type": ["container", "service"]})
        self.seen: dict[str, dict[str, float]] = {}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                attributes = event.get("Actor", {}).get("Attributes", {})
                action = str(event.get("Action"))
                if event.get("Type") == "service":
                    match = SERVICE_NAME.fullmatch(attributes.get("name", ""))
                    if match is None:
                        continue
                    job_id, action = match[1], f"service {action}"
                elif attributes.get(LABEL_MANAGER) in OURS and LABEL_JOB in attributes:
                    job_id = attributes[LABEL_JOB]
                else:
                    continue
                actions = self.seen.setdefault(job_id, {})
                actions.setdefault(action, event["timeNano"] / 1e9)
        except Exception:  # the stream closed under us at the end of the run
            pass

    async def settle(self, job_ids: list[str], within: float = 3.0) -> None:
        """Give the last events of these jobs a moment to arrive (off the clock); the
        thread fills `seen`, so this looks again every 50 ms."""
        for _ in range(round(within / 0.05)):
            if all("destroy" in self.seen.get(job_id, {}) for job_id in job_ids):
                return
            await anyio.sleep(0.05)

    def close(self) -> None:
        self.stream.close()
        self.client.close()
        self.thread.join(timeout=2)


# --- the runners ----------------------------------------------------------------------


@attrs.frozen
class Done:
    job: cj.Job
    latency: float  # seconds from the submit to wait() returning


@attrs.frozen
class Measurement:
    rate: float  # jobs/s
    done: list[Done]


def manager(name: str, concurrency: int) -> cj.JobManager:
    if name == "cj-docker":
        return cj.JobManager(
            hosts=[cj.DockerHost("local", SOCKET, max_concurrent_jobs=concurrency)],
            on_exit="cancel",
        )
    return cj.JobManager(
        hosts=[cj.SwarmHost("swarm", SOCKET, max_concurrent_jobs=concurrency)],
        # Docker 20.10 cannot set no-new-privileges on a service's containers.
        policy=cj.SecurityPolicy(allow_unenforced=("no-new-privileges",)),
        on_exit="cancel",
    )


def check(job: cj.Job, host: str) -> None:
    if (
        job.status is not cj.JobStatus.COMPLETED
        or job.stdout != EXPECTED
        or job.stderr != ""
        or job.exit_code != 0
        or job.host != host
    ):
        raise AssertionError(
            f"job {job.id} went wrong: status {job.status}, host {job.host!r}, exit "
            f"{job.exit_code}, stdout {job.stdout!r}, stderr {job.stderr!r}, error {job.error!r}"
        )


async def run_jobs(
    jobs: cj.JobManager, host: str, image: str, n: int, concurrency: int
) -> list[Done]:
    """n jobs, `concurrency` in flight at once: each client task submits a job, waits
    for it, checks it, and submits the next."""
    spec = cj.JobSpec(image=image, command=COMMAND)
    left = iter(range(n))
    done: list[Done] = []

    async def client() -> None:
        for _ in left:
            started = time.perf_counter()
            job = await jobs.run(spec, timeout=120)
            done.append(Done(job, time.perf_counter() - started))
            check(job, host)

    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(client)
    return done


async def measure(name: str, image: str, concurrency: int, n: int) -> Measurement:
    host = "local" if name == "cj-docker" else "swarm"
    jobs = manager(name, concurrency)
    OURS.add(jobs.id)
    async with jobs:
        await run_jobs(jobs, host, image, max(WARMUP_JOBS, concurrency), concurrency)
        started = time.perf_counter()
        done = await run_jobs(jobs, host, image, n, concurrency)
        elapsed = time.perf_counter() - started
    return Measurement(n / elapsed, done)


# --- what is left ---------------------------------------------------------------------


def leftovers() -> tuple[list[str], int]:
    """Labelled services and containers still on the daemon: (this run's, how many of
    other processes')."""
    client = docker.DockerClient(base_url=SOCKET)
    try:
        ours: list[str] = []
        foreign = 0
        for service in client.services.list(filters={"label": LABEL_JOB}):
            labels = service.attrs.get("Spec", {}).get("Labels") or {}
            if labels.get(LABEL_MANAGER) in OURS:
                ours.append(f"service {service.id[:12]} ({service.name})")
            else:
                foreign += 1
        for container in client.containers.list(all=True, filters={"label": LABEL_JOB}):
            if (container.labels or {}).get(LABEL_MANAGER) in OURS:
                ours.append(f"container {container.id[:12]} ({container.name})")
            else:
                foreign += 1
        return ours, foreign
    finally:
        client.close()


def task_records() -> int:
    """The task records of this run's services, which Swarm keeps once the service is
    removed (moby/moby#42789): no API call removes them, so they are counted, not
    failed on."""
    client = docker.APIClient(base_url=SOCKET)
    try:
        services = {service["ID"] for service in client.services()}
        return sum(
            1 for task in client.tasks()
            if task.get("ServiceID") not in services
            and (task["Spec"].get("ContainerSpec", {}).get("Labels") or {}).get(LABEL_MANAGER)
            in OURS
        )
    finally:
        client.close()


def pull_attempts(image: str) -> tuple[list[float], str]:
    """What a Swarm agent does before each task it runs: pull the image. The times of
    PULL_PROBES pulls through the API, and how the last one ended."""
    client = docker.APIClient(base_url=SOCKET)
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:
        repository, tag = image, "latest"
    times: list[float] = []
    outcome = ""
    try:
        for _ in range(PULL_PROBES):
            started = time.perf_counter()
            try:
                # An error comes as the HTTP status, or within the progress stream.
                errors = [item["error"] for item in client.pull(
                    repository, tag, stream=True, decode=True) if "error" in item]
                outcome = f"failed: {errors[-1]}" if errors else "pulled"
            except docker.errors.APIError as exc:
                outcome = f"failed: {exc.explanation or exc}"
            times.append(time.perf_counter() - started)
    finally:
        client.close()
    return times, outcome


# --- the report -----------------------------------------------------------------------


def header(args: argparse.Namespace) -> None:
    client = docker.DockerClient(base_url=SOCKET)
    try:
        version = client.version()
        info = client.info()
    finally:
        client.close()
    swarm = info.get("Swarm") or {}
    print("containerjobs Swarm benchmark")
    print(f"  when    : {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"  machine : {os.cpu_count()} cores ({platform.machine()}), {platform.platform()}, "
          f"Python {platform.python_version()}")
    print(f"  docker  : server {version.get('Version')} (API {version.get('ApiVersion')}), "
          f"storage {info.get('Driver')}, cgroup v{info.get('CgroupVersion', '?')}, "
          f"runtime {info.get('DefaultRuntime')}")
    print(f"  swarm   : {swarm.get('LocalNodeState')}, {swarm.get('Nodes')} node(s), "
          f"{swarm.get('Managers')} manager(s), this node a manager: "
          f"{bool(swarm.get('ControlAvailable'))}")
    print(f"  run     : {args.jobs} jobs x concurrency {args.concurrency} x {args.rounds} rounds, "
          f"image {args.image}, command {COMMAND!r}")
    print(flush=True)


def describe(exc: BaseException) -> str:
    # A failed check surfaces from the client tasks' task group, wrapped.
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def steps(done: list[Done], events: Events) -> Iterator[tuple[str, float | None, int]]:
    """Each step's median time after the submit, in seconds, and how many jobs had it."""
    for label, key in STEPS:
        times: list[float] = []
        for item in done:
            job = item.job
            submitted = job.created_at.timestamp()
            if key == "running" and job.started_at is not None:
                times.append(job.started_at.timestamp() - submitted)
            elif key == "completed" and job.completed_at is not None:
                times.append(job.completed_at.timestamp() - submitted)
            elif key in events.seen.get(job.id, {}):
                times.append(events.seen[job.id][key] - submitted)
        yield label, statistics.median(times) if times else None, len(times)


def report(
    args: argparse.Namespace,
    results: dict[tuple[str, int], list[Measurement]],
    events: Events,
) -> None:
    med = {key: statistics.median(m.rate for m in runs) for key, runs in results.items()}
    lat = {
        key: statistics.median(d.latency for m in runs for d in m.done)
        for key, runs in results.items()
    }
    print("median jobs/s over rounds [min-max]; latency: median over every measured job, "
          "submit to wait() returning")
    cols = ["C", "cj-docker jobs/s", "cj-swarm jobs/s", "swarm/docker",
            "within rounds", "docker latency", "swarm latency", "swarm/docker latency"]
    rows = [cols]
    for c in args.concurrency:
        rates = {n: [m.rate for m in results[n, c]] for n in RUNNERS}
        within = [s / d for s, d in zip(rates["cj-swarm"], rates["cj-docker"], strict=True)]
        rows.append([
            str(c),
            *(f"{med[n, c]:.2f} [{min(rates[n]):.2f}-{max(rates[n]):.2f}]" for n in RUNNERS),
            f"{med['cj-swarm', c] / med['cj-docker', c]:.2f}",
            f"{statistics.median(within):.2f} [{min(within):.2f}-{max(within):.2f}]",
            f"{ms(lat['cj-docker', c])} ms",
            f"{ms(lat['cj-swarm', c])} ms",
            f"{lat['cj-swarm', c] / lat['cj-docker', c]:.2f}",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    for i, row in enumerate(rows):
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()

    print("where the time goes: median ms after the submit (jobs with that step)")
    keys = [(n, c) for c in args.concurrency for n in RUNNERS]
    table = {key: list(steps([d for m in results[key] for d in m.done], events)) for key in keys}
    cols = ["step", *(f"{n} C={c}" for n, c in keys)]
    rows = [cols]
    for i, (label, _) in enumerate(STEPS):
        cells = [label]
        for key in keys:
            _, value, count = table[key][i]
            total = sum(len(m.done) for m in results[key])
            cell = "-" if value is None else ms(value)
            cells.append(cell if count in (0, total) else f"{cell} ({count})")
        rows.append(cells)
    # A job is recorded running when the executor learns its container runs; the
    # Swarm executor learns it from the task's state, read at intervals.
    late = ["seen running after its command ended"]
    for key in keys:
        jobs = [d.job for m in results[key] for d in m.done]
        count = sum(
            1 for job in jobs
            if job.started_at is not None and "die" in events.seen.get(job.id, {})
            and job.started_at.timestamp() > events.seen[job.id]["die"]
        )
        late.append(f"{count} of {len(jobs)}")
    rows.append(late)
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if j == 0 else cell.rjust(w)
                        for j, (cell, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()


async def main_async(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    events = Events()
    results: dict[tuple[str, int], list[Measurement]] = {
        (n, c): [] for n in RUNNERS for c in args.concurrency
    }
    redone: list[str] = []
    try:
        for r in range(args.rounds):
            order = RUNNERS[r % 2:] + RUNNERS[: r % 2]
            for c in args.concurrency:
                for name in order:
                    for attempt in range(1, MAX_ATTEMPTS + 1):
                        try:
                            m = await measure(name, args.image, c, args.jobs)
                            break
                        except Exception as exc:  # a job failed its checks: say so, redo
                            redone.append(f"round {r + 1} C={c} {name}: {describe(exc)}")
                            print(f"  round {r + 1}/{args.rounds}  C={c:<2} {name:<9} FAILED "
                                  f"(attempt {attempt}): {redone[-1]}", flush=True)
                            if attempt == MAX_ATTEMPTS:
                                raise
                    await events.settle([d.job.id for d in m.done])
                    results[name, c].append(m)
                    print(f"  round {r + 1}/{args.rounds}  C={c:<2} {name:<9} {m.rate:6.2f} "
                          f"jobs/s, latency median "
                          f"{ms(statistics.median(d.latency for d in m.done))} ms", flush=True)
        print()
        report(args, results, events)
    finally:
        events.close()
    times, outcome = pull_attempts(args.image)
    print(f"a pull of {args.image} through the API, as a Swarm agent tries before each task: "
          f"median {ms(statistics.median(times))} ms [{ms(min(times))}-{ms(max(times))}] "
          f"over {len(times)}, {outcome[:160]}")

    if redone:
        print(f"{len(redone)} measurement(s) redone after a failed job:")
        for line in redone:
            print(f"  {line}")
    print(f"run took {time.perf_counter() - began:.0f} s; load average at the end "
          f"{os.getloadavg()[0]:.1f}")
    print(f"task records of this run's removed services still in the swarm: {task_records()}")
    ours, foreign = leftovers()
    if foreign:
        print(f"({foreign} labelled service(s) or container(s) of other processes on this "
              "daemon, not ours, left alone)")
    if ours:
        print(f"LEFTOVERS OF THIS RUN ({len(OURS)} managers): {ours}")
        return 2
    print(f"no service or container of this run's {len(OURS)} managers left behind")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs per measurement (20)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4],
                        help="concurrency levels (1 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is shown (3)")
    parser.add_argument("--image", default="containerjobs-test/busybox:latest")
    parser.add_argument("--cj-logs", action="store_true",
                        help="print containerjobs' info events (default: warnings only)")
    args = parser.parse_args()
    if args.cj_logs:
        logging.basicConfig(level=logging.INFO)
    header(args)
    sys.exit(anyio.run(main_async, args))


if __name__ == "__main__":
    main()
