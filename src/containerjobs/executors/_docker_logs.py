"""Reading a Docker container's output: frames to lines, and where a read got to.

The logs endpoint (``timestamps=1``, json-file driver) sends one frame per log
message: a whole line, or a piece of a long one (the driver cuts lines at 16 KiB), or
the unterminated end of the output. Each frame carries its stream and the daemon's
nanosecond timestamp.

Resuming is exact because the log is one file read in order: the reader keeps the
stamps of the frames it read lately and asks again with ``since`` a little before
the newest, skipping the frames of the reply it already has. Stamps can be a hair
out of order (each stream is stamped as its pipe is read, before the write), hence
the margin.
"""

from __future__ import annotations

import asyncio
import bisect
import codecs
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

import aiohttp

from .._errors import ExecutorError
from .._models import LogLine, Stream
from ._base import LineSink, OutputLine

# A line longer than this many characters is delivered in pieces of about this size,
# so that one endless line cannot fill the manager's memory.
MAX_LINE_CHARS = 1 << 20
# Frames of one stream may be stamped this much earlier than frames of the other
# that came before them in the log (far more than the few microseconds seen).
_SKEW_NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STREAMS: dict[int, Stream] = {1: "stdout", 2: "stderr"}

OpenStream = Callable[[dict[str, str]], AbstractAsyncContextManager[aiohttp.StreamReader]]


def _epoch_seconds(text: str) -> int:
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(seconds=1)


class _Seconds:
    """Epoch seconds of "YYYY-MM-DDTHH:MM:SS", remembered for the last one seen:
    frames come many to a second, so nearly every frame is a cache hit."""

    def __init__(self) -> None:
        self._text = ""
        self._value = 0

    def __call__(self, text: str) -> int:
        if text != self._text:
            self._value = _epoch_seconds(text)
            self._text = text
        return self._value


def parse_stamp(raw: bytes, seconds: Callable[[str], int] = _epoch_seconds) -> int:
    """Nanoseconds since the epoch of a frame stamp such as
    ``2024-01-02T03:04:05.123456789Z`` (RFC 3339; a numeric offset is honoured)."""
    text = raw.decode("ascii")
    offset_ns = 0
    if text.endswith("Z"):
        text = text[:-1]
    else:
        sign_at = max(text.rfind("+"), text.rfind("-"))
        if sign_at > 10:  # past the date's own dashes
            hours, _, minutes = text[sign_at + 1 :].partition(":")
            offset = (int(hours) * 60 + int(minutes or 0)) * 60 * 10**9
            offset_ns = -offset if text[sign_at] == "+" else offset
            text = text[:sign_at]
    whole, _, fraction = text.partition(".")
    nanos = int((fraction + "000000000")[:9])
    return seconds(whole) * 10**9 + nanos + offset_ns


def stamp_datetime(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def since_param(ns: int) -> str:
    # The endpoint takes "seconds.nanoseconds" and keeps messages stamped at or after.
    return f"{ns // 10**9}.{ns % 10**9:09d}"


class _Position:
    """How far the reading got, as ``since`` plus frames to skip can say it.

    A frame not read yet may be stamped a little earlier than the newest one read,
    so a resume asks from the newest stamp minus `_SKEW_NS`, and skips the frames
    read already that the reply repeats: those stamped at or after that point,
    which come first in it, since the log is read in order.
    """

    def __init__(self) -> None:
        self._stamps: list[int] = []  # stamps read, sorted, from index _start on
        self._start = 0

    def add(self, ns: int) -> None:
        stamps = self._stamps
        if not stamps or ns >= stamps[-1]:
            stamps.append(ns)
        else:
            bisect.insort(stamps, ns, lo=self._start)
        # Stamps this far behind the newest are before any resume point from now on.
        horizon = stamps[-1] - _SKEW_NS
        while stamps[self._start] < horizon:
            self._start += 1
        if self._start > 4096 and self._start * 2 > len(stamps):
            del stamps[: self._start]
            self._start = 0

    def resume(self) -> tuple[int, int] | None:
        """``(since, skip)``: ask from `since`; the first `skip` frames are had."""
        if not self._stamps:
            return None
        return max(0, self._stamps[-1] - _SKEW_NS), len(self._stamps) - self._start


class _LineDecoder:
    """One stream's bytes to lines. UTF-8 is decoded incrementally, so a character
    cut between frames is not mangled; bytes that are not UTF-8 are replaced."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self._held: list[str] = []
        self._held_chars = 0
        self._first: datetime | None = None  # stamp of the held line's first frame

    def feed(self, body: bytes, stamp: datetime, sink: LineSink) -> None:
        text = self._decode(body)
        if not text:
            return
        if self._first is None:
            self._first = stamp
        start = 0
        while (end := text.find("\n", start)) >= 0:
            piece = text[start:end]
            if self._held:
                self._held.append(piece)
                piece = "".join(self._held)
                self._held.clear()
                self._held_chars = 0
            sink(OutputLine(LogLine(self.stream, piece, self._first)))
            start = end + 1
            self._first = stamp
        if start < len(text):
            rest = text[start:] if start else text
            self._held.append(rest)
            self._held_chars += len(rest)
            if self._held_chars >= MAX_LINE_CHARS:
                self._emit_held(sink)
        else:
            self._first = None

    def _emit_held(self, sink: LineSink) -> None:
        assert self._first is not None
        text = "".join(self._held)
        self._held.clear()
        self._held_chars = 0
        sink(OutputLine(LogLine(self.stream, text, self._first), newline=False))
        self._first = None

    def finish(self, sink: LineSink) -> None:
        tail = self._decode(b"", True)
        if tail:
            if self._first is None:
                self._first = datetime.now(UTC)
            self._held.append(tail)
        if self._held:
            self._emit_held(sink)


class DockerLogReader:
    """A container's output, from its start, over as many requests as it takes."""

    def __init__(self, container_id: str, open_stream: OpenStream) -> None:
        self._container = container_id[:12]
        self._open = open_stream
        self._decoders = {kind: _LineDecoder(stream) for kind, stream in _STREAMS.items()}
        self._position = _Position()
        self._seconds = _Seconds()
        # The daemon stamps each stream as it reads its pipe, so across streams a
        # stamp can be a hair older than the one before it: lines never go back.
        self._latest = _EPOCH

    async def read(self, sink: LineSink, *, follow: bool) -> None:
        params = {"stdout": "1", "stderr": "1", "timestamps": "1", "follow": "1" if follow else "0"}
        skip = 0
        resume = self._position.resume()
        if resume is not None:
            since, skip = resume
            params["since"] = since_param(since)
        # A frame cut in half is an error, never a short line: the caller reads again.
        cut = f"the log stream of container {self._container} was cut mid-frame"
        async with self._open(params) as content:
            while True:
                # Multiplexed frames: 1 byte stream, 3 zero bytes, 4 bytes size.
                try:
                    header = await content.readexactly(8)
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial:
                        return  # the stream ended between frames: a clean end
                    raise ExecutorError(cut) from exc
                try:
                    payload = await content.readexactly(int.from_bytes(header[4:], "big"))
                except asyncio.IncompleteReadError as exc:
                    raise ExecutorError(cut) from exc
                decoder = self._decoders.get(header[0])
                if decoder is None:
                    continue
                if skip:
                    skip -= 1  # delivered by an earlier read
                    continue
                # With timestamps=1 every frame starts with "<RFC 3339 time> ".
                raw, _, body = payload.partition(b" ")
                ns = parse_stamp(raw, self._seconds)
                stamp = stamp_datetime(ns)
                if stamp > self._latest:
                    self._latest = stamp
                else:
                    stamp = self._latest
                # Decoding, delivery and the position move together, with no await
                # between them: a read cancelled anywhere loses or doubles nothing.
                decoder.feed(body, stamp, sink)
                self._position.add(ns)

    def finish(self) -> list[OutputLine]:
        held: list[OutputLine] = []
        for decoder in self._decoders.values():
            decoder.finish(held.append)
        held.sort(key=lambda item: item.line.timestamp)
        return held
