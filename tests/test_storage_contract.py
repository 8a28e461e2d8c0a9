"""The Storage contract, run against the built-in backends exactly as a backend of
anyone else's runs it: a subclass of `containerjobs.testing.StorageContract` with a
factory and capability flags.

Tests after the contract are about SQLite alone (sharing a file between processes,
reopening it, its schema and migrations).
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import textwrap
import uuid
from datetime import timedelta
from pathlib import Path

import aiosqlite
import anyio
import attrs
import pytest

from containerjobs._errors import StorageError
from containerjobs._models import EnvironmentTemplate, Job, JobStatus, LogLine
from containerjobs.storage import (
    InMemoryStorage,
    SQLiteStorage,
    StoredLine,
    dump_job,
    format_datetime,
    parse_datetime,
)
from containerjobs.storage._sqlite import MIGRATIONS, SCHEMA_VERSION
from containerjobs.testing import StorageContract
from containerjobs.testing._storage_contract import (
    NOW,
    at,
    first,
    full_job,
    lines,
    listed,
    make_job,
)

from .strategies import T0

# --- the contract ------------------------------------------------------------------


class TestInMemoryStorage(StorageContract):
    persistent = False
    shared_across_processes = False

    async def make_storage(self, folder: Path) -> InMemoryStorage:
        return InMemoryStorage()


class TestSQLiteStorage(StorageContract):
    reads_statuses = True
    persistent = True
    shared_across_processes = True

    async def make_storage(self, folder: Path) -> SQLiteStorage:
        return SQLiteStorage(folder / "jobs.db")

    async def make_shared(self, folder: Path, count: int) -> list[SQLiteStorage]:
        return [SQLiteStorage(folder / "jobs.db") for _ in range(count)]


# --- SQLite alone ------------------------------------------------------------------


async def test_sqlite_leases_are_shared_and_stored_as_utc_text(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    first, second = SQLiteStorage(path), SQLiteStorage(path)
    await first.open()
    await second.open()
    try:
        await first.renew_lease("m1", 30, info="build-3 pid 1234")
        await second.renew_lease("m2", 60)
        assert await first.live_managers() == await second.live_managers() == {"m1", "m2"}
        await second.drop_lease("m1")
        assert await first.live_managers() == {"m2"}
        await first.renew_lease("m1", 30, info="build-3 pid 1234")
    finally:
        await first.close()
        await second.close()
    async with aiosqlite.connect(path) as db:
        rows = list(
            await db.execute_fetchall(
                "SELECT manager_id, expires_at, renewed_at, info FROM managers ORDER BY manager_id"
            )
        )
    assert [(row[0], row[3]) for row in rows] == [("m1", "build-3 pid 1234"), ("m2", "")]
    for _, expires_at, renewed_at, _ in rows:
        assert expires_at.endswith("+00:00") and renewed_at.endswith("+00:00")
        assert expires_at > renewed_at  # as text, which is how the query compares them
    expires, renewed = parse_datetime(rows[0][1]), parse_datetime(rows[0][2])
    assert expires - renewed == timedelta(seconds=30)


async def test_sqlite_store_id_belongs_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first, second = SQLiteStorage(path), SQLiteStorage(path)
    with pytest.raises(StorageError, match="open"):
        first.store_id  # noqa: B018
    await first.open()
    await second.open()
    try:
        assert first.store_id == second.store_id
    finally:
        await first.close()
        await second.close()
    assert first.store_id == second.store_id  # still known once closed

    again = SQLiteStorage(path)
    await again.open()
    await again.close()
    assert again.store_id == first.store_id

    elsewhere = SQLiteStorage(tmp_path / "other.db")
    await elsewhere.open()
    await elsewhere.close()
    assert elsewhere.store_id != first.store_id


async def test_sqlite_stores_opening_a_new_file_at_once_agree_on_its_id(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    stores = [SQLiteStorage(path) for _ in range(6)]
    try:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.open)
        assert len({store.store_id for store in stores}) == 1
    finally:
        for store in stores:
            await store.close()


_V1_INSERT = (
    "INSERT INTO jobs (id, status, host, owner, priority, created_at, completed_at, record)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


async def write_old_file(path: Path, version: int, jobs: list[Job]) -> None:
    """A file as containerjobs wrote it at schema `version` (1 to 4), with `jobs`."""
    async with aiosqlite.connect(path, isolation_level=None) as db:
        for statements in MIGRATIONS[:version]:
            for statement in statements:
                await db.execute(statement)
        await db.execute(f"PRAGMA user_version = {version}")
        for job in jobs:
            completed = None if job.completed_at is None else format_datetime(job.completed_at)
            await db.execute(
                _V1_INSERT,
                (job.id, job.status.value, job.host, job.owner, job.spec.priority,
                 format_datetime(job.created_at), completed, dump_job(job)),
            )


async def test_sqlite_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    # A file written before leases and the store id existed: its jobs stay, and it
    # gains the new tables and an id.
    path = tmp_path / "v1.db"
    job = full_job("old", ["run"])
    running = make_job("r", status=JobStatus.RUNNING, host="h", owner="m0")
    await write_old_file(path, 1, [job, running])
    store = SQLiteStorage(path)
    await store.open()
    try:
        assert await store.get("old") == job
        assert await store.active_jobs(owner="m0") == [running]
        assert uuid.UUID(hex=store.store_id).version == 4
        await store.renew_lease("m1", 60)
        assert await store.live_managers() == {"m1"}
    finally:
        await store.close()
    async with aiosqlite.connect(path) as db:
        (version,) = next(iter(await db.execute_fetchall("PRAGMA user_version")))
    assert version == SCHEMA_VERSION == 5


async def test_sqlite_a_version_2_file_gains_the_queue_columns(tmp_path: Path) -> None:
    # The pins and retry times of jobs queued before claim_next filtered on them are
    # copied out of their records, so the queue behaves the same after the upgrade.
    path = tmp_path / "v2.db"
    later = NOW + timedelta(seconds=30)
    await write_old_file(
        path,
        2,
        [
            make_job("gpu", priority=2, pinned="gpu"),
            make_job("retry", priority=1, retry_at=later),
            make_job("plain"),
            full_job("done", ["run"]),
        ],
    )
    store = SQLiteStorage(path)
    await store.open()
    await store.close()
    async with aiosqlite.connect(path) as db:
        rows = {
            row[0]: (row[1], row[2])
            for row in await db.execute_fetchall("SELECT id, pinned_host, retry_at FROM jobs")
        }
    assert rows == {
        "gpu": ("gpu", None),
        "retry": (None, format_datetime(later)),
        "plain": (None, None),
        "done": ("gpu-1", format_datetime(at(61))),
    }
    await store.open()
    try:
        claimed = await store.claim_next("m", {"cpu": 5}, first, now=NOW)
        assert [job.id for job in claimed] == ["plain"]
        claimed = await store.claim_next("m", {"gpu": 1, "cpu": 5}, first, now=later)
        assert [(job.id, job.host) for job in claimed] == [("gpu", "gpu"), ("retry", "cpu")]
    finally:
        await store.close()


# Lines as version 3 stored them, a row each: every kind of character, both streams,
# times out of order and in another zone than UTC.
_OLD_LINES = [
    StoredLine(0, LogLine("stdout", "plain", at(1))),
    StoredLine(1, LogLine("stderr", 'two\nlines, a "quote" and a \\', at(0.5))),
    StoredLine(2, LogLine("stdout", "", at(0.5))),
    StoredLine(3, LogLine("stdout", "nul\x00 tab\t häßlich ✓ \U0001f600", at(2).astimezone())),
    StoredLine(4, LogLine("stderr", "\x1b[31mred\x1b[0m\r", at(3))),
]


async def test_sqlite_a_version_3_file_keeps_its_lines_as_chunks(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    await write_old_file(path, 3, [make_job("j"), make_job("k")])
    async with aiosqlite.connect(path) as db:
        await db.executemany(
            "INSERT INTO logs (job_id, seq, stream, ts, text) VALUES (?, ?, ?, ?, ?)",
            [
                (job_id, stored.seq, stored.line.stream, format_datetime(stored.line.timestamp),
                 stored.line.text)
                for job_id in ("j", "k")
                for stored in _OLD_LINES
            ],
        )
        await db.commit()
    store = SQLiteStorage(path)
    await store.open()
    try:
        assert await store.read_logs("j") == _OLD_LINES
        assert await store.read_logs("k", after=1, until=4) == _OLD_LINES[2:4]
        assert await store.log_count("j") == 5
        # New lines follow on, in a chunk of their own; a retry of old ones is ignored.
        await store.append_logs("j", lines(3, 4))
        assert await store.read_logs("j") == [*_OLD_LINES, *lines(5, 2)]
        assert await store.delete(["k"]) == 1
    finally:
        await store.close()
    async with aiosqlite.connect(path) as db:
        (version,) = next(iter(await db.execute_fetchall("PRAGMA user_version")))
        tables = {row[0] for row in await db.execute_fetchall("SELECT name FROM sqlite_master")}
        chunks = list(
            await db.execute_fetchall("SELECT job_id, first_seq, end_seq FROM log_chunks")
        )
    assert version == SCHEMA_VERSION
    assert "logs" not in tables
    # One chunk per old line, as the migration made them, then the one new chunk.
    assert chunks == [("j", 0, 1), ("j", 1, 2), ("j", 2, 3), ("j", 3, 4), ("j", 4, 5), ("j", 5, 7)]


async def test_sqlite_a_version_4_file_moves_output_out_of_its_records(tmp_path: Path) -> None:
    # Up to version 4 a record held the job's output; it moves to job_output, and
    # reads return the jobs as they were.
    path = tmp_path / "v4.db"
    loud = full_job("loud", ["run"])
    odd = attrs.evolve(
        make_job("odd", status=JobStatus.COMPLETED, created=1, completed=2),
        stdout="nul\x00 \ud800 häßlich ✓\n",
        stderr="",
        cpu_usage_percent=float("inf"),  # Python's json writes Infinity, SQLite's refuses it
    )
    quiet = make_job("quiet", created=2)
    await write_old_file(path, 4, [loud, odd, quiet])
    store = SQLiteStorage(path)
    await store.open()
    try:
        assert await store.get("loud") == loud
        assert await store.get("odd") == odd
        assert await store.get("quiet") == quiet
        assert await store.list() == [listed(quiet), listed(loud), listed(odd)]
    finally:
        await store.close()
    async with aiosqlite.connect(path) as db:
        (version,) = next(iter(await db.execute_fetchall("PRAGMA user_version")))
        records = dict(await db.execute_fetchall("SELECT id, record FROM jobs"))
        kept = [row[0] for row in await db.execute_fetchall("SELECT job_id FROM job_output")]
    assert version == SCHEMA_VERSION == 5
    assert sorted(kept) == ["loud", "odd"]  # a row only for a job with output
    assert '"stdout"' not in records["loud"] and '"stdout"' not in records["odd"]
    assert len(records["loud"]) < len(dump_job(loud))


async def test_sqlite_a_write_that_keeps_the_output_writes_only_the_record(
    tmp_path: Path,
) -> None:
    # What a write puts in the WAL file (emptied before each) is what it wrote: a move
    # of a job with 5 MB of output writes a page or two, unless the output changes.
    path = tmp_path / "jobs.db"
    wal = anyio.Path(f"{path}-wal")
    big = "".join(f"line {n:07}\n" for n in range(400_000))
    job = attrs.evolve(make_job("j", status=JobStatus.RUNNING, host="h", owner="m"), stdout=big)
    store = SQLiteStorage(path)
    await store.open()
    try:
        await store.create([job])
        [seen] = await store.list()

        async def written(new: Job) -> int:
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            assert (await wal.stat()).st_size == 0
            assert await store.compare_and_set(
                new, expected=JobStatus.RUNNING, expected_owner="m"
            )
            return (await wal.stat()).st_size

        listed_write = await written(attrs.evolve(seen, error="listed"))
        same_write = await written(attrs.evolve(job, error="same output"))
        changed_write = await written(attrs.evolve(job, stdout=big + "one more\n"))
        assert (await store.get("j")).stdout == big + "one more\n"
    finally:
        await store.close()
    print(f"WAL bytes: listed {listed_write}, same {same_write}, changed {changed_write}")
    assert listed_write < 64 * 1024, listed_write
    assert same_write < 64 * 1024, same_write
    assert changed_write > len(big), changed_write  # the measure sees an output written


_CLAIMER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime

    import anyio

    from containerjobs.storage import SQLiteStorage

    async def main() -> None:
        store = SQLiteStorage(sys.argv[1])
        await store.open()
        won = 0
        try:
            # One at a time, so the processes' claims interleave.
            for _ in range(10):
                claimed = await store.claim_next(
                    sys.argv[2], {"shared": 5}, lambda job, loads: "shared",
                    now=datetime.now(UTC), limit=1,
                )
                won += len(claimed)
        finally:
            await store.close()
        print(won)

    anyio.run(main)
    """
)


async def test_sqlite_claims_from_several_processes_respect_max_active(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    store = SQLiteStorage(path)
    await store.open()
    try:
        await store.create([make_job(f"j{n:02}", created=n) for n in range(40)])
        results: list[int] = []

        async def run_one(n: int) -> None:
            done = await anyio.run_process([sys.executable, "-c", _CLAIMER, str(path), f"m{n}"])
            results.append(int(done.stdout))

        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(run_one, n)
        assert sum(results) == 5
        assert await store.count_active() == {"shared": 5}
        claimed = await store.list(status=JobStatus.LAUNCHING)
        assert sorted(job.id for job in claimed) == [f"j{n:02}" for n in range(5)]
    finally:
        await store.close()


async def test_sqlite_a_closed_store_object_opens_again(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStorage(path)
    await store.open()
    await store.create([make_job("j")])
    await store.append_logs("j", lines(0, 7))
    await store.save_template(EnvironmentTemplate("t", "A=1", "d"))
    await store.close()
    await store.close()  # idempotent

    await store.open()
    try:
        assert await store.log_count("j") == 7
        assert await store.get_template("t") == EnvironmentTemplate("t", "A=1", "d")
        assert [job.id for job in await store.list(status=JobStatus.PENDING)] == ["j"]
    finally:
        await store.close()


async def test_sqlite_schema_is_versioned_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStorage(path)
    await store.open()
    await store.close()
    async with aiosqlite.connect(path) as db:
        (version,) = next(iter(await db.execute_fetchall("PRAGMA user_version")))
        (mode,) = next(iter(await db.execute_fetchall("PRAGMA journal_mode")))
    assert SCHEMA_VERSION >= 1
    assert version == SCHEMA_VERSION
    assert mode == "wal"


async def test_sqlite_wal_file_is_cut_back_after_a_big_write(tmp_path: Path) -> None:
    # A job's final record holds its kept output (10 MB by default): the WAL file grew
    # to that transaction's size and kept it for as long as the store stayed open.
    path = tmp_path / "jobs.db"
    wal = tmp_path / "jobs.db-wal"
    store = SQLiteStorage(path)
    await store.open()
    try:
        job = make_job("j", status=JobStatus.RUNNING, host="h", owner="m")
        await store.create([job])
        ended = job.advance(JobStatus.COMPLETED, stdout="1234567\n" * 1_000_000)
        assert await store.compare_and_set(ended, expected=JobStatus.RUNNING, expected_owner="m")
        assert wal.stat().st_size > 8_000_000
        await store.renew_lease("m", 30)  # the next write restarts the WAL
        assert wal.stat().st_size <= 4 << 20
    finally:
        await store.close()


async def test_sqlite_refuses_a_file_from_a_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with aiosqlite.connect(path) as db:
        await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = SQLiteStorage(path)
    with pytest.raises(StorageError, match="newer"):
        await store.open()
    await store.close()


async def test_sqlite_needs_an_existing_folder(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "jobs.db"
    store = SQLiteStorage(path)
    with pytest.raises(StorageError, match="missing"):
        await store.open()
    await store.close()


async def test_sqlite_refuses_use_before_open(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "jobs.db")
    with pytest.raises(StorageError, match="not open"):
        await store.get("j")
    await store.close()


async def test_sqlite_driver_errors_become_storage_errors(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"this is not a database, only text long enough to look like one" * 20)
    store = SQLiteStorage(path)
    with pytest.raises(StorageError, match=r"jobs\.db") as caught:
        await store.open()
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    await store.close()


async def test_sqlite_an_unreadable_record_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStorage(path)
    await store.open()
    try:
        await store.create([make_job("j")])
        async with aiosqlite.connect(path) as db:
            await db.execute("UPDATE jobs SET record = '{\"id\": 1}'")
            await db.commit()
        with pytest.raises(StorageError, match="cannot be read"):
            await store.get("j")
    finally:
        await store.close()


async def test_sqlite_an_unstorable_value_is_a_storage_error(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "jobs.db")
    await store.open()
    try:
        job = make_job("huge")
        # JobSpec refuses such a priority; force one in to stand for any value the
        # driver cannot store.
        object.__setattr__(job.spec, "priority", 2**70)
        with pytest.raises(StorageError):
            await store.create([job])
        assert await store.list() == []
    finally:
        await store.close()


async def test_sqlite_in_memory_path_works() -> None:
    store = SQLiteStorage(":memory:")
    await store.open()
    try:
        await store.create([make_job("j")])
        assert (await store.get("j")).id == "j"
    finally:
        await store.close()


def test_sqlite_datetimes_sort_as_text() -> None:
    # The created_at column orders by text; a sub-second and a whole second, or
    # different offsets, must still sort by instant. (Guards format changes.)
    instants = [T0, T0 + timedelta(microseconds=1), T0 + timedelta(seconds=1)]
    texts = [format_datetime(i) for i in instants]
    assert texts == sorted(texts)
