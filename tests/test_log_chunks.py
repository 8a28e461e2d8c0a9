"""Log lines as chunks: the codec every built-in store keeps them in, the windows
read_logs cuts from them, and what they cost on disk and in memory.

PostgreSQL's side of it (its migration, its size) is in ``test_postgres.py``.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import aiosqlite
import pytest
from hypothesis import given
from hypothesis import strategies as st

from containerjobs._errors import StorageError
from containerjobs._models import LogLine
from containerjobs.storage import InMemoryStorage, SQLiteStorage, Storage, StoredLine
from containerjobs.storage import _chunks as chunks_module
from containerjobs.storage._chunks import LineWindow, decode_chunk, encode_chunk, pack_chunk
from containerjobs.testing._storage_contract import lines, make_job

from .strategies import T0

_ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9, minutes=-30))]
)
_LINES = st.lists(
    st.builds(
        LogLine,
        st.sampled_from(["stdout", "stderr"]),
        st.text(),
        st.datetimes(timezones=_ZONES),
    ),
    min_size=1,
    max_size=30,
)


def seq_batches(count: int, size: int = 500) -> Iterator[list[StoredLine]]:
    """What ``seq 1 COUNT`` leaves in a store: its numbers, one a line, a few µs apart
    (not always in order, as two streams' lines may be), in batches of a flush."""
    start = datetime.now(UTC)
    for first in range(0, count, size):
        yield [
            StoredLine(
                seq,
                LogLine("stdout", str(seq + 1), start + timedelta(microseconds=3 * seq + seq % 5)),
            )
            for seq in range(first, min(first + size, count))
        ]


def stored(first: int, line_list: list[LogLine]) -> list[StoredLine]:
    return [StoredLine(first + n, line) for n, line in enumerate(line_list)]


# --- the codec -------------------------------------------------------------------


@given(st.integers(0, 2**40), _LINES)
def test_any_lines_come_back_equal_and_in_utc(first: int, line_list: list[LogLine]) -> None:
    written = stored(first, line_list)
    data = encode_chunk(written)
    read = decode_chunk(first, data)
    assert read == written
    assert all(s.line.timestamp.tzinfo is UTC for s in read)
    data.encode("utf-8")  # storable by every driver


def test_the_format_is_columnar_json() -> None:
    written = stored(
        7,
        [
            LogLine("stdout", "a", T0),
            LogLine("stderr", 'b\n"c"', T0 + timedelta(microseconds=12)),
            LogLine("stdout", "", T0 + timedelta(microseconds=9)),  # earlier: a negative delta
        ],
    )
    data = encode_chunk(written)
    assert json.loads(data) == {
        "s": "oeo",
        "t0": int(T0.timestamp()) * 1_000_000,
        "d": [12, -3],
        "x": ["a", 'b\n"c"', ""],
    }
    assert " " not in data  # compact separators


def test_text_keeps_its_characters_and_a_lone_surrogate_is_escaped() -> None:
    text = "häßlich ✓ \U0001f600 nul\x00"
    data = encode_chunk(stored(0, [LogLine("stdout", text, T0)]))
    # UTF-8 bytes for what is not ASCII, not 6 to 12 bytes of escapes; NUL escaped,
    # as no PostgreSQL text takes it.
    assert "häßlich ✓ \U0001f600" in data
    assert "\x00" not in data and "\\u0000" in data

    lone = stored(0, [LogLine("stdout", "lone \ud800", T0), LogLine("stdout", "ä", T0)])
    data = encode_chunk(lone)
    assert data.isascii()
    assert decode_chunk(0, data) == lone


def test_a_packed_chunk_is_compressed_when_that_is_shorter() -> None:
    batch = next(seq_batches(500))
    data = encode_chunk(batch)
    packed = pack_chunk(data)
    assert isinstance(packed, bytes)
    assert len(packed) * 4 < len(data)
    assert decode_chunk(0, packed) == batch
    one = encode_chunk(batch[:1])
    assert pack_chunk(one) == one  # too short to gain


def test_a_migrated_chunk_with_an_iso_time_reads() -> None:
    # What SQLite's migration 4 makes of an old row.
    data = json.dumps({"s": "e", "t0": "2024-01-01T00:00:00.000001+00:00", "d": [], "x": ["old"]})
    assert decode_chunk(41, data) == [
        StoredLine(41, LogLine("stderr", "old", T0 + timedelta(microseconds=1)))
    ]


def test_a_naive_time_or_no_line_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        encode_chunk(stored(0, [LogLine("stdout", "a", datetime(2024, 1, 1))]))
    with pytest.raises(ValueError, match="at least one"):
        encode_chunk([])


@pytest.mark.parametrize(
    "data",
    [
        "not json",
        '{"s": "o", "t0": 0, "d": [], "x": []}',  # a stream for no text
        '{"s": "oo", "t0": 0, "d": [], "x": ["a", "b"]}',  # a delta missing
        '{"s": "z", "t0": 0, "d": [], "x": ["a"]}',  # no such stream
        '{"s": "o", "d": [], "x": ["a"]}',
        '{"s": "o", "t0": "yesterday", "d": [], "x": ["a"]}',
        b"not zlib",
        zlib.compress(b"\xff not UTF-8"),
    ],
)
def test_a_damaged_chunk_is_a_storage_error(data: str | bytes) -> None:
    with pytest.raises(StorageError, match="from seq 5 cannot be read"):
        decode_chunk(5, data)


@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    after=st.integers(-3, 30),
    until=st.none() | st.integers(-1, 30),
    limit=st.none() | st.integers(0, 8),
)
def test_a_window_takes_what_a_slice_of_all_lines_would(
    sizes: list[int], after: int, until: int | None, limit: int | None
) -> None:
    everything = lines(0, sum(sizes))
    firsts = [sum(sizes[:n]) for n in range(len(sizes))]
    window = LineWindow(after, until, limit)
    # As the stores feed it: from the chunk holding the first line wanted.
    for first, size in zip(firsts, sizes, strict=True):
        if first + size <= window.start:
            continue
        if window.full:
            break
        window.add(first, encode_chunk(everything[first : first + size]))
    expected = [s for s in everything if s.seq > after and (until is None or s.seq < until)]
    assert window.lines == expected[:limit]


# --- in the stores ---------------------------------------------------------------


async def chunk_rows(path: Path) -> list[tuple[int, int]]:
    async with aiosqlite.connect(path) as db:
        rows = await db.execute_fetchall(
            "SELECT first_seq, end_seq FROM log_chunks ORDER BY first_seq"
        )
    return [(row[0], row[1]) for row in rows]


async def test_sqlite_an_append_of_500_lines_writes_one_row(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStorage(path)
    await store.open()
    try:
        await store.create([make_job("j")])
        await store.append_logs("j", lines(0, 500))
        assert await chunk_rows(path) == [(0, 500)]
        await store.append_logs("j", lines(300, 203))  # a retry, and 3 lines more
        await store.append_logs("j", lines(100, 10))  # a retry of old lines only
        assert await chunk_rows(path) == [(0, 500), (500, 503)]
        assert await store.read_logs("j", after=498, limit=3) == lines(499, 3)
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_read_with_a_limit_decodes_only_the_chunks_it_needs(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: Storage = InMemoryStorage() if kind == "memory" else SQLiteStorage(tmp_path / "j.db")
    await store.open()
    try:
        await store.create([make_job("j")])
        for first in range(0, 1000, 10):
            await store.append_logs("j", lines(first, 10))
        decoded: list[int] = []
        real = chunks_module._decode

        def counting(first_seq: int, data: str, lo: int, hi: int | None) -> list[StoredLine]:
            decoded.append(first_seq)
            return real(first_seq, data, lo, hi)

        monkeypatch.setattr(chunks_module, "_decode", counting)
        assert await store.read_logs("j", after=504, limit=10) == lines(505, 10)
        assert decoded == [500, 510]
        decoded.clear()
        assert await store.read_logs("j", after=989, until=995) == lines(990, 5)
        assert decoded == [990]
    finally:
        await store.close()


def file_bytes(path: Path) -> int:
    """The store's size on disk: the file, and its -wal and -shm files if any are left."""
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))


async def test_sqlite_grows_by_less_than_3_bytes_per_byte_of_seq_output(tmp_path: Path) -> None:
    # seq 1 1400000 as the manager stores it: 10 MB of text, the output cap's worth,
    # in flushes of 500 lines. With a row per line the file took 23 times the text;
    # it takes 0.40 (chunks of 1 KB, zlib-compressed from 6.6 KB of JSON), in about
    # 7 s (3.5 of them making the lines).
    path = tmp_path / "jobs.db"
    store = SQLiteStorage(path)
    await store.open()
    kept = 0
    try:
        await store.create([make_job("j")])
        for batch in seq_batches(1_400_000):
            kept += sum(len(s.line.text) + 1 for s in batch)
            await store.append_logs("j", batch)
        assert await store.log_count("j") == 1_400_000
        [middle] = await store.read_logs("j", after=699_998, limit=1)
        assert middle.line.text == "700000"
    finally:
        await store.close()
    size = file_bytes(path)
    assert size <= 3 * kept, f"{size} bytes for {kept} bytes of text ({size / kept:.2f} each)"


async def test_memory_holds_a_long_output_compactly() -> None:
    # Some 200 bytes a line when it held an object per line; a third of a byte now.
    store = InMemoryStorage()
    await store.create([make_job("j")])
    kept = 0
    for batch in seq_batches(20_000):
        kept += sum(len(s.line.text) + 1 for s in batch)
        await store.append_logs("j", batch)
    held = sum(map(sys.getsizeof, store._logs["j"].chunks))
    assert held <= kept / 2
    assert (await store.read_logs("j", after=19_998))[0].line.text == "20000"
