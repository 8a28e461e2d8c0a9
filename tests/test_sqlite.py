"""SQLiteStorage against files gone wrong: empty, foreign, damaged, read-only, full.

Each test makes the bad file for real: truncated or damaged bytes, permissions a
process really lacks, a disk that is really full. The contract itself is in
``test_storage_contract.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiosqlite
import anyio
import pytest

from containerjobs._errors import StorageError
from containerjobs._models import EnvironmentTemplate
from containerjobs.storage import SQLiteStorage
from containerjobs.storage import _sqlite as sqlite_module
from containerjobs.storage._sqlite import MIGRATIONS, SCHEMA_VERSION
from containerjobs.testing._storage_contract import lines, make_job


@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusing a file with no schema waits 2 s for a creator; 0.3 s will do here."""
    monkeypatch.setattr(sqlite_module, "_BIRTH_GRACE_SECONDS", 0.3)


async def write_store(path: Path) -> None:
    """A store with jobs, lines, a template and a lease, closed (WAL checkpointed)."""
    store = SQLiteStorage(path)
    await store.open()
    try:
        await store.create([make_job(f"j{n:02}", created=n) for n in range(40)])
        await store.append_logs("j01", lines(0, 400))
        await store.save_template(EnvironmentTemplate("base", "A=1"))
        await store.renew_lease("m", 60)
    finally:
        await store.close()


async def assert_refused(path: Path, *fragments: str) -> StorageError:
    store = SQLiteStorage(path)
    with pytest.raises(StorageError) as caught:
        await store.open()
    message = str(caught.value)
    for fragment in (repr(str(path)), *fragments):
        assert fragment in message
    # Refused means not open: no half-open store to use.
    with pytest.raises(StorageError, match="not open"):
        await store.get("j00")
    await store.close()
    return caught.value


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p != path)


# --- files that are not a store -----------------------------------------------------


async def test_a_zero_byte_file_is_refused_and_left_as_it_was(
    tmp_path: Path, short_grace: None
) -> None:
    path = tmp_path / "jobs.db"
    path.touch()
    await assert_refused(
        path, "is empty (0 bytes)", "delete it to start a new store", "restore it from a backup"
    )
    assert path.stat().st_size == 0
    assert siblings(path) == []


async def test_a_sqlite_file_with_no_tables_is_refused(tmp_path: Path, short_grace: None) -> None:
    path = tmp_path / "jobs.db"
    async with aiosqlite.connect(path) as db:
        await db.execute("PRAGMA journal_mode = WAL")
    size = path.stat().st_size
    await assert_refused(path, "is a SQLite database with no tables", "delete it")
    assert path.stat().st_size == size


async def test_a_file_being_born_is_waited_for_not_refused(tmp_path: Path) -> None:
    # Another process's open creates the file (0 bytes) when it connects and migrates
    # it just after: an open that finds the file in between must wait for it.
    path = tmp_path / "jobs.db"
    async with aiosqlite.connect(path, isolation_level=None) as creator:
        assert path.stat().st_size == 0
        store = SQLiteStorage(path)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.open)
                await anyio.sleep(0.3)
                await creator.execute("PRAGMA journal_mode = WAL")
                await creator.execute("BEGIN IMMEDIATE")
                for statements in MIGRATIONS:
                    for statement in statements:
                        if isinstance(statement, str):
                            await creator.execute(statement)
                        else:
                            await statement(creator)
                await creator.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                await creator.execute("COMMIT")
            rows = await creator.execute_fetchall("SELECT value FROM meta")
            assert store.store_id == next(iter(rows))[0]
            await store.create([make_job("j")])
        finally:
            await store.close()


_OPENER = textwrap.dedent(
    """
    import sys, anyio
    from containerjobs import StorageError
    from containerjobs.storage import SQLiteStorage

    async def main() -> None:
        store = SQLiteStorage(sys.argv[1])
        try:
            await store.open()
            print("opened", store.store_id)
        except StorageError as exc:
            print("refused", exc)
        finally:
            await store.close()

    anyio.run(main)
    """
)


_RACER = textwrap.dedent(
    """
    import sys, time, anyio
    from containerjobs.storage import SQLiteStorage

    async def main(folder: str, start: float, rounds: int) -> None:
        for n in range(rounds):
            # Every process opens file n at the same instant, imports done.
            await anyio.sleep(max(0.0, start + n * 0.4 - time.time()))
            store = SQLiteStorage(f"{folder}/new{n}.db")
            await store.open()
            print(store.store_id, flush=True)
            await store.close()

    anyio.run(main, sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
    """
)


async def test_processes_opening_a_new_file_at_once_all_open_it(tmp_path: Path) -> None:
    # The race the refusal of a 0-byte file must not lose: SQLite creates the file
    # when the first process connects, and the others may find it before that one
    # has migrated it. Several rounds, as it is a race.
    processes, rounds = 5, 4
    start = time.time() + 2.0  # after every child has imported containerjobs
    outputs: list[list[str]] = []

    async def race() -> None:
        command = [sys.executable, "-c", _RACER, str(tmp_path), str(start), str(rounds)]
        done = await anyio.run_process(command)
        outputs.append(done.stdout.decode().split())

    async with anyio.create_task_group() as tg:
        for _ in range(processes):
            tg.start_soon(race)
    for n in range(rounds):
        assert len({ids[n] for ids in outputs}) == 1, f"round {n}: {outputs}"


async def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    text = b"notes, not a database " * 200
    path.write_bytes(text)
    refused = await assert_refused(
        path, "file is not a database", "not a SQLite database", "move this file away"
    )
    assert isinstance(refused.__cause__, sqlite3.DatabaseError)
    assert path.read_bytes() == text


async def test_another_programs_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    async with aiosqlite.connect(path) as db:
        await db.execute("CREATE TABLE users (name TEXT)")
        await db.execute("CREATE TABLE orders (id INTEGER)")
        await db.commit()
    await assert_refused(path, "another program (tables orders, users)", "not a containerjobs")
    async with aiosqlite.connect(path) as db:
        rows = await db.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    assert sorted(row[0] for row in rows) == ["orders", "users"]


async def test_a_folder_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.mkdir()
    await assert_refused(path, "is a folder, not a file", repr(str(path / "jobs.db")))


# --- stores that open but cannot be read ----------------------------------------------


def overwrite_page(path: Path, page: int, page_size: int) -> None:
    with path.open("r+b") as file:
        file.seek((page - 1) * page_size)
        file.write(b"\xa5" * page_size)


@pytest.mark.parametrize(
    ("btree", "what"),
    [
        ("jobs", "reading table jobs"),
        ("sqlite_autoindex_jobs_1", "reading a job by its id"),
        ("jobs_by_dispatch", "reading the queue of pending jobs"),
        ("jobs_by_created", "reading the newest jobs"),
        ("log_chunks", "reading table log_chunks"),
        ("sqlite_autoindex_log_chunks_1", "reading the end of a job's lines"),
        ("templates", "reading table templates"),
        ("managers", "reading table managers"),
        ("meta", "reading table meta"),
    ],
)
async def test_a_store_damaged_in_the_middle_is_refused(
    tmp_path: Path, btree: str, what: str
) -> None:
    # The file's first page (the schema and the version) is intact, so SQLite opens
    # it and migration finds nothing to do: before the check, every read of the
    # damaged table failed after an open that said nothing.
    path = tmp_path / "jobs.db"
    await write_store(path)
    assert siblings(path) == []  # all of it is in the file itself
    async with aiosqlite.connect(path) as db:
        (root,) = next(
            iter(
                await db.execute_fetchall(
                    "SELECT rootpage FROM sqlite_master WHERE name = ?", (btree,)
                )
            )
        )
        (page_size,) = next(iter(await db.execute_fetchall("PRAGMA page_size")))
    assert root > 1
    overwrite_page(path, root, page_size)
    refused = await assert_refused(
        path, what, "database disk image is malformed", "restore it from a backup", ".recover"
    )
    assert isinstance(refused.__cause__, sqlite3.DatabaseError)


async def test_a_store_missing_a_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    await write_store(path)
    async with aiosqlite.connect(path) as db:
        await db.execute("DROP TABLE log_chunks")
        await db.commit()
    await assert_refused(path, "no such table: log_chunks", "changed outside containerjobs")


def _without_root_powers() -> list[str]:
    # Root reads and writes whatever the mode bits say; a child without these
    # capabilities is held to them like any user (it stays uid 0, so it still owns
    # the files pytest made, and can run this Python).
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        # The test bed's machine has it (util-linux): a missing tool fails, loudly.
        pytest.fail("running as root, and setpriv (util-linux) is missing to drop root's powers")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]


@contextlib.contextmanager
def mode(path: Path, bits: int) -> Iterator[None]:
    before = stat.S_IMODE(path.stat().st_mode)
    path.chmod(bits)
    try:
        yield
    finally:
        path.chmod(before)


@pytest.mark.parametrize(
    ("read_only", "expected"),
    [
        ("file", "may read the store but not write it"),
        ("folder", "is read-only, and SQLite must create the store's -wal and -shm files"),
    ],
)
async def test_a_store_this_process_cannot_write_is_refused(
    tmp_path: Path, read_only: str, expected: str
) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    path = folder / "jobs.db"
    await write_store(path)
    target = path if read_only == "file" else folder
    with mode(target, 0o555 if read_only == "folder" else 0o444):
        done = await anyio.run_process(
            [*_without_root_powers(), sys.executable, "-c", _OPENER, str(path)]
        )
    out = done.stdout.decode()
    assert out.startswith("refused "), out
    assert repr(str(path)) in out
    assert expected in out


async def test_a_file_this_process_cannot_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    await write_store(path)
    with mode(path, 0o000):
        done = await anyio.run_process(
            [*_without_root_powers(), sys.executable, "-c", _OPENER, str(path)]
        )
    out = done.stdout.decode()
    assert out.startswith("refused "), out
    assert "unable to open database file" in out
    assert "may read and write the file and its folder" in out


# --- a full disk -------------------------------------------------------------------


async def fill(store: SQLiteStorage, job_id: str, start: int) -> tuple[int, StorageError]:
    """Append batches of lines until the store refuses; return the lines stored."""
    seq = start
    while True:
        try:
            await store.append_logs(job_id, lines(seq, 50, prefix="x" * 200))
        except StorageError as exc:
            return seq, exc
        seq += 50
        assert seq < 1_000_000, "the disk never filled"


def assert_full(exc: StorageError, path: Path) -> None:
    message = str(exc)
    assert repr(str(path)) in message
    assert "database or disk is full" in message
    assert "free some space" in message
    assert "works again once there is room" in message
    assert isinstance(exc.__cause__, sqlite3.OperationalError)


async def assert_intact(path: Path, job_id: str, count: int) -> None:
    async with aiosqlite.connect(path) as db:
        assert list(await db.execute_fetchall("PRAGMA integrity_check")) == [("ok",)]
    store = SQLiteStorage(path)
    await store.open()
    try:
        assert await store.log_count(job_id) == count
        assert [s.seq for s in await store.read_logs(job_id)] == list(range(count))
    finally:
        await store.close()


async def test_a_full_store_says_so_stays_readable_and_recovers(tmp_path: Path) -> None:
    # PRAGMA max_page_count makes SQLite answer as on a full disk (SQLITE_FULL),
    # without one: this runs anywhere. The next test fills a real disk.
    path = tmp_path / "jobs.db"
    store = SQLiteStorage(path)
    await store.open()
    try:
        await store.create([make_job("j")])
        db = store._db
        assert db is not None
        (pages,) = next(iter(await db.execute_fetchall("PRAGMA page_count")))
        await db.execute(f"PRAGMA max_page_count = {pages + 20}")
        stored, exc = await fill(store, "j", 0)
        assert stored > 0
        assert_full(exc, path)
        # Reads go on, and nothing half-written shows.
        assert await store.log_count("j") == stored
        assert [job.id for job in await store.list()] == ["j"]
        # Room again: the same store object writes again.
        await db.execute("PRAGMA max_page_count = 1073741823")
        await store.append_logs("j", lines(stored, 50, prefix="x" * 200))
        await store.create([make_job("k")])
    finally:
        await store.close()
    await assert_intact(path, "j", stored + 50)


@contextlib.asynccontextmanager
async def small_disk(folder: Path, size: str) -> AsyncIterator[Path]:
    """A tmpfs of `size` mounted on `folder` for the test, unmounted after it."""
    if os.geteuid() != 0:
        pytest.fail("mounting a small tmpfs to fill needs root, as the test bed runs")
    await anyio.Path(folder).mkdir()
    done = await anyio.run_process(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        with anyio.CancelScope(shield=True):
            done = await anyio.run_process(["umount", str(folder)], check=False)
            if done.returncode != 0:
                # Something still holds a file there: detach it now, freed once closed.
                await anyio.run_process(["umount", "--lazy", str(folder)])


async def test_a_full_disk_says_so_stays_readable_and_recovers(tmp_path: Path) -> None:
    async with small_disk(tmp_path / "disk", "1m") as disk:
        path = disk / "jobs.db"
        # Ballast to delete later: the space that comes back.
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * 256 * 1024)
        store = SQLiteStorage(path)
        await store.open()
        try:
            await store.create([make_job("j")])
            stored, exc = await fill(store, "j", 0)
            assert stored > 0
            assert_full(exc, path)
            assert await store.log_count("j") == stored
            # Another process's open of a store on the full disk still works: it
            # only reads, and its trial write is rolled back.
            other = SQLiteStorage(path)
            await other.open()
            assert await other.log_count("j") == stored
            await other.close()

            ballast.unlink()
            await store.append_logs("j", lines(stored, 50, prefix="x" * 200))
            await store.create([make_job("k")])
        finally:
            await store.close()
        await assert_intact(path, "j", stored + 50)


async def test_a_new_store_on_a_full_disk_says_so(tmp_path: Path, short_grace: None) -> None:
    async with small_disk(tmp_path / "disk", "256k") as disk:
        ballast = disk / "ballast"
        with contextlib.suppress(OSError):  # fills it: ENOSPC ends the write
            ballast.write_bytes(b"\0" * 512 * 1024)
        path = disk / "jobs.db"
        refused = await assert_refused(path, "database or disk is full", "free some space")
        assert isinstance(refused.__cause__, sqlite3.OperationalError)
        # The file its connect created stays, 0 bytes: once there is room, it is
        # refused as empty, with the fix in the message.
        ballast.unlink()
        await assert_refused(path, "is empty (0 bytes)", "delete it to start a new store")
        path.unlink()
        store = SQLiteStorage(path)
        await store.open()
        await store.close()
