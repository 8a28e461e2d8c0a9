#!/usr/bin/env python3
"""Idle cost: what running jobs cost while they run, against raw aiodocker (issue 11).

    python3 benchmarks/idle.py [--jobs 50] [--seconds 45] [--window 20] [--settle 0]
                               [--baseline 10] [--runners ...] [--image IMG] [--profile]

Runners, one after the other in one run, each with JOBS containers running ``sleep
SECONDS`` on the test bed's main daemon with the same hardened settings:

- ``cj-memory``: ``JobManager`` with the default in-memory store and
  ``hosts=[DockerHost("local", SOCKET, max_concurrent_jobs=JOBS)]``;
- ``cj-sqlite``: the same with ``SQLiteStorage`` on a temporary file;
- ``aiodocker``: raw aiodocker creates and starts the same containers, all at once as
  the manager does, labelled with BENCH_LABEL, and awaits ``container.wait()`` on each:
  the floor, a client that only waits;
- ``cj-nostats`` (an experiment, only with ``--runners``): ``cj-memory`` with its stats
  readings turned off, which tells their cost from the rest of the manager's.

Once all JOBS containers run (and SETTLE seconds more), a window of WINDOW seconds
measures:

- the benchmark process's CPU time (``getrusage(RUSAGE_SELF)``: every thread, the
  SQLite store's too); the process does nothing else meanwhile;
- the CPU time (utime + stime, ``/proc/<pid>/stat``) of the main dockerd (pid from its
  pidfile, checked to hold the listening socket of SOCKET_PATH, so not the test bed's
  second or swarm2 daemons), of its containerd (that dockerd's child) and, apart, of the
  ``containerd-shim`` processes whose ``-id`` is one of the runner's containers (shims
  are reparented to init: neither figure above holds them);
- the connections the process holds to the daemon, counted every second by a sampler
  process (started before the runner: neither its start nor its counting is in this
  process's CPU). The daemon's end of each connection shows in ``ss -x`` with
  SOCKET_PATH as its local address and the inode of the client's end as its peer; the
  peers that are sockets open in this process (``/proc/<pid>/fd`` -> ``socket:[inode]``)
  are counted. The most during the window is the figure. At the window's end, the
  client's aiohttp pool says how many of them are in use and how many idle (kept
  alive); for the cj runners, the requests (streams aside) made in the window, by kind;
- the process's peak RSS (VmHWM, reset through ``/proc/self/clear_refs`` before each
  runner, so that each peak is the runner's own; the interpreter's is in it).

CPU is in % of one core over the window. Before the first runner, and AFTERMATH seconds
after the last, a BASELINE window with none of this run's containers measures the
daemons idle; "added" is a runner's dockerd + containerd minus their mean. Then every
``cj`` job must end completed with ``max_memory_bytes`` and ``cpu_usage_percent``
set. The raw runner kills its containers after its window, to keep the run short.

Goals (issue 11), for the cj runners: the process under 1 % of a core, dockerd +
containerd under 2 % of a core added, at most 2 connections per running job, and peak
memory and CPU reported for every job. Exit status 1 if a goal is not met, 2 if a
container of this run is left behind.

The daemon is shared with other developers' tests. Before each runner (and the first
baseline) the script waits until no ``bash .ci/run`` and no ``pytest`` process runs
(polled every 10 s), then up to PATIENCE seconds until no other process's container
runs; after each window it reads the daemon's events of the window, and says when a
window was disturbed (containers of others running, events of theirs, tests started).
It removes only containers of this run, and fails loudly if one is left.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import http.client
import json
import logging
import os
import platform
import pstats
import resource
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import aiodocker
import attrs
import structlog
from lifecycle import check_same_config, raw_config  # beside this script

import containerjobs as cj

SOCKET_PATH = "/var/run/docker.sock"
SOCKET = f"unix://{SOCKET_PATH}"
PIDFILE = "/var/run/docker.pid"
BENCH_LABEL = "containerjobs.benchmark"  # on every container the raw runner creates
LABEL_MANAGER = "containerjobs.manager"
RUNNERS = ("cj-memory", "cj-sqlite", "aiodocker")
# Not in the default run: cj-memory with the stats readings turned off (a private patch
# of its engine client), to tell what they cost from what the rest of the manager does.
EXPERIMENTS = ("cj-nostats",)
CLK = os.sysconf("SC_CLK_TCK")
BUSY = ("bash .ci/run", "pytest")  # another developer's Docker tests on this daemon
QUIET_POLL = 10.0
START_TIMEOUT = 120.0  # for all JOBS containers to run
SAMPLE_INTERVAL = 1.0  # seconds between counts of the connections
AFTERMATH = 5.0  # seconds after the last removal before the idle daemons are measured
# The goals of issue 11.
GOAL_PROCESS = 1.0  # % of a core
GOAL_DAEMONS = 2.0  # % of a core added to dockerd + containerd
GOAL_CONNECTIONS_PER_JOB = 2
# Every manager id and raw run id of this run: the labels of its containers.
OURS: set[str] = set()

# The raw runner's container is lifecycle.py's: the hardened settings containerjobs
# applies with the default SecurityPolicy, proved the same by check_same_config().


# --- the daemon, outside the windows -------------------------------------------------
# A plain HTTP request on a socket of its own, closed before it returns: no client of
# the measured kind holds a connection the count would see.


class _UnixConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(SOCKET_PATH)


def engine(path: str, method: str = "GET") -> Any:
    connection = _UnixConnection("localhost")
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {response.status} {body[:200]!r}")
        return json.loads(body) if body else None
    finally:
        connection.close()


def engine_lines(path: str) -> list[bytes]:
    """A streamed answer that ends by itself (events up to a moment passed)."""
    connection = _UnixConnection("localhost")
    try:
        connection.request("GET", path)
        return [line for line in connection.getresponse().read().splitlines() if line.strip()]
    finally:
        connection.close()


def labelled(everyone: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Containers (all, or running only) split into (this run's, other processes')."""
    ours, foreign = [], []
    for container in engine(f"/containers/json?all={int(everyone)}"):
        labels = container.get("Labels") or {}
        mine = labels.get(LABEL_MANAGER) in OURS or labels.get(BENCH_LABEL) in OURS
        (ours if mine else foreign).append(container)
    return ours, foreign


def busy() -> list[str]:
    """Processes of another developer's Docker tests, as `pgrep -f` finds them."""
    found = []
    for pattern in BUSY:
        result = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        found += [f"{pattern!r} (pid {pid})" for pid in result.stdout.split()]
    return found


async def wait_until_quiet(patience: float) -> float:
    """Wait until no Docker tests run on the shared daemon, and for at most `patience`
    seconds more until no other process's container runs there (their work would be
    counted as dockerd's); the seconds waited."""
    began = time.monotonic()
    while True:
        found = busy()
        if not found:
            running = labelled(everyone=False)[1]
            if not running or time.monotonic() - began > patience:
                return time.monotonic() - began
            found = [f"{len(running)} container(s) of other processes"]
        print(f"  waiting: {', '.join(found)} running; looking again in {QUIET_POLL:.0f} s",
              flush=True)
        await asyncio.sleep(QUIET_POLL)


def foreign_events(since: float, until: float, container_ids: list[str]) -> int:
    """The daemon's events between two moments that are not about this runner's
    containers: another process at work on the daemon during a window."""
    ours = set(container_ids)
    count = 0
    for line in engine_lines(f"/events?since={since:.3f}&until={until:.3f}"):
        event = json.loads(line)
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        about = event.get("id") if event.get("Type") == "container" else attributes.get("container")
        if about not in ours:
            count += 1
    return count


# --- processes and sockets -------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # fields 14 and 15 of stat(5)


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def socket_inodes(pid: int | str = "self") -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def unix_sockets(listening: bool = False) -> list[tuple[str, str, str]]:
    """(local path, local inode, peer inode) of the machine's unix stream sockets."""
    args = ["ss", "-xH"] + (["-l"] if listening else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        # Netid State Recv-Q Send-Q Local-Address Local-Port(inode) Peer Peer-Port(inode)
        if len(parts) >= 8 and parts[0] == "u_str":
            rows.append((parts[4], parts[5], parts[7]))
    return rows


def connections(pid: int | str = "self") -> int:
    """A process's connections to the daemon: the daemon's ends on SOCKET_PATH whose
    peers are sockets open in that process."""
    theirs = socket_inodes(pid)
    return sum(1 for path, _, peer in unix_sockets() if path == SOCKET_PATH and peer in theirs)


def sample_connections(pid: int, interval: float) -> None:
    """The sampler process: "epoch count" lines until its stdin closes."""
    while True:
        try:
            count = connections(pid)
        except OSError:
            return  # the benchmark is gone
        print(f"{time.time():.3f} {count}", flush=True)
        if select.select([sys.stdin], [], [], interval)[0]:
            return  # stdin readable: closed by the benchmark


class Sampler:
    """Counts this process's connections to the daemon from another process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--sample-connections", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def stop(self) -> list[tuple[float, int]]:
        out, _ = self.process.communicate(timeout=30)  # closes its stdin first
        samples = []
        for line in out.splitlines():
            at, count = line.split()
            samples.append((float(at), int(count)))
        return samples


@attrs.frozen
class Daemon:
    dockerd: int
    containerd: int | None


def find_daemon() -> Daemon:
    """The main dockerd (its pidfile, checked against the listener of SOCKET_PATH)
    and its containerd child."""
    with open(PIDFILE) as f:
        dockerd = int(f.read().strip())
    if comm(dockerd) != "dockerd":
        raise SystemExit(f"{PIDFILE} names pid {dockerd}, which is {comm(dockerd)!r}")
    listeners = {inode for path, inode, _ in unix_sockets(listening=True) if path == SOCKET_PATH}
    if not listeners & socket_inodes(dockerd):
        raise SystemExit(f"dockerd {dockerd} (from {PIDFILE}) does not listen on {SOCKET_PATH}")
    containerd = None
    for pid in pids():
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == dockerd and comm(pid) == "containerd":
                containerd = pid
        except (OSError, ValueError):
            continue  # gone meanwhile
    return Daemon(dockerd, containerd)


def shims(container_ids: list[str]) -> dict[str, int]:
    """container id -> pid of the containerd-shim serving it (its ``-id`` argument)."""
    wanted = set(container_ids)
    found = {}
    for pid in pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not os.path.basename(argv[0]).startswith("containerd-shim") or "-id" not in argv:
            continue
        cid = argv[argv.index("-id") + 1] if argv.index("-id") + 1 < len(argv) else ""
        if cid in wanted:
            found[cid] = pid
    return found


def memory_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (proc(5))


# --- the windows -----------------------------------------------------------------------


@attrs.frozen
class Window:
    seconds: float
    process: float  # CPU seconds of this process
    dockerd: float
    containerd: float | None
    shims: float | None
    shims_found: int
    began: float  # epoch seconds
    ended: float
    foreign_running: int  # other processes' containers running on the daemon
    foreign_events: int  # the daemon's events about other containers, in the window
    busy: list[str]  # Docker tests that started during the window
    requests: dict[str, int] | None  # the cj runners' requests (not streams), by kind

    @property
    def disturbed(self) -> list[str]:
        notes = []
        if self.foreign_running:
            notes.append(f"{self.foreign_running} container(s) of other processes running")
        if self.foreign_events:
            notes.append(f"{self.foreign_events} daemon event(s) of other processes' containers")
        if self.busy:
            notes.append(f"tests started: {', '.join(self.busy)}")
        return notes

    def percent(self, cpu: float | None) -> float | None:
        return None if cpu is None else 100 * cpu / self.seconds

    @property
    def daemons(self) -> float:
        return self.dockerd + (self.containerd or 0.0)


async def measure_window(
    seconds: float,
    daemon: Daemon,
    container_ids: list[str],
    profile: cProfile.Profile | None = None,
    calls: collections.Counter[str] | None = None,
) -> Window:
    served = shims(container_ids)
    _, foreign = labelled(everyone=False)
    began = time.time()

    def snapshot() -> tuple[float, float, float, float | None, float | None]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return (
            time.monotonic(),
            usage.ru_utime + usage.ru_stime,
            cpu_seconds(daemon.dockerd),
            cpu_seconds(daemon.containerd) if daemon.containerd else None,
            sum(cpu_seconds(pid) for pid in served.values()) if served else None,
        )

    calls_before = collections.Counter(calls)
    before = snapshot()
    if profile is not None:
        profile.enable()
    await asyncio.sleep(seconds)
    if profile is not None:
        profile.disable()
    after = snapshot()
    ended = time.time()
    requests = None if calls is None else dict(collections.Counter(calls) - calls_before)

    def delta(i: int) -> float | None:
        a, b = before[i], after[i]
        return None if a is None or b is None else b - a

    return Window(
        seconds=after[0] - before[0],
        process=after[1] - before[1],
        dockerd=after[2] - before[2],
        containerd=delta(3),
        shims=delta(4),
        shims_found=len(served),
        began=began,
        ended=ended,
        foreign_running=len(foreign),
        foreign_events=foreign_events(began, ended, container_ids),
        busy=busy(),
        requests=requests,
    )


# --- the runners -----------------------------------------------------------------------
# A runner starts its containers and returns once all run (start), lets them end and
# checks them (finish), and releases what it holds, whatever happened (close).


class CJRunner:
    def __init__(self, args: argparse.Namespace, sqlite: bool, stats: bool = True) -> None:
        self.args, self.sqlite, self.stats = args, sqlite, stats
        self.calls: collections.Counter[str] = collections.Counter()
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        self.manager: cj.JobManager | None = None
        self.ids: list[str] = []
        self.done: list[cj.Job] = []

    async def start(self) -> list[str]:
        storage = None
        if self.sqlite:
            self.tmp = tempfile.TemporaryDirectory(prefix="cj-idle-")
            storage = cj.SQLiteStorage(os.path.join(self.tmp.name, "jobs.db"))
        self.manager = cj.JobManager(
            hosts=[cj.DockerHost("local", SOCKET, max_concurrent_jobs=self.args.jobs)],
            storage=storage,
            # Whatever goes wrong, leaving `close` kills the containers (a SQLite store
            # would detach them by default, for another manager to adopt).
            on_exit="cancel",
        )
        OURS.add(self.manager.id)
        await self.manager.start()
        self._instrument()
        spec = cj.JobSpec(image=self.args.image, command=f"sleep {self.args.seconds}")
        self.ids = [job.id for job in await self.manager.submit_many([spec] * self.args.jobs)]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            jobs = [await self.manager.get(job_id) for job_id in self.ids]
            ended = [job for job in jobs if job.status.is_terminal]
            if ended:
                raise AssertionError(f"a job ended before all ran: {ended[0]!r}")
            if all(job.status is cj.JobStatus.RUNNING for job in jobs):
                return [str(job.container_id) for job in jobs]
            if time.monotonic() > deadline:
                raise AssertionError(f"not all {len(jobs)} jobs ran within {START_TIMEOUT} s")
            await asyncio.sleep(0.25)

    async def finish(self) -> None:
        assert self.manager is not None
        for job_id in self.ids:
            job = await self.manager.wait(job_id, timeout=self.args.seconds + START_TIMEOUT)
            self.done.append(job)
            if job.status is not cj.JobStatus.COMPLETED or job.exit_code != 0:
                raise AssertionError(f"job went wrong: {job!r}")

    def _engine(self) -> Any:
        # A private look, as tests/test_docker_jobs.py takes.
        assert self.manager is not None and self.manager._worker is not None
        return self.manager._worker.monitor["local"].executor._engine  # type: ignore[attr-defined]

    def _instrument(self) -> None:
        """Count the requests of the engine client (streams aside) by kind; for the
        cj-nostats experiment, turn its stats readings off."""
        engine_api = self._engine()
        request = engine_api.json

        async def counted(path: str, *args: Any, **kwargs: Any) -> Any:
            if path == "containers/json":
                kind = "list"
            elif path.startswith("containers/"):
                kind = path.rsplit("/", 1)[-1]  # stats, json (an inspect), wait...
            else:
                kind = path
            self.calls[kind] += 1
            return await request(path, *args, **kwargs)

        engine_api.json = counted
        if not self.stats:

            async def no_stats(container_id: str) -> Any:
                await asyncio.sleep(3600)
                yield  # an async generator that never reads

            engine_api.container_stats = no_stats

    def pool(self) -> tuple[int, int]:
        """Connections of the executor's pool: (in use, idle)."""
        return pool_of(self._engine()._connector)

    def ended(self) -> float:
        """Epoch seconds when the first job ended."""
        return min(job.completed_at.timestamp() for job in self.done if job.completed_at)

    async def close(self) -> None:
        if self.manager is not None:
            await self.manager.close()
        if self.tmp is not None:
            self.tmp.cleanup()


class RawRunner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.docker: aiodocker.Docker | None = None
        self.run_id = uuid.uuid4().hex[:8]
        OURS.add(self.run_id)
        self.containers: list[aiodocker.containers.DockerContainer] = []
        self.waits: list[asyncio.Task[float]] = []

    async def start(self) -> list[str]:
        self.docker = aiodocker.Docker(url=SOCKET)
        await self.docker.version()
        command = f"sleep {self.args.seconds}"

        async def one() -> aiodocker.containers.DockerContainer:
            assert self.docker is not None
            jid = uuid.uuid4().hex
            config = raw_config(self.args.image, {BENCH_LABEL: self.run_id}, command)
            container = await self.docker.containers.create(config, name=f"cjb-idle-{jid}")
            self.containers.append(container)  # before start: close() removes it
            await container.start()
            return container

        # Launched all at once, as a manager with JOBS free slots does.
        started = await asyncio.gather(*(one() for _ in range(self.args.jobs)))
        self.waits = [asyncio.create_task(self._wait(c)) for c in started]
        return [c.id for c in started]

    @staticmethod
    async def _wait(container: aiodocker.containers.DockerContainer) -> float:
        await container.wait()
        return time.time()

    async def finish(self) -> None:
        # The window is over: stop the containers rather than wait for their sleep. A
        # container that stopped already refuses the kill; ended() then says so.
        await asyncio.gather(*(c.kill() for c in self.containers), return_exceptions=True)
        await asyncio.gather(*self.waits)

    def pool(self) -> tuple[int, int]:
        assert self.docker is not None
        return pool_of(self.docker.connector)

    def ended(self) -> float:
        # Killed after the window; the first exit shows whether one ended before.
        return min(task.result() for task in self.waits)

    async def close(self) -> None:
        for task in self.waits:
            task.cancel()
        if self.docker is None:
            return
        try:
            # By label: a create whose answer was lost still made a container.
            for container in await self.docker.containers.list(
                all=True, filters={"label": [f"{BENCH_LABEL}={self.run_id}"]}
            ):
                await container.delete(force=True, v=True)
        finally:
            await self.docker.close()


def pool_of(connector: Any) -> tuple[int, int]:
    """(in use, idle in the keep-alive pool) of an aiohttp connector."""
    idle = sum(len(conns) for conns in connector._conns.values())
    return len(connector._acquired), idle


@attrs.frozen
class Result:
    name: str
    window: Window
    connections: int  # the most during the window
    connections_starting: int  # the most before it, while the containers started
    pool: tuple[int, int]  # the client's connections in use and idle, at the window's end
    peak_rss: int
    rss: int
    start_seconds: float  # from the first create to all running
    jobs: list[cj.Job]  # the cj runners' finished jobs
    waited: float  # seconds waited for other tests before starting
    stats: cProfile.Profile | None


async def run_one(name: str, args: argparse.Namespace, daemon: Daemon) -> Result:
    waited = await wait_until_quiet(args.patience)
    runner: CJRunner | RawRunner = (
        RawRunner(args) if name == "aiodocker"
        else CJRunner(args, sqlite=name == "cj-sqlite", stats=name != "cj-nostats")
    )
    calls = runner.calls if isinstance(runner, CJRunner) else None
    # The event loop's thread's CPU time, not the wall clock: an idle loop waits in
    # epoll, which would top a wall-clock profile.
    profile = (
        cProfile.Profile(time.thread_time) if args.profile and name.startswith("cj") else None
    )
    sampler = Sampler()
    samples: list[tuple[float, int]] = []
    reset_peak_rss()
    try:
        began = time.monotonic()
        container_ids = await runner.start()
        start_seconds = time.monotonic() - began
        await asyncio.sleep(args.settle)
        window = await measure_window(args.window, daemon, container_ids, profile, calls)
        pool = runner.pool()
        rss = memory_status()
        samples = sampler.stop()
        await runner.finish()
        if runner.ended() < window.ended:
            raise AssertionError(
                f"{name}: a job ended {window.ended - runner.ended():.1f} s before the window "
                "did: give the jobs more --seconds or the window fewer"
            )
    finally:
        if sampler.process.poll() is None:
            sampler.stop()
        await runner.close()
    within = [n for at, n in samples if window.began <= at <= window.ended]
    starting = [n for at, n in samples if at < window.began]
    if not within:
        raise AssertionError(f"{name}: no count of connections during the window")
    return Result(
        name, window, max(within), max(starting, default=0), pool, rss["VmHWM"], rss["VmRSS"],
        start_seconds, runner.done if isinstance(runner, CJRunner) else [], waited, profile,
    )


# --- the report ------------------------------------------------------------------------


def header(args: argparse.Namespace, daemon: Daemon) -> None:
    version, info = engine("/version"), engine("/info")
    source = os.path.dirname(cj.__file__)
    git = subprocess.run(["git", "-C", source, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    print("containerjobs idle-cost benchmark")
    print(f"  when    : {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"  machine : {os.cpu_count()} cores ({platform.machine()}), {platform.platform()}, "
          f"Python {platform.python_version()}")
    print(f"  docker  : server {version.get('Version')} (API {version.get('ApiVersion')}), "
          f"storage {info.get('Driver')}, cgroup v{info.get('CgroupVersion', '?')}, "
          f"runtime {info.get('DefaultRuntime')}; dockerd pid {daemon.dockerd}, "
          f"containerd pid {daemon.containerd}")
    print(f"  code    : containerjobs from {source} ({git or 'not a git checkout'}), "
          f"aiodocker {aiodocker.__version__}")
    print(f"  run     : {args.jobs} jobs 'sleep {args.seconds}' per runner, window "
          f"{args.window:.0f} s from {args.settle:.0f} s after all run, baseline "
          f"{args.baseline:.0f} s before and after, image {args.image}")
    print(flush=True)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def reported(result: Result) -> int:
    """The jobs that ended completed with their peak memory and CPU."""
    return sum(
        1 for job in result.jobs
        if job.status is cj.JobStatus.COMPLETED
        and job.max_memory_bytes is not None and job.cpu_usage_percent is not None
    )


def requests(window: Window) -> str:
    if window.requests is None:
        return "-"
    stats = window.requests.get("stats", 0)
    return f"{stats} ({sum(window.requests.values()) - stats})"


def goals(result: Result, idle: float, jobs: int) -> dict[str, bool]:
    w = result.window
    process = w.percent(w.process) or 0.0
    added = (w.percent(w.daemons) or 0.0) - idle
    return {
        "process": process < GOAL_PROCESS,
        "daemons": added < GOAL_DAEMONS,
        "connections": result.connections <= GOAL_CONNECTIONS_PER_JOB * jobs,
        "stats": reported(result) == jobs,
    }


def report(results: list[Result], baselines: list[Window], args: argparse.Namespace) -> bool:
    idle = statistics.mean(b.percent(b.daemons) or 0.0 for b in baselines)
    names = [r.name for r in results]
    print(f"| {args.jobs} jobs running, {args.window:.0f} s window | "
          + " | ".join(names) + " | goal (cj) |")
    print("|---|" + "---|" * len(names) + "---|")

    def row(label: str, cells: list[str], goal: str = "") -> None:
        print(f"| {label} | " + " | ".join(cells) + f" | {goal} |")

    row("benchmark process CPU (% of a core)",
        [pct(r.window.percent(r.window.process)) for r in results], f"under {GOAL_PROCESS:g} %")
    row("dockerd", [pct(r.window.percent(r.window.dockerd)) for r in results])
    row("containerd", [pct(r.window.percent(r.window.containerd)) for r in results])
    row(f"dockerd + containerd added (idle: {idle:.2f} %)",
        [pct((r.window.percent(r.window.daemons) or 0.0) - idle) for r in results],
        f"under {GOAL_DAEMONS:g} %")
    row("containerd-shims of the jobs' containers",
        [f"{pct(r.window.percent(r.window.shims))} ({r.window.shims_found} shims)"
         for r in results])
    row("connections to the daemon, most in the window (before it)",
        [f"{r.connections} ({r.connections_starting})" for r in results],
        f"at most {GOAL_CONNECTIONS_PER_JOB * args.jobs}")
    row("requests in the window: stats reads (other)", [requests(r.window) for r in results])
    row("peak RSS of the process (RSS at window end)",
        [f"{mib(r.peak_rss)} ({mib(r.rss)})" for r in results])
    row("jobs completed with peak memory and CPU",
        [f"{reported(r)} of {args.jobs}" if r.name.startswith("cj") else "-" for r in results],
        f"{args.jobs} of {args.jobs}")
    met_all = True
    cells = []
    for r in results:
        if r.name == "aiodocker" or r.name in EXPERIMENTS:
            cells.append("-" if r.name == "aiodocker" else "(an experiment)")
            continue
        met = goals(r, idle, args.jobs)
        met_all &= all(met.values())
        missed = [k for k, ok in met.items() if not ok]
        cells.append("met" if not missed else f"**not met**: {', '.join(missed)}")
    row("goals", cells)
    print()
    print("idle dockerd + containerd (no container of this run): " + ", ".join(
        f"{pct(b.percent(b.daemons))} over {b.seconds:.0f} s"
        + (f" (DISTURBED: {', '.join(b.disturbed)})" if b.disturbed else "")
        for b in baselines
    ))
    for r in results:
        w = r.window
        notes = [
            f"all {args.jobs} running {r.start_seconds:.1f} s after the first create",
            f"at the window's end its pool had {r.pool[0]} connections in use and "
            f"{r.pool[1]} idle (kept alive)",
        ]
        if r.waited >= 1:
            notes.append(f"waited {r.waited:.0f} s for other tests first")
        if w.disturbed:
            notes.append(f"DISTURBED: {', '.join(w.disturbed)}")
        if r.window.requests:
            notes.append("requests " + ", ".join(
                f"{kind} {n}" for kind, n in sorted(r.window.requests.items())))
        if reported(r):
            memory = statistics.median(j.max_memory_bytes or 0 for j in r.jobs)
            cpu = statistics.median(j.cpu_usage_percent or 0.0 for j in r.jobs)
            notes.append(f"median job peak memory {memory / 2**10:.0f} KiB, CPU {cpu:.3f} %")
        print(f"  {r.name}: " + "; ".join(notes))
    return met_all


def print_profile(result: Result) -> None:
    if result.stats is None:
        return
    print(f"\ncProfile of {result.name}'s window, CPU time of the event loop's thread (the "
          "profiler inflates the CPU figures of this run): containerjobs' functions by "
          "time within, then all by own time")
    stats = pstats.Stats(result.stats, stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats("containerjobs", 15)
    stats.sort_stats("tottime").print_stats(12)


async def main_async(args: argparse.Namespace) -> int:
    began = time.monotonic()
    waited = 0.0
    check_same_config(args.image, f"sleep {args.seconds}")
    daemon = find_daemon()
    header(args, daemon)
    results: list[Result] = []
    baselines: list[Window] = []
    try:
        waited += await wait_until_quiet(args.patience)
        baselines.append(await measure_window(args.baseline, daemon, [], None))
        for name in args.runners:
            result = await run_one(name, args, daemon)
            results.append(result)
            waited += result.waited
            w = result.window
            print(f"  {name:<9} process {pct(w.percent(w.process))}, dockerd "
                  f"{pct(w.percent(w.dockerd))}, containerd {pct(w.percent(w.containerd))}, "
                  f"connections {result.connections}", flush=True)
        # The last removals' aftermath (network, layers) is not idle work.
        await asyncio.sleep(AFTERMATH)
        baselines.append(await measure_window(args.baseline, daemon, [], None))
        print()
        ok = report(results, baselines, args)
        for result in results:
            print_profile(result)
    finally:
        # Also after a failure: what this run left must show.
        ours, foreign = labelled()
        print(f"\nrun took {time.monotonic() - began:.0f} s, of which {waited:.0f} s waiting "
              f"for other processes' tests and containers; load average at the end "
              f"{os.getloadavg()[0]:.1f}")
        if foreign:
            print(f"({len(foreign)} container(s) of other processes on this daemon, left alone)")
        if ours:
            print("LEFTOVER CONTAINERS OF THIS RUN: "
                  + ", ".join(f"{c['Id'][:12]} ({c['Names'][0]})" for c in ours))
        else:
            print("no container of this run left behind")
    if ours:
        return 2
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50, help="jobs running at once (50)")
    parser.add_argument("--seconds", type=int, default=45, help="each job's sleep (45)")
    parser.add_argument("--window", type=float, default=20.0,
                        help="seconds measured once all jobs run (20)")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds between all jobs running and the window (0)")
    parser.add_argument("--baseline", type=float, default=10.0,
                        help="seconds of idle daemon measured before and after (10)")
    parser.add_argument("--runners", nargs="+", default=list(RUNNERS),
                        choices=RUNNERS + EXPERIMENTS,
                        help=f"in this order ({' '.join(RUNNERS)}); also {', '.join(EXPERIMENTS)}")
    parser.add_argument("--patience", type=float, default=120.0,
                        help="seconds to wait, before each runner, for other processes' "
                        "containers to stop (120); tests running are always waited for")
    parser.add_argument("--image", default="containerjobs-test/busybox:latest")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the cj runners' windows (inflates their CPU figures)")
    parser.add_argument("--cj-logs", action="store_true",
                        help="keep containerjobs' structlog output (default: warnings only)")
    parser.add_argument("--sample-connections", type=int, metavar="PID", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sample_connections:
        sample_connections(args.sample_connections, SAMPLE_INTERVAL)
        return
    if not args.cj_logs:
        # As an application would in production: the library's info events filtered out.
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
