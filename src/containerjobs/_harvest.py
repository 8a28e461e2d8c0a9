"""What one run of a job produced: its output within the size cap, its resource use,
and how its container ended, turned into the job's final status."""

from __future__ import annotations

import heapq
import itertools
import signal
import time
from array import array
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Literal

import attrs

from ._models import Job, JobStatus, LogLine, Stream
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


# The tail packs this many lines, or about this many bytes, to a block.
_BLOCK_LINES = 1024
_BLOCK_BYTES = 1 << 16


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


class _Text:
    """Text appended in many small pieces, packed as it grows: a million short lines
    cost their characters, not a million string objects."""

    def __init__(self) -> None:
        self._packed: list[str] = []
        self._pieces: list[str] = []

    def append(self, piece: str) -> None:
        self._pieces.append(piece)
        if len(self._pieces) >= _BLOCK_LINES:
            self._packed.append("".join(self._pieces))
            self._pieces.clear()

    def parts(self) -> list[str]:
        return [*self._packed, *self._pieces]


@attrs.define
class _Block:
    """Lines of a tail packed together: their written texts joined, where each ends,
    and their stamps as POSIX times (exact to the microsecond, as datetimes are)."""

    text: str
    ends: array[int]
    stamps: array[float]
    size: int  # UTF-8 bytes of the lines from `start` on, less `skip`
    start: int = 0  # lines before this one fell out
    skip: int = 0  # characters of line `start` that fell out

    def line(self, index: int) -> str:
        begin = self.ends[index - 1] if index else 0
        if index == self.start:
            begin += self.skip
        return self.text[begin : self.ends[index]]


class _Tail:
    """The newest `limit` bytes of one stream, and the count of those that fell out
    before them. Lines are packed in blocks, so a tail of short lines takes about 20
    bytes a line; whole blocks fall out as the tail grows, and `trim` cuts the oldest
    one to the byte at the end. It holds at most `limit` bytes and two blocks more."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.dropped = 0
        self.last_dropped: float | None = None  # the stamp of the newest line out
        self._blocks: deque[_Block] = deque()
        self._texts: list[str] = []  # the block being filled
        self._stamps: list[datetime] = []
        self._open_size = 0

    def add(self, written: str, size: int, stamp: datetime) -> None:
        self._texts.append(written)
        self._stamps.append(stamp)
        self._open_size += size
        self.size += size
        if len(self._texts) >= _BLOCK_LINES or self._open_size >= _BLOCK_BYTES:
            self._pack()

    def _pack(self) -> None:
        if not self._texts:
            return
        ends = array("L", itertools.accumulate(map(len, self._texts)))
        stamps = array("d", map(datetime.timestamp, self._stamps))
        self._blocks.append(_Block("".join(self._texts), ends, stamps, self._open_size))
        self._texts, self._stamps, self._open_size = [], [], 0
        # Whole blocks fall out while those after them still hold `limit` bytes.
        blocks = self._blocks
        while len(blocks) > 1 and self.size - blocks[0].size >= self.limit:
            self._drop(blocks.popleft())

    def _drop(self, block: _Block) -> None:
        self._lose(block, block.size, block.stamps[-1])

    def _lose(self, block: _Block, size: int, stamp: float) -> None:
        """`size` bytes of `block` fell out, the newest of them stamped `stamp`."""
        block.size -= size
        self.size -= size
        self.dropped += size
        self.last_dropped = stamp

    def trim(self) -> None:
        """Cut the oldest lines to leave exactly the newest `limit` bytes (less a wide
        character that did not fit), cutting inside a line where need be."""
        self._pack()
        while self.size > self.limit:
            block = self._blocks[0]
            line = block.line(block.start)
            line_size = _size(line)
            excess = self.size - self.limit
            # Keep the end of a line longer than the excess: what a terminal would
            # show last (nothing, when a wide character there did not fit).
            kept = _tail(line, line_size - excess) if line_size > excess else ""
            self._lose(block, line_size - _size(kept), block.stamps[block.start])
            if kept:
                block.skip += len(line) - len(kept)
                continue
            block.start += 1
            block.skip = 0
            if block.start == len(block.ends):
                self._blocks.popleft()

    def release(self) -> None:
        """Let the lines go, keeping the counts (once all is stored and joined)."""
        self._blocks.clear()

    def first_stamp(self) -> float | None:
        return self._blocks[0].stamps[self._blocks[0].start] if self._blocks else None

    def parts(self) -> list[str]:
        """The tail's text, in pieces (a slice of each block: one copy, no more)."""
        parts = []
        for block in self._blocks:
            begin = (block.ends[block.start - 1] if block.start else 0) + block.skip
            parts.append(block.text[begin:] if begin else block.text)
        return parts

    def lines(self, stream: Stream) -> Iterator[OutputLine]:
        for block in self._blocks:
            for index in range(block.start, len(block.ends)):
                written = block.line(index)
                newline = written.endswith("\n")
                text = written[:-1] if newline else written
                moment = datetime.fromtimestamp(block.stamps[index], UTC)
                yield OutputLine(LogLine(stream, text, moment), newline)


@attrs.define
class _Kept:
    """One stream's output within its cap: a head kept as it came, then a tail of
    the newest bytes, with the count of the bytes left out between them."""

    stream: Stream
    head_room: int
    tail: _Tail
    written: _Text = attrs.Factory(_Text)
    head_full: bool = False
    cut: OutputLine | None = None  # the start of the line the head ends in
    final: str | None = None  # the whole text, once asked for at the end

    def add(self, item: OutputLine) -> LogLine | None:
        text = item.line.text
        size = _size(text) + item.newline
        if not self.head_full:
            if size <= self.head_room:
                self.head_room -= size
                self.written.append(item.written)
                return item.line
            # The head ends inside this line: its start belongs to the head, the rest
            # goes on to the tail. Both are held until the end, where they become one
            # line again if nothing fell out between them.
            self.head_full = True
            start = _head(text, self.head_room)
            # What the head could not take (a wide character at its end) goes to the
            # tail: head and tail together always hold the whole cap.
            self.tail.limit += self.head_room - _size(start)
            self.head_room = 0
            if start:
                self.cut = OutputLine(attrs.evolve(item.line, text=start), newline=False)
            rest = item.written[len(start) :]
            self.tail.add(rest, size - _size(start), item.line.timestamp)
            return None
        self.tail.add(item.written, size, item.line.timestamp)
        return None

    def held(self, cap: int) -> Iterator[OutputLine]:
        """What is held back, in order: the start of the line the head ends in, a
        marker when bytes fell out, the tail. Taken once, at the end, after `trim`."""
        tail, cut = self.tail, self.cut
        lines = tail.lines(self.stream)
        if cut is not None and not tail.dropped:
            # Nothing fell out: the line cut at the head's end is whole again.
            rest = next(lines, None)
            if rest is not None:
                whole = cut.line.text + rest.line.text
                yield OutputLine(attrs.evolve(cut.line, text=whole), rest.newline)
                cut = None
        if cut is not None:
            yield cut
        if tail.dropped:
            stamp = tail.first_stamp()
            if stamp is None:
                stamp = tail.last_dropped
            assert stamp is not None
            yield OutputLine(
                LogLine(self.stream, self.marker(cap), datetime.fromtimestamp(stamp, UTC))
            )
        yield from lines

    def marker(self, cap: int) -> str:
        return (
            f"[containerjobs: {self.tail.dropped} bytes left out here: the "
            f"{self.stream} of this job passed {cap} bytes]"
        )

    def text(self, cap: int) -> str:
        """All that is kept of the stream, as written, with the marker in its place."""
        if self.final is not None:
            return self.final
        # One join: the text of a capped stream is megabytes, made once; what it is
        # made from is let go at once (the job's record is written next).
        parts = self.written.parts()
        if self.cut is not None:
            parts.append(self.cut.line.text)
            if self.tail.dropped:
                parts.append("\n")  # the marker stands on a line of its own
        if self.tail.dropped:
            parts.append(self.marker(cap) + "\n")
        self.final = "".join(parts + self.tail.parts())
        self.written = _Text()
        self.tail.release()
        return self.final


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
        self.streams = {
            name: _Kept(name, half, _Tail(self.cap - half)) for name in ("stdout", "stderr")
        }

    def add(self, item: OutputLine) -> LogLine | None:
        """Take a line; return what of it to store now (None when it is held back
        in the tail, or falls out)."""
        return self.streams[item.line.stream].add(item)

    @property
    def truncated(self) -> bool:
        return any(kept.tail.dropped for kept in self.streams.values())

    def finish(self) -> Iterator[LogLine]:
        """The lines held back: per stream a marker (when bytes fell out) and its
        tail; both streams in time order, made one at a time."""
        for kept in self.streams.values():
            kept.tail.trim()
        held = [kept.held(self.cap) for kept in self.streams.values()]
        for item in heapq.merge(*held, key=lambda item: item.line.timestamp):
            yield item.line

    def text(self, stream: str) -> str:
        return self.streams[stream].text(self.cap)


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
