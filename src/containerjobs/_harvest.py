"""What one run of a job produced: its output within the size cap, its resource use,
and how its container ended, turned into the job's final status."""

from __future__ import annotations

import signal
import time
from collections import deque
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


def _size(text: str) -> int:
    # str.isascii() is O(1) in CPython: most lines skip the encode.
    return len(text) if text.isascii() else len(text.encode())


def _head(text: str, budget: int) -> str:
    """The longest start of `text` whose UTF-8 takes at most `budget` bytes."""
    if text.isascii():
        return text[:budget]
    # A character cut in two by the budget is left out whole ("ignore").
    return text.encode()[:budget].decode("utf-8", "ignore")


def _tail(text: str, budget: int) -> str:
    """The longest end of `text` whose UTF-8 takes at most `budget` bytes."""
    if budget <= 0:
        return ""
    if text.isascii():
        return text[-budget:]
    return text.encode()[-budget:].decode("utf-8", "ignore")


@attrs.define
class _Kept:
    """One stream's output within its cap: a head kept as it came, then a tail of
    the newest bytes, with the count of the bytes left out between them."""

    head_room: int
    tail_limit: int
    parts: list[str] = attrs.Factory(list)
    tail: deque[OutputLine] = attrs.Factory(deque)
    tail_bytes: int = 0
    dropped: int = 0
    head_full: bool = False
    cut: OutputLine | None = None  # the start of the line the head ends in
    last_dropped: LogLine | None = None

    def held(self, cap: int) -> list[OutputLine]:
        """What is held back, in order: the start of the line the head ends in, a
        marker when bytes fell out, the tail. Taken once, at the end."""
        tail = list(self.tail)
        self.tail.clear()
        cut, self.cut = self.cut, None
        if cut is not None and not self.dropped and tail:
            # Nothing fell out: the line cut at the head's end is whole again.
            rest = tail[0]
            whole = cut.line.text + rest.line.text
            tail[0] = OutputLine(attrs.evolve(cut.line, text=whole), rest.newline)
            cut = None
        items = [cut] if cut is not None else []
        if self.dropped:
            anchor = tail[0].line if tail else self.last_dropped
            assert anchor is not None
            text = (
                f"[containerjobs: {self.dropped} bytes left out here: the "
                f"{anchor.stream} of this job passed {cap} bytes]"
            )
            items.append(OutputLine(attrs.evolve(anchor, text=text)))
        items += tail
        for item in items:
            self.parts.append(item.written)
        if self.dropped and cut is not None:
            # The marker stands on a line of its own, after the head's last piece.
            self.parts.insert(len(self.parts) - len(tail) - 1, "\n")
        return items

    def add(self, item: OutputLine) -> LogLine | None:
        text = item.line.text
        size = _size(text) + item.newline
        if not self.head_full:
            if size <= self.head_room:
                self.head_room -= size
                self.parts.append(item.written)
                return item.line
            # The head ends inside this line: its start belongs to the head, the rest
            # goes on to the tail. Both are held until the end, where they become one
            # line again if nothing fell out between them.
            self.head_full = True
            start = _head(text, self.head_room)
            # What the head could not take (a wide character at its end) goes to the
            # tail: head and tail together always hold the whole cap.
            self.tail_limit += self.head_room - _size(start)
            self.head_room = 0
            if start:
                self.cut = OutputLine(attrs.evolve(item.line, text=start), newline=False)
            rest = OutputLine(attrs.evolve(item.line, text=text[len(start) :]), item.newline)
            self._add_to_tail(rest, size - _size(start))
            return None
        self._add_to_tail(item, size)
        return None

    def _add_to_tail(self, item: OutputLine, size: int) -> None:
        self.tail.append(item)
        self.tail_bytes += size
        while self.tail_bytes > self.tail_limit:
            oldest = self.tail[0]
            oldest_size = _size(oldest.line.text) + oldest.newline
            excess = self.tail_bytes - self.tail_limit
            self.last_dropped = oldest.line
            if oldest_size <= excess:
                self.tail.popleft()
                self.tail_bytes -= oldest_size
                self.dropped += oldest_size
                continue
            # Cut inside the oldest line, keeping its end: a line of any length is
            # held in at most the tail's worth of memory.
            kept = _tail(oldest.written, oldest_size - excess)
            cut = oldest_size - _size(kept)
            self.tail_bytes -= cut
            self.dropped += cut
            if not kept:  # a wide character that did not fit
                self.tail.popleft()
                continue
            text = kept[:-1] if oldest.newline else kept
            self.tail[0] = OutputLine(attrs.evolve(oldest.line, text=text), oldest.newline)


@attrs.define
class Output:
    """A job's output as it is read: stdout and stderr rebuilt, within a size cap.

    Past `cap` bytes in a stream (UTF-8, newlines included), its first half is kept
    as it came and its last half held back, the oldest bytes falling out, cutting
    inside a line where need be; `finish` then gives a marker line saying how much
    was left out, and the tail. Memory and the store hold at most about `cap` bytes
    per stream, whatever the length of the lines.
    """

    cap: int
    streams: dict[str, _Kept] = attrs.field(init=False)
    lost: str | None = None  # why some output could not be read

    def __attrs_post_init__(self) -> None:
        half = self.cap // 2
        self.streams = {name: _Kept(half, self.cap - half) for name in ("stdout", "stderr")}

    def add(self, item: OutputLine) -> LogLine | None:
        """Take a line; return what of it to store now (None when it is held back
        in the tail, or falls out)."""
        return self.streams[item.line.stream].add(item)

    @property
    def truncated(self) -> bool:
        return any(kept.dropped for kept in self.streams.values())

    def finish(self) -> list[LogLine]:
        """The lines held back: per stream a marker (when bytes fell out) and its
        tail; both streams in time order."""
        lines = [item for kept in self.streams.values() for item in kept.held(self.cap)]
        lines.sort(key=lambda item: item.line.timestamp)
        return [item.line for item in lines]

    def text(self, stream: str) -> str:
        return "".join(self.streams[stream].parts)


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
    if end.failure is not None:
        # What is known, and no more: a kill that was sent but never confirmed is
        # not a kill, and the output read so far may not be all of it.
        if end.reason is None:
            return JobStatus.FAILED, (
                f"lost the container on host {job.host!r}: {end.failure}; "
                "its output may be incomplete"
            )
        why = (
            f"timed out after {job.spec.timeout_seconds:g} s"
            if end.reason == "timeout"
            else cancel_reason
        )
        return JobStatus.FAILED, (
            f"{why}, but killing its container on host {job.host!r} was not confirmed: "
            f"{end.failure}; its output may be incomplete, and the container is removed "
            "once the host answers again"
        )
    if end.reason == "timeout":
        return JobStatus.TIMEOUT, (
            f"timed out after {job.spec.timeout_seconds:g} s; the container was killed"
        )
    if end.reason == "cancel":
        return JobStatus.CANCELLED, cancel_reason
    if end.exit is None:
        return JobStatus.FAILED, f"lost the container on host {job.host!r}"
    if end.exit.oom_killed:
        return JobStatus.FAILED, (
            f"memory limit of {job.spec.memory_limit_mb} MB exceeded: "
            f"the container was killed (OOM)"
        )
    if end.exit.exit_code == 0:
        return JobStatus.COMPLETED, None
    detail = f": {end.exit.error}" if end.exit.error else ""
    code = end.exit.exit_code
    if code == 128 + signal.SIGKILL:
        # The engine said no OOM kill, or cannot tell (a Swarm task on another node).
        detail += (
            f" (killed by SIGKILL, not by containerjobs: the memory limit of "
            f"{job.spec.memory_limit_mb} MB was likely hit, or host {job.host!r} stopped)"
        )
    elif code is not None and code - 128 == signal.SIGTERM:
        # Killed, and not by us: the daemon stopping does this to its containers.
        detail += (
            f" (killed by {signal.Signals(code - 128).name}, not by containerjobs: "
            f"host {job.host!r} may have stopped)"
        )
    return JobStatus.FAILED, f"exited with code {code}{detail}"
