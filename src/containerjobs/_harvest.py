"""What one run of a job produced: its output within the size cap, its resource use,
and how its container ended, turned into the job's final status."""

from __future__ import annotations

import signal
import time
from collections import deque
from datetime import datetime
from typing import Literal

import attrs

from ._models import Job, JobStatus, LogLine
from .executors._base import ExitStatus, OutputLine, ResourceSample


@attrs.define
class Usage:
    """Peak memory and average CPU, from the stats samples of one job."""

    started: float = attrs.Factory(time.monotonic)
    peak_memory: int | None = None
    cpu_percent: float | None = None
    _first: ResourceSample | None = None

    def add(self, sample: ResourceSample) -> None:
        peak = max(sample.memory_bytes, sample.memory_peak_bytes or 0)
        self.peak_memory = max(self.peak_memory or 0, peak)
        first = self._first
        if first is None:
            self._first = sample
        if (
            first is not None
            and first.read_at
            and sample.read_at
            and sample.read_at > first.read_at
        ):
            # Two readings on the engine's own clock: exact, whatever our clock says.
            span = (sample.read_at - first.read_at).total_seconds()
            used = sample.cpu_total_ns - first.cpu_total_ns
            self.cpu_percent = max(0.0, used / 1e9 / span * 100)
        else:
            span = time.monotonic() - self.started
            if span > 0:
                self.cpu_percent = sample.cpu_total_ns / 1e9 / span * 100


@attrs.define
class End:
    """How the wait for a container ended."""

    exit: ExitStatus | None = None
    reason: Literal["timeout", "cancel"] | None = None
    failure: str | None = None  # the engine failed us: host gone, container gone


@attrs.define
class Output:
    """A job's output as it is read: stdout and stderr rebuilt, within a size cap.

    Past `cap` bytes in a stream, the first half is kept as it came and the last half
    is held back, the oldest lines falling out; `finish` then gives a marker line
    saying what was left out, and the tail.
    """

    cap: int
    parts: dict[str, list[str]] = attrs.Factory(lambda: {"stdout": [], "stderr": []})
    head_bytes: dict[str, int] = attrs.Factory(lambda: {"stdout": 0, "stderr": 0})
    tail: dict[str, deque[OutputLine]] = attrs.Factory(
        lambda: {"stdout": deque(), "stderr": deque()}
    )
    tail_bytes: dict[str, int] = attrs.Factory(lambda: {"stdout": 0, "stderr": 0})
    dropped: dict[str, int] = attrs.Factory(lambda: {"stdout": 0, "stderr": 0})
    complete: bool = False  # the stream ended by itself, not broken
    lost: str | None = None  # why some output could not be read
    last_ts: datetime | None = None
    seen_at_last: int = 0  # lines seen with timestamp last_ts

    def add(self, item: OutputLine) -> bool:
        """Take a line; True when it is kept now, False when held in the tail."""
        line = item.line
        if line.timestamp == self.last_ts:
            self.seen_at_last += 1
        else:
            self.last_ts, self.seen_at_last = line.timestamp, 1
        stream = line.stream
        size = len(line.text.encode()) + 1
        if not self.tail[stream] and self.head_bytes[stream] + size <= self.cap // 2:
            self.head_bytes[stream] += size
            self.parts[stream].append(line.text + "\n" if item.newline else line.text)
            return True
        self.tail[stream].append(item)
        self.tail_bytes[stream] += size
        while self.tail_bytes[stream] > self.cap // 2 and len(self.tail[stream]) > 1:
            old = self.tail[stream].popleft()
            self.tail_bytes[stream] -= len(old.line.text.encode()) + 1
            self.dropped[stream] += 1
        return False

    @property
    def truncated(self) -> bool:
        return any(self.dropped.values())

    def finish(self) -> list[LogLine]:
        """The lines held back: per stream a marker (when lines fell out), then its
        tail; both streams in time order."""
        lines: list[OutputLine] = []
        for stream, tail in self.tail.items():
            if self.dropped[stream]:
                marker = (
                    f"[containerjobs: {self.dropped[stream]} lines left out here: the "
                    f"{stream} of this job passed {self.cap} bytes]"
                )
                first = tail[0].line
                lines.append(OutputLine(LogLine(first.stream, marker, first.timestamp)))
            lines.extend(tail)
            tail.clear()
        lines.sort(key=lambda item: item.line.timestamp)
        for item in lines:
            text = item.line.text
            self.parts[item.line.stream].append(text + "\n" if item.newline else text)
        return [item.line for item in lines]

    def text(self, stream: str) -> str:
        return "".join(self.parts[stream])


def outcome(job: Job, end: End, output: Output, cancel_reason: str) -> tuple[JobStatus, str | None]:
    """The job's final status and error, from how its container ended and what
    could be read of its output."""
    status, error = _status_of(job, end, cancel_reason)
    if output.lost is not None:
        # Output we could not read is a failure to say out loud, never a quiet cut.
        if status is JobStatus.COMPLETED:
            status = JobStatus.FAILED
        note = f"the output could not be read completely: {output.lost}"
        error = f"{error}; {note}" if error else note
    return status, error


def _status_of(job: Job, end: End, cancel_reason: str) -> tuple[JobStatus, str | None]:
    if end.reason == "timeout":
        return JobStatus.TIMEOUT, (
            f"timed out after {job.spec.timeout_seconds:g} s; the container was killed"
        )
    if end.reason == "cancel":
        return JobStatus.CANCELLED, cancel_reason
    if end.failure is not None or end.exit is None:
        return JobStatus.FAILED, f"lost the container on host {job.host!r}: {end.failure}"
    if end.exit.oom_killed:
        return JobStatus.FAILED, (
            f"memory limit of {job.spec.memory_limit_mb} MB exceeded: "
            f"the container was killed (OOM)"
        )
    if end.exit.exit_code == 0:
        return JobStatus.COMPLETED, None
    detail = f": {end.exit.error}" if end.exit.error else ""
    code = end.exit.exit_code
    if code is not None and code - 128 in (signal.SIGKILL, signal.SIGTERM):
        # Killed, and not by us: the daemon stopping does this to its containers.
        detail += (
            f" (killed by {signal.Signals(code - 128).name}, not by containerjobs: "
            f"host {job.host!r} may have stopped)"
        )
    return JobStatus.FAILED, f"exited with code {code}{detail}"
