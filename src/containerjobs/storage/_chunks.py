"""A job's log lines as chunks: the lines of one `append_logs` call in one JSON text,
the form every built-in store keeps them in.

One row per line cost SQLite 170 bytes for a line of 7 (the numbers of ``seq``); a
chunk costs a few bytes beyond each text. It is columnar, so that json's C code does
nearly all the work both ways::

    {"s":"ooe","t0":1704067200000000,"d":[12,-3],"x":["a","b","c"]}

- ``s``: one character per line, its stream (``o`` stdout, ``e`` stderr);
- ``t0``: the first line's timestamp in microseconds since the epoch (or ISO text, in
  the chunks migrated from the one-row-per-line tables);
- ``d``: each further line's timestamp less the one before it, in microseconds (the two
  streams' lines need not be in time order, so a delta may be negative);
- ``x``: the texts, in a list because a text may hold any character, newlines too.

A chunk does not hold its lines' seq: the row beside it holds the first one.

SQLite and the in-memory store keep a chunk zlib-compressed (`pack_chunk`) when that is
shorter: seq's 500 lines take 1.0 KB so, 6.6 as JSON, for 25 µs more to write and 12 to
read. PostgreSQL compresses long values by itself (TOAST) and keeps the JSON text.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import accumulate, pairwise
from typing import Any

from .._errors import StorageError
from .._models import LogLine, Stream
from ._base import StoredLine
from ._codec import as_utc, parse_datetime

__all__ = ["LineWindow", "decode_chunk", "encode_chunk", "pack_chunk"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_STREAM_OF: dict[str, Stream] = {"o": "stdout", "e": "stderr"}


def _micros(value: datetime) -> int:
    # Integer arithmetic throughout: a float of seconds would round microseconds away.
    return (value - _EPOCH) // _MICROSECOND


def encode_chunk(lines: Sequence[StoredLine]) -> str:
    """The lines as one chunk's JSON text (their seq left out; they follow each other).

    A naive timestamp raises `ValueError`, as it does wherever the stores take one.
    """
    if not lines:
        raise ValueError("a log chunk holds at least one line")
    try:
        stamps = [_micros(stored.line.timestamp) for stored in lines]
    except TypeError:
        # A naive datetime does not subtract from an aware one: say which, our way.
        for stored in lines:
            as_utc(stored.line.timestamp)
        raise
    chunk = {
        "s": "".join(["o" if stored.line.stream == "stdout" else "e" for stored in lines]),
        "t0": stamps[0],
        "d": [later - earlier for earlier, later in pairwise(stamps)],
        "x": [stored.line.text for stored in lines],
    }
    # Characters as themselves, not \u escapes: non-ASCII output takes its UTF-8 bytes
    # (2 to 4) rather than 6 to 12. Control characters are escaped either way, so NUL,
    # which no text column of PostgreSQL takes, is stored as \u0000.
    data = json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))
    if not data.isascii():  # a flag of the str: free
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate, which UTF-8 cannot hold (no driver will bind it):
            # escaped, the whole chunk is ASCII.
            data = json.dumps(chunk, separators=(",", ":"))
    return data


def pack_chunk(data: str) -> str | bytes:
    """A chunk's JSON as a store with no compression of its own keeps it: compressed
    when that is shorter (a chunk of a line or two is not), else as it is."""
    # Level 1: 25 µs for seq's 500 lines, a third of level 6's time for 6 % more bytes.
    raw = data.encode("utf-8")
    packed = zlib.compress(raw, 1)
    return packed if len(packed) < len(raw) else data


def decode_chunk(first_seq: int, data: str | bytes) -> list[StoredLine]:
    """The lines of a chunk whose first line is `first_seq`, equal to those encoded
    (timestamps in UTC); `data` as `encode_chunk` or `pack_chunk` made it. A chunk
    that does not read raises `StorageError`."""
    return _decode(first_seq, data, 0, None)


def _decode(first_seq: int, data: str | bytes, lo: int, hi: int | None) -> list[StoredLine]:
    # Lines lo to hi (not included) of the chunk, counted from 0 within it: the JSON
    # is read whole, but only the lines wanted become objects.
    try:
        if isinstance(data, bytes):
            data = zlib.decompress(data).decode("utf-8")
        chunk: dict[str, Any] = json.loads(data)
        streams: str = chunk["s"]
        texts: list[str] = chunk["x"]
        deltas: list[int] = chunk["d"]
        start: int | str = chunk["t0"]
        size = len(texts)
        if len(streams) != size or len(deltas) != size - 1:
            raise ValueError(f"{size} texts, {len(streams)} streams and {len(deltas)} deltas")
        stamp = _micros(parse_datetime(start)) if isinstance(start, str) else start
        hi = size if hi is None else min(hi, size)
        if hi <= lo:
            return []
        stamp += sum(deltas[:lo])
        # _EPOCH + _MICROSECOND * us: half the time of timedelta(microseconds=us).
        return [
            StoredLine(seq, LogLine(_STREAM_OF[stream], text, _EPOCH + _MICROSECOND * us))
            for seq, stream, text, us in zip(
                range(first_seq + lo, first_seq + hi),
                streams[lo:hi],
                texts[lo:hi],
                accumulate(deltas[lo : hi - 1], initial=stamp),
                strict=True,
            )
        ]
    except (ValueError, TypeError, KeyError, OverflowError, zlib.error) as exc:
        # Only a row edited by hand (or by a broken writer) gets here.
        raise StorageError(
            f"the stored log chunk from seq {first_seq} cannot be read: {exc!r}"
        ) from exc


class LineWindow:
    """The lines a `Storage.read_logs` call asks for, gathered chunk by chunk.

    A store gives `add` the chunks that may hold them, in order, from the one holding
    seq `start`, and stops as soon as the window is `full`: with a limit, the chunks
    after it are never read, nor the lines of a chunk beyond it made into objects.
    """

    def __init__(self, after: int, until: int | None, limit: int | None) -> None:
        self.start = max(after + 1, 0)  # the next seq wanted
        self.stop = until
        self._room = limit
        self.lines: list[StoredLine] = []

    @property
    def full(self) -> bool:
        """Whether no further line is wanted (also before any chunk: nothing to read)."""
        return self._room == 0 or (self.stop is not None and self.start >= self.stop)

    def add(self, first_seq: int, data: str | bytes) -> None:
        """Take the wanted lines of the chunk that starts at `first_seq`."""
        lo = max(self.start - first_seq, 0)
        hi = None if self.stop is None else self.stop - first_seq
        if self._room is not None:
            hi = lo + self._room if hi is None else min(hi, lo + self._room)
        taken = _decode(first_seq, data, lo, hi)
        if taken:
            self.lines += taken
            self.start = taken[-1].seq + 1
            if self._room is not None:
                self._room -= len(taken)
