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

import bisect
import codecs
import struct
from array import array
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

import aiohttp
import anyio.lowlevel

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
_READ_SIZE = 1 << 16
_SIZE = struct.Struct(">I")  # a frame's payload size, after its stream byte and 3 zeros

OpenStream = Callable[[dict[str, str]], AbstractAsyncContextManager[aiohttp.StreamReader]]


def _epoch_seconds(text: str) -> int:
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(seconds=1)


def parse_stamp(raw: bytes) -> int:
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
    return _epoch_seconds(whole) * 10**9 + nanos + offset_ns


def stamp_datetime(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


class _Stamps:
    """Frame stamps to nanoseconds and to datetimes, quick for what nearly every frame
    is: one of many in the same second, stamped in UTC to the nanosecond."""

    def __init__(self) -> None:
        self._prefix = b""  # "YYYY-MM-DDTHH:MM:SS" of the last stamp read
        self._prefix_ns = 0
        self._second = -1
        self._fields: tuple[int, ...] = ()  # year to second of self._second

    def ns(self, raw: bytes) -> int:
        if len(raw) == 30 and raw[19] == 0x2E and raw[29] == 0x5A:  # "." and "Z"
            if raw[:19] != self._prefix:
                self._prefix = raw[:19]
                self._prefix_ns = _epoch_seconds(raw[:19].decode("ascii")) * 10**9
            return self._prefix_ns + int(raw[20:29])
        return parse_stamp(raw)

    def moment(self, ns: int) -> datetime:
        second, nanos = divmod(ns, 10**9)
        if second != self._second:
            self._second = second
            self._fields = (_EPOCH + timedelta(seconds=second)).timetuple()[:6]
        # The constructor is three times quicker than replace() or adding a timedelta.
        year, month, day, hour, minute, sec = self._fields
        return datetime(year, month, day, hour, minute, sec, nanos // 1000, UTC)


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
        # Stamps read, sorted, from index _start on: a second's worth of frames, as
        # 8-byte integers rather than int objects.
        self._stamps = array("q")
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
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._clean = True  # the decoder holds no bytes of a cut character
        self._held: list[str] = []
        self._held_chars = 0
        self._first: datetime | None = None  # stamp of the held line's first frame

    def feed(self, body: bytes, stamp: datetime, sink: LineSink) -> None:
        if self._clean and body.isascii():
            text = body.decode("ascii")
            if not self._held and text.find("\n") == len(text) - 1 >= 0:
                # Nearly every frame: one whole line (the driver's message).
                sink(OutputLine(LogLine(self.stream, text[:-1], stamp)))
                return
        else:
            text = self._decoder.decode(body)
            self._clean = not self._decoder.getstate()[0]
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
        tail = self._decoder.decode(b"", True)
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
        self._stamps = _Stamps()
        self._skip = 0  # frames at the start of the current reply had already
        # The daemon stamps each stream as it reads its pipe, so across streams a
        # stamp can be a hair older than the one before it: lines never go back.
        self._latest = _EPOCH
        self._latest_ns = 0

    async def read(self, sink: LineSink, *, follow: bool) -> None:
        params = {"stdout": "1", "stderr": "1", "timestamps": "1", "follow": "1" if follow else "0"}
        self._skip = 0
        resume = self._position.resume()
        if resume is not None:
            since, self._skip = resume
            params["since"] = since_param(since)
        buffer = b""
        async with self._open(params) as content:
            # Read what has come, many frames at a time, and take every whole frame
            # in it before the next await: a read cancelled at that await leaves only
            # a part of a frame unread, and the position says so.
            while chunk := await content.read(_READ_SIZE):
                buffer = buffer + chunk if buffer else chunk
                buffer = buffer[self._frames(buffer, sink) :]
                # A read of what is buffered already returns without giving way: with
                # the engine ahead of us, the flush and the live readers would starve
                # (and the lines waiting for them pile up) until the job ended.
                await anyio.lowlevel.checkpoint()
        if buffer:
            # A frame cut in half is an error, never a short line: the caller reads again.
            raise ExecutorError(f"the log stream of container {self._container} was cut mid-frame")

    def _frames(self, buffer: bytes, sink: LineSink) -> int:
        """Deliver the whole frames at the start of `buffer`; return their length."""
        # Multiplexed frames: 1 byte stream, 3 zero bytes, 4 bytes size, then with
        # timestamps=1 a payload of "<RFC 3339 time> <bytes written>".
        at, size = 0, len(buffer)
        decoders, position = self._decoders, self._position
        while size - at >= 8:
            end = at + 8 + _SIZE.unpack_from(buffer, at + 4)[0]
            if end > size:
                break
            decoder = decoders.get(buffer[at])
            start, at = at + 8, end
            if decoder is None:
                continue
            if self._skip:
                self._skip -= 1  # delivered by an earlier read
                continue
            space = buffer.find(b" ", start, end)
            ns = self._stamps.ns(buffer[start:space])
            if ns > self._latest_ns:
                self._latest_ns = ns
                self._latest = self._stamps.moment(ns)
            # Decoding, delivery and the position move together, with no await
            # between them: a read cancelled anywhere loses or doubles nothing.
            decoder.feed(buffer[space + 1 : end], self._latest, sink)
            position.add(ns)
        return at

    def finish(self) -> list[OutputLine]:
        held: list[OutputLine] = []
        for decoder in self._decoders.values():
            decoder.finish(held.append)
        held.sort(key=lambda item: item.line.timestamp)
        return held
