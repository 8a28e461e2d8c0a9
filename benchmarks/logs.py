#!/usr/bin/env python3
"""The log path: a job's whole output through ``logs()``, against the docker CLI and
raw aiodocker (issue 11).

    flock /tmp/cj-docker.lock python3 benchmarks/logs.py [--lines N] [--rounds R] [--image IMG]

Every variant runs ``seq 1 N`` (N = 6,000,000 by default: 47 MB of output) in a
container with the hardened settings containerjobs applies by default (lifecycle.py's
raw config, proved the same by its ``check_same_config``), on the test bed's main
daemon, and reads its whole output:

- ``cli``: ``docker run -d``, ``docker wait``, then ``docker logs`` read to the end
  through a pipe by a reader that counts the lines and hashes the bytes (the bytes must
  be exactly those of ``seq 1 N``); then ``docker rm``. Its wall time, from the run to
  the last byte read, is the reference of every ratio. The CLI writes a line at a time,
  so the reader makes a read a line: its own CPU is shown apart, and on a machine of
  few cores it competes with dockerd and the CLI;
- ``cli-attached``: ``docker run --rm`` attached, its output read the same way: a
  second reference, where the output comes over the attach rather than from the log;
- ``aiodocker``: create and start the container, follow its log with
  ``container.log(stdout=True, stderr=True, follow=True)`` to the end, wait, delete;
- ``cj-sqlite``: a ``JobManager`` with one ``DockerHost`` (the local daemon) and a
  ``SQLiteStorage`` in a temporary directory (the default ``max_log_bytes``); the job
  is submitted and ``logs(job_id, follow=True)`` iterated from the moment of the submit
  until it ends. Then, the job ended, a second reader ``logs(job_id, follow=False)``
  reads what was kept;
- ``cj-memory``: the same with the default in-memory store.

The wall time runs from the run (create, submit) to the last line received; the
removal of the container comes after it and is shown apart. The aiodocker and cj
readers check each line as it comes: ``1`` to ``N`` in order, any other line counted
as missed (a jump), as a marker (``[containerjobs: ...``) or as stray (a repeat, or
not a number); that check is in their client CPU. The after-the-end reader must give
exactly the job's ``stdout`` as recorded; its kept bytes are the sum of
``len(text) + 1`` over its lines.

Each variant runs in a process of its own (the script again, with a hidden
``--variant``), so that its figures are its own: the client's CPU
(``time.process_time()``; for the CLI variants the docker CLI processes',
``RUSAGE_CHILDREN``), the RSS just before the run (VmRSS, the idle figure) and the peak
(VmHWM once the job is over, and ``ru_maxrss`` at the process's end; for the CLI, the
largest docker CLI process's), and the CPU (utime + stime) of the main dockerd and its
containerd over the same span. The variants alternate: each runs once a round, the order
rotating from round to round; the table shows the medians over the rounds. Each
variant's process also notes the commit and a digest of the library's source it ran,
and the run says when that differs from what it began with (others may work in the
same checkout meanwhile).

Bounds (issue 11), reported met or not: the cj live follower reaches the last line in
at most 1.25 x the time of ``cli``; the manager's peak RSS stays under its idle RSS +
64 MB; the SQLite store grows by at most 3 x the bytes it keeps; the live follower gets
every line, past the cap too; the reader after the end gets what was kept. The exit
status is 1 if a variant lost lines (a live reader missing any of 1..N, or an
after-the-end reader not giving what was kept) or failed, 2 if a container of this run
is left behind (all are removed at the end, whatever happened), 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiodocker
from idle import SOCKET, cpu_seconds, find_daemon, memory_status  # beside this script
from lifecycle import (
    BENCH_LABEL,
    MEMORY,
    NANO_CPUS,
    PIDS_LIMIT,
    TMPFS,
    USER,
    check_same_config,
    raw_config,
)

import containerjobs as cj

VARIANTS = ("cli", "cli-attached", "aiodocker", "cj-sqlite", "cj-memory")
REFERENCE = "cli"
LABEL_MANAGER = "containerjobs.manager"
MARKER = "[containerjobs:"
READ_SIZE = 1 << 20  # bytes per read of a docker CLI's output
MB = 10**6
# The bounds of issue 11.
BOUND_RATIO = 1.25
BOUND_RSS = 64 * MB
BOUND_STORE = 3.0


# --- what a reader got -------------------------------------------------------------------


class Lines:
    """Checks lines as they come: 1, 2, ... in order, and says what else came."""

    def __init__(self) -> None:
        self.next = 1
        self.count = 0
        self.bytes = 0
        self.missed = 0  # numbers jumped over
        self.markers = 0
        self.stray = 0  # repeats, numbers out of order, other text

    def add(self, text: str) -> None:
        self.count += 1
        self.bytes += len(text) + 1  # digits: one byte a character
        if text == str(self.next):
            self.next += 1
            return
        if text.startswith(MARKER):
            self.markers += 1
            return
        try:
            number = int(text)
        except ValueError:
            self.stray += 1
            return
        if number > self.next:
            self.missed += number - self.next
            self.next = number + 1
        else:
            self.stray += 1

    def result(self, n: int) -> dict[str, Any]:
        missed = self.missed + max(0, n + 1 - self.next)  # those missing at the end too
        return {
            "lines": self.count,
            "missed": missed,
            "markers": self.markers,
            "stray": self.stray,
            "every_line": self.count == n and missed == 0 and self.markers == 0
            and self.stray == 0,
        }


class Splitter:
    """Lines out of pieces of text that need not end at a line's end."""

    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        self.carry = ""

    def add(self, piece: str) -> None:
        parts = (self.carry + piece).split("\n")
        self.carry = parts.pop()
        for part in parts:
            self.lines.add(part)

    def close(self) -> None:
        if self.carry:
            self.lines.add(self.carry)
            self.carry = ""


def expected_digest(n: int) -> str:
    """SHA-256 of the output of ``seq 1 n``, built in slices (not 47 MB at once)."""
    digest = hashlib.sha256()
    step = 100_000
    for first in range(1, n + 1, step):
        last = min(first + step, n + 1)
        digest.update("".join(f"{i}\n" for i in range(first, last)).encode())
    return digest.hexdigest()


# --- this process, the daemons ---------------------------------------------------------


def vm_rss() -> int:
    return memory_status()["VmRSS"]


def vm_hwm() -> int:
    return memory_status()["VmHWM"]


def max_rss(who: int) -> int:
    return resource.getrusage(who).ru_maxrss * 1024  # KiB on Linux


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class DaemonClock:
    """CPU seconds of the main dockerd and its containerd since it was made."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.started = [cpu_seconds(pid) for pid in pids]

    def read(self) -> list[float]:
        return [cpu_seconds(pid) - began
                for pid, began in zip(self.pids, self.started, strict=True)]


def file_size(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def store_size(path: str) -> int:
    """The SQLite file and its write-ahead log, in bytes."""
    return file_size(path) + file_size(path + "-wal")


def engine_seconds(started: str, finished: str) -> float:
    """Seconds between two of the engine's RFC 3339 stamps (nanoseconds, ``Z``)."""

    def parse(text: str) -> datetime:
        text = text.rstrip("Z")
        whole, _, fraction = text.partition(".")
        return datetime.fromisoformat(f"{whole}.{(fraction + '000000')[:6]}").replace(tzinfo=UTC)

    return (parse(finished) - parse(started)).total_seconds()


# --- the CLI variants --------------------------------------------------------------------


def cli_settings(run_id: str, name: str) -> list[str]:
    """`docker run` options for lifecycle.py's raw config."""
    tmpfs = [f"--tmpfs={path}:{options}" for path, options in TMPFS.items()]
    return [
        f"--name={name}", f"--label={BENCH_LABEL}={run_id}",
        f"--memory={MEMORY}", f"--memory-swap={MEMORY}", f"--cpus={NANO_CPUS / 1e9:g}",
        f"--pids-limit={PIDS_LIMIT}", f"--user={USER}", "--read-only", *tmpfs,
        "--cap-drop=ALL", "--security-opt=no-new-privileges", "--log-driver=json-file",
    ]


def read_pipe(argv: list[str]) -> tuple[float, int, str, bytes]:
    """Run a docker CLI command and read its stdout to the end: (perf_counter of the
    last byte read, lines, SHA-256 of the bytes, its stderr)."""
    digest = hashlib.sha256()
    lines = 0
    last = time.perf_counter()
    # The CLI writes a line at a time, so most reads are short: read into one buffer
    # rather than allocate READ_SIZE bytes a read (that cost the reader more CPU than
    # the docker CLI spent, on a machine of two cores).
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, bufsize=0)
        assert process.stdout is not None
        while size := process.stdout.readinto(buffer):
            last = time.perf_counter()
            lines += buffer.count(b"\n", 0, size)
            digest.update(view[:size])
        if process.wait() != 0:
            errors.seek(0)
            raise RuntimeError(f"{argv[:3]} exited {process.returncode}: {errors.read()[:500]!r}")
        errors.seek(0)
        return last, lines, digest.hexdigest(), errors.read()


def docker(*argv: str) -> str:
    return subprocess.run(["docker", *argv], capture_output=True, text=True,
                          check=True).stdout.strip()


def run_cli(args: argparse.Namespace, attached: bool) -> dict[str, Any]:
    n = args.lines
    wanted = expected_digest(n)
    name = f"cjb-logs-{args.run_id}-{args.variant}-{args.round}"
    command = ["/bin/sh", "-c", f"seq 1 {n}"]
    clock = DaemonClock(args.daemon)
    cpu_before = children_cpu()
    reader_before = time.process_time()
    began = time.perf_counter()
    container_seconds = None
    removed = None
    try:
        if attached:
            last, lines, digest, errors = read_pipe(
                ["docker", "run", "--rm", *cli_settings(args.run_id, name), args.image, *command]
            )
            removed = time.perf_counter()  # `run --rm` returns once it is removed
        else:
            cid = docker("run", "-d", *cli_settings(args.run_id, name), args.image, *command)
            docker("wait", cid)
            last, lines, digest, errors = read_pipe(["docker", "logs", cid])
        cpu = children_cpu() - cpu_before
        reader_cpu = time.process_time() - reader_before
        daemons = clock.read()
        if not attached:
            state = json.loads(docker("inspect", "--format={{json .State}}", cid))
            container_seconds = engine_seconds(state["StartedAt"], state["FinishedAt"])
            docker("rm", "-v", cid)
            removed = time.perf_counter()
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)
    same = digest == wanted and not errors
    return {
        "wall": last - began,
        "total": (removed or time.perf_counter()) - began,
        "lines": lines,
        "missed": max(0, n - lines),
        "markers": 0,
        "stray": 0 if same else max(0, lines - n),
        "every_line": same and lines == n,
        "content": "exact" if same else f"DIFFERS ({len(errors)} bytes on stderr)",
        "cpu": cpu,
        "reader_cpu": reader_cpu,
        "daemons": daemons,
        "idle_rss": None,  # the docker CLI's figure is its peak alone
        "peak_rss": max_rss(resource.RUSAGE_CHILDREN),
        "container_seconds": container_seconds,
    }


# --- raw aiodocker -----------------------------------------------------------------------


async def run_aiodocker(args: argparse.Namespace) -> dict[str, Any]:
    n = args.lines
    name = f"cjb-logs-{args.run_id}-{args.variant}-{args.round}"
    client = aiodocker.Docker(url=SOCKET)
    try:
        await client.version()  # connect and settle the API version before the clock
        clock = DaemonClock(args.daemon)
        idle_rss = vm_rss()
        cpu_before = time.process_time()
        lines = Lines()
        splitter = Splitter(lines)
        began = time.perf_counter()
        config = raw_config(args.image, {BENCH_LABEL: args.run_id}, f"seq 1 {n}")
        container = await client.containers.create(config, name=name)
        try:
            await container.start()
            last = began
            async for piece in container.log(stdout=True, stderr=True, follow=True):
                splitter.add(piece)
                last = time.perf_counter()
            splitter.close()
            await container.wait()
            state = (await container.show())["State"]
            cpu = time.process_time() - cpu_before
            daemons = clock.read()
            peak = vm_hwm()
        finally:
            await container.delete(force=True, v=True)
        removed = time.perf_counter()
    finally:
        await client.close()
    if state["ExitCode"] != 0:
        raise RuntimeError(f"seq exited {state['ExitCode']}: {state}")
    return {
        "wall": last - began,
        "total": removed - began,
        **lines.result(n),
        "cpu": cpu,
        "daemons": daemons,
        "idle_rss": idle_rss,
        "peak_rss": peak,
        "end_rss": max_rss(resource.RUSAGE_SELF),
        "container_seconds": engine_seconds(state["StartedAt"], state["FinishedAt"]),
    }


# --- containerjobs -----------------------------------------------------------------------


class Record:
    """Whether texts, each with a newline, make up a recorded output exactly; compared
    in place as they come, so that the check holds no copy of them."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.at = 0
        self.same = True

    def add(self, text: str) -> None:
        end = self.at + len(text)
        if not self.output.startswith(text, self.at) or self.output[end : end + 1] != "\n":
            self.same = False
        self.at = end + 1

    def whole(self) -> bool:
        return self.same and self.at == len(self.output)


async def run_cj(args: argparse.Namespace, sqlite: bool) -> dict[str, Any]:
    n = args.lines
    last_text = str(n)
    with tempfile.TemporaryDirectory(prefix="cj-logs-") as tmp:
        path = os.path.join(tmp, "jobs.db")
        manager = cj.JobManager(
            hosts=[cj.DockerHost("local", SOCKET)],
            storage=cj.SQLiteStorage(path) if sqlite else None,
            # Whatever goes wrong, leaving kills the container (a SQLite store would
            # detach it by default, for another manager to adopt).
            on_exit="cancel",
            manager_id=f"cjm-{args.run_id}-{args.variant}-{args.round}",
        )
        async with manager:
            store_before = store_size(path)
            clock = DaemonClock(args.daemon)
            idle_rss = vm_rss()
            cpu_before = time.process_time()
            lines = Lines()
            began = time.perf_counter()
            job = await manager.submit(cj.JobSpec(image=args.image, command=f"seq 1 {n}"))
            last = None
            async for line in manager.logs(job.id, follow=True):
                lines.add(line.text if line.stream == "stdout" else f"stderr: {line.text}")
                if line.text == last_text:
                    last = time.perf_counter()  # not on every line: that would cost
            ended = time.perf_counter()
            done = await manager.wait(job.id)
            waited = time.perf_counter()
            cpu = time.process_time() - cpu_before
            daemons = clock.read()
            peak = vm_hwm()
            store_after = store_size(path)

            # What was kept, read by a reader that comes after the end.
            kept = Lines()
            # The kept lines must be the job's recorded output (stdout only: seq
            # writes nothing else).
            record = Record(done.stdout)
            after_cpu = time.process_time()
            after_began = time.perf_counter()
            async for line in manager.logs(job.id, follow=False):
                kept.add(line.text)
                record.add(line.text)
            after_seconds = time.perf_counter() - after_began
            after_cpu = time.process_time() - after_cpu
            same = record.whole() and done.stderr == ""
        store_closed = store_size(path)
    if done.status is not cj.JobStatus.COMPLETED:
        raise RuntimeError(f"job ended {done.status}: {done.error}")
    return {
        "wall": (last or ended) - began,
        "saw_last": last is not None,
        "total": waited - began,
        **lines.result(n),
        "cpu": cpu,
        "daemons": daemons,
        "idle_rss": idle_rss,
        "peak_rss": peak,
        "end_rss": max_rss(resource.RUSAGE_SELF),
        "job_seconds": done.duration,
        "truncated": done.logs_truncated,
        "after": {
            "seconds": after_seconds,
            "cpu": after_cpu,
            "kept_bytes": kept.bytes,
            "same_as_record": same,
            **kept.result(n),
        },
        "store": {"before": store_before, "after": store_after, "closed": store_closed}
        if sqlite else None,
    }


def run_variant(args: argparse.Namespace) -> None:
    """In the variant's own process: run it, print its figures as one JSON line."""
    code = code_state()  # as imported a moment ago: others may change it under a run
    if args.variant in ("cli", "cli-attached"):
        result = run_cli(args, attached=args.variant == "cli-attached")
    elif args.variant == "aiodocker":
        result = asyncio.run(run_aiodocker(args))
    else:
        result = asyncio.run(run_cj(args, sqlite=args.variant == "cj-sqlite"))
    print(json.dumps({"variant": args.variant, "round": args.round, "code": code, **result}),
          flush=True)


# --- the run -----------------------------------------------------------------------------


def measure(args: argparse.Namespace, variant: str, round_: int,
            daemon: list[int]) -> dict[str, Any]:
    argv = [
        sys.executable, os.path.abspath(__file__), "--variant", variant,
        "--lines", str(args.lines), "--image", args.image, "--run-id", args.run_id,
        "--round", str(round_), "--daemon", ",".join(map(str, daemon)),
    ]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True)  # its stderr shows
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed (exit {done.returncode}): {done.stdout[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def leftovers(run_id: str) -> list[str]:
    """Containers of this run (by its label, manager ids or names) still on the daemon."""
    out = docker("ps", "-a", "--no-trunc", "--format",
                 f'{{{{.ID}}}}\t{{{{.Names}}}}\t{{{{.Label "{BENCH_LABEL}"}}}}'
                 f'\t{{{{.Label "{LABEL_MANAGER}"}}}}')
    found = []
    for row in out.splitlines():
        cid, name, bench, manager = [*row.split("\t"), "", "", ""][:4]
        if bench == run_id or manager.startswith(f"cjm-{run_id}-") \
                or name.startswith(f"cjb-logs-{run_id}-"):
            found.append(cid)
    return found


def git(*argv: str) -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(["git", "-C", root, *argv], capture_output=True,
                          text=True).stdout.rstrip("\n")


def code_state() -> str:
    """The commit, and a digest of the library's source as it is now: a long run can
    outlast the code it began with, when others work in the same checkout."""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(os.path.dirname(cj.__file__)):
        dirs.sort()  # in place: os.walk then visits them in this order
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    return f"{git('rev-parse', '--short', 'HEAD')}, src digest {digest.hexdigest()[:10]}"


def output_bytes(n: int) -> int:
    """Bytes of the output of ``seq 1 n``."""
    total, digits, low = 0, 1, 1
    while low <= n:
        high = min(n, low * 10 - 1)
        total += (high - low + 1) * (digits + 1)
        digits, low = digits + 1, low * 10
    return total


def header(args: argparse.Namespace, daemon: list[int]) -> None:
    version = json.loads(docker("version", "--format={{json .Server}}"))
    info = json.loads(docker("info", "--format={{json .}}"))
    dirty = git("status", "--short", "src").splitlines()
    code = f"containerjobs {args.code}; src " + (
        f"DIRTY ({', '.join(row.split(maxsplit=1)[1] for row in dirty)})" if dirty else "clean")
    containerd = daemon[1] if len(daemon) > 1 else "-"
    print("containerjobs log-path benchmark")
    print(f"  when    : {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"  machine : {os.cpu_count()} cores ({platform.machine()}), {platform.platform()}, "
          f"Python {platform.python_version()}")
    print(f"  docker  : server {version.get('Version')} (API {version.get('ApiVersion')}), "
          f"storage {info.get('Driver')}, cgroup v{info.get('CgroupVersion', '?')}, "
          f"runtime {info.get('DefaultRuntime')}, log driver {info.get('LoggingDriver')}; "
          f"dockerd pid {daemon[0]}, containerd pid {containerd}")
    print(f"  code    : {code}; aiodocker {aiodocker.__version__}")
    print(f"  run     : 'seq 1 {args.lines}' ({output_bytes(args.lines) / MB:.1f} MB of output), "
          f"{args.rounds} round(s), image {args.image}, run id {args.run_id}")
    print(flush=True)


# --- the report --------------------------------------------------------------------------


def mb(value: float) -> str:
    return f"{value / MB:.1f}"


def received(result: dict[str, Any]) -> str:
    """What a reader got, in words."""
    if result["every_line"]:
        return f"{result['lines']} lines, every line: yes"
    parts = [f"{result[key]} {key}" for key in ("missed", "markers", "stray") if result[key]]
    content = f", bytes {result['content']}" if "content" in result else ""
    return f"{result['lines']} lines, every line: NO ({', '.join(parts) or 'none missing'}" \
        f"{content})"


def store_ratio(result: dict[str, Any]) -> float | None:
    store = result.get("store")
    if not store:
        return None
    return (store["after"] - store["before"]) / max(1, result["after"]["kept_bytes"])


def describe(result: dict[str, Any], code: str) -> str:
    notes = []
    if result["code"] != code:
        notes.append(f"CODE CHANGED since the run began: {result['code']}")
    notes += [
        f"{result['wall']:.2f} s to the last line ({result['total']:.2f} s "
        + ("to the end of the job)" if "after" in result else "with the removal)"),
        received(result),
        f"client CPU {result['cpu']:.2f} s",
        "dockerd + containerd CPU " + " + ".join(f"{s:.2f}" for s in result["daemons"]) + " s",
        f"peak RSS {mb(result['peak_rss'])} MB (idle {mb(result['idle_rss'])} MB; "
        f"{mb(result['end_rss'])} MB at the process's end)"
        if result["idle_rss"] is not None
        else f"peak RSS of the largest docker CLI process {mb(result['peak_rss'])} MB",
    ]
    if "reader_cpu" in result:
        notes.append(f"the reader's own CPU {result['reader_cpu']:.2f} s")
    if result.get("container_seconds") is not None:
        notes.append(f"the container ran {result['container_seconds']:.2f} s")
    if result.get("job_seconds") is not None:
        notes.append(f"the job ran {result['job_seconds']:.2f} s (started_at to completed_at)")
    if "saw_last" in result and not result["saw_last"]:
        notes.append("the line N never came: the time is to the stream's end")
    after = result.get("after")
    if after:
        notes.append(
            f"after the end: {after['lines']} lines, {mb(after['kept_bytes'])} MB kept "
            f"({after['markers']} marker, {after['missed']} left out), read in "
            f"{after['seconds']:.2f} s (CPU {after['cpu']:.2f} s), the job's record: "
            + ("same" if after["same_as_record"] else "DIFFERENT")
            + f", logs_truncated {result['truncated']}"
        )
    store = result.get("store")
    if store:
        notes.append(
            f"SQLite + WAL {mb(store['before'])} -> {mb(store['after'])} MB "
            f"({mb(store['closed'])} MB once closed), {store_ratio(result):.2f} x the kept bytes"
        )
    return "; ".join(notes)


def ratios_to_reference(runs: list[dict[str, Any]], reference: list[dict[str, Any]]
                        ) -> list[float]:
    """Wall time over the reference's of the same round (less drift than medians')."""
    theirs = {c["round"]: c["wall"] for c in reference}
    return [r["wall"] / theirs[r["round"]] for r in runs if r["round"] in theirs]


def report(results: dict[str, list[dict[str, Any]]]) -> bool:
    """The table of medians and the bounds; whether any reader lost lines."""
    reference = results.get(REFERENCE, [])
    print("medians over the rounds; the ratio is to 'cli' (docker run + docker logs) "
          "of the same round; client CPU is the docker CLI's for the cli variants")
    columns = ("variant", "wall s", "/ cli", "client CPU s", "dockerd+containerd CPU s",
               "peak RSS MB", "over idle MB", "lines received", "store / kept bytes")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for variant, runs in results.items():
        if not runs:
            print(f"| {variant} | failed |" + " |" * (len(columns) - 2))
            continue
        ratios = ratios_to_reference(runs, reference)
        store = [x for x in map(store_ratio, runs) if x is not None]
        cells = [
            variant,
            f"{statistics.median(r['wall'] for r in runs):.2f}",
            f"{statistics.median(ratios):.2f}" if ratios else "-",
            f"{statistics.median(r['cpu'] for r in runs):.2f}",
            f"{statistics.median(sum(r['daemons']) for r in runs):.2f}",
            mb(statistics.median(r["peak_rss"] for r in runs)),
            mb(statistics.median(r["peak_rss"] - r["idle_rss"] for r in runs))
            if not variant.startswith("cli") else "-",
            f"{min(r['lines'] for r in runs)}"
            + ("" if all(r["every_line"] for r in runs) else " (NOT every line)"),
            f"{statistics.median(store):.2f}" if store else "-",
        ]
        print("| " + " | ".join(cells) + " |")
    print()

    print("bounds (issue 11):")
    for variant in ("cj-sqlite", "cj-memory"):
        runs = results.get(variant, [])
        if not runs or not ratios_to_reference(runs, reference):
            print(f"  {variant}: not measured")
            continue
        ratio = statistics.median(ratios_to_reference(runs, reference))
        over = statistics.median(r["peak_rss"] - r["idle_rss"] for r in runs)
        checks = [
            (f"last line in at most {BOUND_RATIO} x cli's time", f"{ratio:.2f} x",
             ratio <= BOUND_RATIO),
            ("peak RSS under idle + 64 MB", f"+{mb(over)} MB", over < BOUND_RSS),
            ("the live follower gets every line", received(runs[0]),
             all(r["every_line"] for r in runs)),
            ("a reader after the end gets what was kept",
             f"{runs[0]['after']['lines']} lines, {mb(runs[0]['after']['kept_bytes'])} MB",
             all(r["after"]["same_as_record"] for r in runs)),
        ]
        store = [x for x in map(store_ratio, runs) if x is not None]
        if store:
            growth = statistics.median(store)
            checks.append((f"store grows at most {BOUND_STORE:g} x the bytes kept",
                           f"{growth:.2f} x", growth <= BOUND_STORE))
        for what, value, met in checks:
            print(f"  {variant:<9} {what:<45} {value:<40} {'MET' if met else 'NOT MET'}")
    print()
    return any(
        not r["every_line"] or ("after" in r and not r["after"]["same_as_record"])
        for runs in results.values() for r in runs
    )


def main_run(args: argparse.Namespace) -> int:
    found = find_daemon()
    daemon = [found.dockerd] + ([found.containerd] if found.containerd else [])
    check_same_config(args.image, f"seq 1 {args.lines}")
    args.code = code_state()
    header(args, daemon)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    failed: list[str] = []
    began = time.monotonic()
    try:
        for r in range(args.rounds):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]
            for variant in order:
                try:
                    result = measure(args, variant, r + 1, daemon)
                except Exception as exc:  # one variant's failure: say so, go on
                    failed.append(f"round {r + 1} {variant}: {exc}")
                    print(f"  round {r + 1}/{args.rounds}  {variant:<13} FAILED: {exc}",
                          flush=True)
                    continue
                results[variant].append(result)
                print(f"  round {r + 1}/{args.rounds}  {variant:<13} "
                      f"{describe(result, args.code)}", flush=True)
    finally:
        # Also after a failure: what this run left must show, and go.
        left = leftovers(args.run_id)
        for cid in left:
            subprocess.run(["docker", "rm", "-f", "-v", cid], capture_output=True)
    print()
    lost = report(results)
    print(f"run took {time.monotonic() - began:.0f} s; load average at the end "
          f"{os.getloadavg()[0]:.1f}")
    if failed:
        print(f"{len(failed)} variant run(s) FAILED: " + "; ".join(failed))
    if lost:
        print("a reader LOST LINES (see above)")
    changed = sorted({f"{r['variant']} ({r['code']})" for runs in results.values()
                      for r in runs if r["code"] != args.code})
    if changed:
        print(f"the library CHANGED during the run (began at {args.code}); these variants "
              f"ran other code: {', '.join(changed)}")
    if left:
        print(f"LEFTOVER CONTAINERS OF THIS RUN (now removed): {', '.join(c[:12] for c in left)}")
        return 2
    print("no container of this run left behind")
    return 1 if lost or failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=6_000_000,
                        help="the job is 'seq 1 LINES' (6000000)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds, each variant once a round; the median is shown (1)")
    parser.add_argument("--image", default="containerjobs-test/busybox:latest")
    # A variant's own process (see the docstring), started by the run.
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--run-id", default=uuid.uuid4().hex[:8], help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--daemon", type=lambda s: [int(p) for p in s.split(",")],
                        default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    # As an application would in production: the library's info events filtered out.
    logging.getLogger("containerjobs").setLevel(logging.WARNING)
    if args.variant:
        run_variant(args)
        return
    sys.exit(main_run(args))


if __name__ == "__main__":
    main()
