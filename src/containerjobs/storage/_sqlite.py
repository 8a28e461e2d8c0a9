"""`SQLiteStorage`: one SQLite file, shareable by several managers in several processes."""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import aiosqlite
import anyio

from .._errors import JobNotFound, StorageError, TemplateNotFound
from .._models import EnvironmentTemplate, Job, JobStatus
from ._base import ChooseHost, StoredLine
from ._chunks import LineWindow, encode_chunk, pack_chunk
from ._claim import ClaimRound
from ._codec import (
    as_utc,
    check_limit,
    check_log_sequence,
    decode_output,
    dump_record,
    encode_output,
    format_datetime,
    job_output,
    lease_expiry,
    load_record,
    status_filter,
    store_now,
    with_output,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStorage"]

# A step of a migration: SQL, or a coroutine given the connection (inside the
# migration's transaction).
MigrationStep = str | Callable[[aiosqlite.Connection], Awaitable[None]]

# The records that still hold an output, as dump_job wrote every record up to schema
# version 4: all but those whose output is empty, which read the same either way.
_EMPTY_OUTPUT = '"stdout":"","stderr":""'


async def _move_output_out(db: aiosqlite.Connection) -> None:
    # Each record that holds an output loses it to job_output. In Python, not SQL:
    # SQLite's JSON functions refuse what Python's json writes for an infinite or NaN
    # float (before 3.42), and would each rewrite a record in their own style; this
    # rewrites it as dump_record would have written it. One record at a time, as a
    # record may hold 20 MB of output. The filter finds no more than the records with
    # output: one whose output is empty keeps its two empty keys, which reads ignore.
    rows = await db.execute_fetchall(
        "SELECT id FROM jobs WHERE instr(record, ?) = 0", (_EMPTY_OUTPUT,)
    )
    for (job_id,) in rows:
        (text,) = next(iter(await db.execute_fetchall(
            "SELECT record FROM jobs WHERE id = ?", (job_id,)
        )))
        record = json.loads(text)
        stdout, stderr = record.pop("stdout", "") or "", record.pop("stderr", "") or ""
        await db.execute(
            "UPDATE jobs SET record = ? WHERE id = ?",
            (json.dumps(record, separators=(",", ":")), job_id),
        )
        if stdout or stderr:
            await db.execute(
                "INSERT INTO job_output (job_id, stdout, stderr) VALUES (?, ?, ?)",
                (job_id, encode_output(stdout), encode_output(stderr)),
            )


# Migration n (counting from 1) takes a file from user_version n-1 to n. Append only:
# a released entry is never edited, since files in the field have already run it.
MIGRATIONS: tuple[tuple[MigrationStep, ...], ...] = (
    (
        # The columns beside `record` are copies of its fields that queries filter or
        # sort on; `record` (the whole Job as JSON) is what a read returns.
        # created_at/completed_at hold fixed-width UTC ISO text, which sorts by time.
        """
        CREATE TABLE jobs (
            id           TEXT PRIMARY KEY NOT NULL,
            status       TEXT NOT NULL,
            host         TEXT,
            owner        TEXT,
            priority     INTEGER NOT NULL,
            created_at   TEXT NOT NULL,
            completed_at TEXT,
            record       TEXT NOT NULL
        )
        """,
        # priority DESC in the index matches the queue's ORDER BY (claim_next's)
        # exactly, so the queue is read in index order without sorting.
        "CREATE INDEX jobs_by_dispatch ON jobs (status, priority DESC, created_at, id)",
        "CREATE INDEX jobs_by_host ON jobs (host, status)",
        "CREATE INDEX jobs_by_created ON jobs (created_at, id)",
        "CREATE INDEX jobs_by_completed ON jobs (completed_at)",
        # WITHOUT ROWID: rows live in primary-key order, so a job's lines are read
        # from one contiguous range of the b-tree.
        """
        CREATE TABLE logs (
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            seq    INTEGER NOT NULL,
            stream TEXT NOT NULL,
            ts     TEXT NOT NULL,
            text   TEXT NOT NULL,
            PRIMARY KEY (job_id, seq)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE templates (
            name        TEXT PRIMARY KEY NOT NULL,
            text        TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT ''
        )
        """,
    ),
    (
        # A manager is alive while now < expires_at; both times are fixed-width UTC
        # text like the jobs' datetimes, so SQL compares them as text. `info` only
        # helps a person looking at the file tell the managers apart.
        """
        CREATE TABLE managers (
            manager_id TEXT PRIMARY KEY NOT NULL,
            expires_at TEXT NOT NULL,
            renewed_at TEXT NOT NULL,
            info       TEXT NOT NULL DEFAULT ''
        )
        """,
        "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
        # The store's id is made here, in SQL, so it is written in the same transaction
        # as the table (and as the version bump): no file has a meta table without an
        # id, and of several processes opening a new file only the one that runs this
        # migration makes one. It is a uuid4 in hex: 32 random hex digits except the
        # version digit (index 12, always 4) and the variant digit (index 16, 8 to b).
        """
        INSERT INTO meta (key, value) VALUES ('store_id', lower(
            hex(randomblob(6)) || '4' || substr(hex(randomblob(2)), 2)
            || substr('89ab', 1 + (random() & 3), 1) || substr(hex(randomblob(8)), 2)
        ))
        """,
    ),
    (
        # claim_next filters the queue on these in SQL, so that jobs pinned to a full
        # host, or waiting to be retried, cost no decoding of their record however
        # many there are. Copies of the record's spec.host and retry_at, like the
        # other columns beside it; retry_at is fixed-width UTC text as they are.
        "ALTER TABLE jobs ADD COLUMN pinned_host TEXT",
        "ALTER TABLE jobs ADD COLUMN retry_at TEXT",
        # The record holds them as JSON already (a JSON null becomes NULL).
        """
        UPDATE jobs SET pinned_host = json_extract(record, '$.spec.host'),
                        retry_at = json_extract(record, '$.retry_at')
        """,
    ),
    (
        # A job's lines as chunks (see _chunks.py), one row per append_logs call:
        # a row per line made the file grow by 170 bytes for a 7-byte line. end_seq
        # is the seq after the chunk's last line; data is the chunk as pack_chunk
        # made it (zlib-compressed JSON, or JSON text when that is shorter).
        #
        # A rowid table, unlike the old one: a WITHOUT ROWID table's cell keeps at
        # most 1002 bytes of a 4 KB page in the b-tree and moves the rest to overflow
        # pages of its own, and a packed chunk of 500 short lines is about 1 KB. For
        # seq's output that costs 1.30 bytes per byte of text, against 0.40 here.
        """
        CREATE TABLE log_chunks (
            job_id    TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            first_seq INTEGER NOT NULL,
            end_seq   INTEGER NOT NULL,
            data      BLOB NOT NULL,
            PRIMARY KEY (job_id, first_seq)
        )
        """,
        # Each old line becomes a chunk of one (about the size of its old row), its
        # time kept as the ISO text it was, which the chunks' reader takes. Grouping
        # lines into chunks here would need ordered aggregates (SQLite 3.44).
        """
        INSERT INTO log_chunks (job_id, first_seq, end_seq, data)
        SELECT job_id, seq, seq + 1, json_object(
            's', CASE stream WHEN 'stdout' THEN 'o' ELSE 'e' END,
            't0', ts, 'd', json_array(), 'x', json_array(text))
        FROM logs
        """,
        "DROP TABLE logs",
    ),
    (
        # A job's kept output apart from its record, a row only for a job that has
        # some: the record is written at every status move and read by every listing,
        # the output (up to 10 MiB a stream) written once, at the end, and read only
        # by get. In the record, a listing of 20 jobs with 4 MiB of output each read
        # and parsed 160 MiB of JSON; and each write of a record rewrote its output.
        #
        # The UTF-8 bytes (encode_output), not text: no str is refused (a lone
        # surrogate, which text cannot bind). Not compressed: 20 MiB take some 60 ms
        # to deflate, on the event loop, and every get would pay to inflate them; the
        # log chunks beside them are the compressed copy. A rowid table, as
        # log_chunks, for values far larger than a page.
        """
        CREATE TABLE job_output (
            job_id TEXT PRIMARY KEY NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            stdout BLOB NOT NULL,
            stderr BLOB NOT NULL
        )
        """,
        _move_output_out,
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# Ids per "IN (...)" list: well under SQLite's limit of host parameters.
_IN_CHUNK = 500
# Log chunks read_logs fetches at a time: a follower's page of 1000 lines is two or
# three chunks of a busy job, or dozens of a quiet one's (a chunk per flush).
_READ_CHUNKS = 32
# About what SQLite's automatic checkpoint lets the WAL file grow to (1000 pages).
_WAL_LIMIT_BYTES = 4 << 20
# Long enough to ride out another process's write transaction (they are all short),
# short enough that a stuck lock surfaces as an error rather than a hang.
_BUSY_TIMEOUT_SECONDS = 10.0
_OPEN_ATTEMPTS = 6
# How long open() waits for another process to give a file with no schema one. Such a
# process creates the file (0 bytes) when it connects and migrates it a few
# milliseconds later; a file that stays without a schema for this long is not being born.
_BIRTH_GRACE_SECONDS = 2.0
_BIRTH_POLL_SECONDS = 0.1

# What open() reads to prove the store usable: a row of each table, and a path down
# the indexes a manager reads through most (a job by id, the queue, the newest jobs).
# Cheap on a file of any size, unlike an integrity check, which reads all of it; it
# catches a file whose tables were damaged or dropped, which would otherwise open and
# then fail every read. The columns are named so that a table changed by hand fails
# here too.
_HEALTH_READS = (
    (
        "table jobs",
        "SELECT id, status, host, owner, priority, created_at, completed_at, pinned_host,"
        " retry_at, record FROM jobs LIMIT 1",
    ),
    ("a job by its id", "SELECT record FROM jobs WHERE id = ''"),
    ("table job_output", "SELECT job_id, stdout, stderr FROM job_output LIMIT 1"),
    ("a job's output", "SELECT stdout, stderr FROM job_output WHERE job_id = ''"),
    (
        "the queue of pending jobs",
        f"SELECT record FROM jobs WHERE status = '{JobStatus.PENDING.value}'"
        " ORDER BY priority DESC, created_at, id LIMIT 1",
    ),
    ("the newest jobs", "SELECT record FROM jobs ORDER BY created_at DESC, id DESC LIMIT 1"),
    ("table log_chunks", "SELECT job_id, first_seq, end_seq, data FROM log_chunks LIMIT 1"),
    (
        "the end of a job's lines",
        "SELECT end_seq FROM log_chunks WHERE job_id = '' ORDER BY first_seq DESC LIMIT 1",
    ),
    ("table templates", "SELECT name, text, description FROM templates LIMIT 1"),
    ("table managers", "SELECT manager_id, expires_at, renewed_at, info FROM managers LIMIT 1"),
    ("table meta", "SELECT key, value FROM meta LIMIT 1"),
)

# Status literals written into SQL: they are our own enum values, never user input.
_ACTIVE_SQL = "(" + ", ".join(f"'{s.value}'" for s in JobStatus if s.is_active) + ")"
_TERMINAL_SQL = "(" + ", ".join(f"'{s.value}'" for s in JobStatus if s.is_terminal) + ")"

_COLUMNS = (
    "status",
    "host",
    "owner",
    "priority",
    "created_at",
    "completed_at",
    "pinned_host",
    "retry_at",
    "record",
)
_SET_JOB = ", ".join(f"{column} = ?" for column in _COLUMNS)
_INSERT_JOB = (
    f"INSERT INTO jobs (id, {', '.join(_COLUMNS)}) VALUES (?, {', '.join('?' * len(_COLUMNS))})"
)
# How many pending rows claim_next reads at a time. It stops at the first page that
# fills every free slot, the usual case; more pages are read only past jobs that no
# free host may take.
_CLAIM_PAGE = 64

# What the driver raises: its own errors, plus the two it raises while binding a value
# SQLite cannot hold (an int beyond 64 bits, a str with lone surrogates).
_DRIVER_ERRORS = (sqlite3.Error, OverflowError, UnicodeEncodeError)


def _optional_datetime(value: datetime | None) -> str | None:
    return None if value is None else format_datetime(value)


def _job_columns(job: Job) -> tuple[Any, ...]:
    # In the order of _COLUMNS.
    return (
        job.status.value,
        job.host,
        job.owner,
        job.spec.priority,
        format_datetime(job.created_at),
        _optional_datetime(job.completed_at),
        job.spec.host,
        _optional_datetime(job.retry_at),
        dump_record(job),
    )


# A job's record with its output (NULLs when it has none), as get reads it.
_WITH_OUTPUT = (
    "SELECT record, stdout, stderr FROM jobs LEFT JOIN job_output ON job_output.job_id = jobs.id"
)


def _load_full(record: str, stdout: bytes | None, stderr: bytes | None) -> Job:
    return load_record(record, decode_output(stdout), decode_output(stderr))


def _load_listed(record: str) -> Job:
    return load_record(record, None, None)


async def _write_output(db: aiosqlite.Connection, job: Job) -> None:
    """Store the job's output as `job` holds it, inside the caller's transaction: a
    stream that is not loaded keeps what is stored, an unchanged one is not written."""
    stdout, stderr = job_output(job)
    if stdout is None and stderr is None:
        return  # a listed job: its output stays as it is
    if not stdout and not stderr:
        if stdout is not None and stderr is not None:
            # The usual move of a job that has printed nothing yet: no row to find.
            await db.execute("DELETE FROM job_output WHERE job_id = ?", (job.id,))
        else:
            # One stream blanked, the other not loaded (no caller of ours does this).
            column = "stdout" if stdout is not None else "stderr"
            await db.execute(
                f"UPDATE job_output SET {column} = X'' WHERE job_id = ? AND {column} != X''",
                (job.id,),
            )
        return
    out = None if stdout is None else encode_output(stdout)
    err = None if stderr is None else encode_output(stderr)
    # The WHERE leaves alone a row that would not change: none of its pages is written
    # again. (SQLite compares the bytes, a memcmp: 1 ms for 20 MB.)
    await db.execute(
        "INSERT INTO job_output (job_id, stdout, stderr)"
        " VALUES (?1, COALESCE(?2, X''), COALESCE(?3, X''))"
        " ON CONFLICT (job_id) DO UPDATE SET"
        " stdout = COALESCE(?2, stdout), stderr = COALESCE(?3, stderr)"
        " WHERE stdout IS NOT COALESCE(?2, stdout) OR stderr IS NOT COALESCE(?3, stderr)",
        (job.id, out, err),
    )


class SQLiteStorage:
    """A job store in one SQLite file, shared by the managers of one machine.

    The file is created on first `open` (its folder must exist, `StorageError`
    otherwise), and its schema is versioned and migrated as it opens. It runs in WAL
    mode, so readers and the writer do not block each other. Several managers, in
    several processes on the same machine, may share the file: claiming a job is
    atomic, each host's ``max_concurrent_jobs`` holds across all of them, and the
    running jobs of a manager that died are adopted by another once its lease runs
    out. Leaving ``async with`` detaches the jobs still running (``on_exit`` is
    ``"detach"`` by default), for the next manager on the file to adopt. Do not put
    the file on a network file system: WAL needs every user on one machine.

    ```python
    async with JobManager(storage=SQLiteStorage("/srv/jobs.db")) as manager:
        ...
    ```

    Args:
        path: the file's path (``":memory:"`` for a private database that lives as
            long as the store is open).
    """

    # One aiosqlite connection (one worker thread) per store object. Many tasks share
    # it, so every use of it holds `_lock`: otherwise a task's statement could land
    # inside another task's open transaction and be rolled back with it. The lock
    # costs nothing real, as the connection's thread runs one statement at a time.
    #
    # Across processes SQLite itself serialises writers; every write is either one
    # statement or a BEGIN IMMEDIATE transaction, so none can interleave with another.

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()
        # Read from the file by open(); kept after close(), as it cannot change.
        self._store_id: str | None = None

    @property
    def persistent(self) -> bool:
        return True

    @property
    def store_id(self) -> str:
        # Note that on Python 3.11, isinstance(store, Storage) reads every member of
        # the protocol, this one included, so it raises on a store not yet opened.
        if self._store_id is None:
            raise StorageError(
                f"SQLite store {self._path!r} has no store_id until it is opened: call open() first"
            )
        return self._store_id

    @property
    def path(self) -> str:
        return self._path

    def __repr__(self) -> str:
        return f"SQLiteStorage({self._path!r})"

    # --- connection plumbing -----------------------------------------------------

    @contextlib.asynccontextmanager
    async def _translate(self, action: str) -> AsyncIterator[None]:
        # The one place where driver errors become ours.
        try:
            yield
        except _DRIVER_ERRORS as exc:
            hint = self._hint(exc) if isinstance(exc, sqlite3.Error) else ""
            raise StorageError(
                f"SQLite store {self._path!r}: {action} failed: {exc}{hint}"
            ) from exc

    def _hint(self, exc: sqlite3.Error) -> str:
        # SQLite's messages say what went wrong, not what to do about it.
        path = self._path
        message = str(exc)
        # Absent on the few errors the sqlite3 module raises itself.
        code: int | None = getattr(exc, "sqlite_errorcode", None)
        primary = None if code is None else code & 0xFF
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in message:
            return " (another connection holds the lock)"
        if primary == sqlite3.SQLITE_FULL:
            return (
                " (the disk holding the store is full: free some space on it; what was"
                " stored before is intact, and the store works again once there is room)"
            )
        if code == sqlite3.SQLITE_READONLY_DIRECTORY:
            folder = os.path.dirname(os.path.abspath(path))
            return (
                f" (its folder {folder!r} is read-only, and SQLite must create the store's"
                " -wal and -shm files beside it: give this process write access to the folder)"
            )
        if primary in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
            return (
                " (this process may read the store but not write it: give it write access"
                " to the file, its folder, and its -wal and -shm files if they exist)"
            )
        if primary == sqlite3.SQLITE_CANTOPEN:
            return (
                " (check that this process may read and write the file and its folder,"
                " and that the path is not a folder)"
            )
        if primary == sqlite3.SQLITE_NOTADB:
            return (
                " (the file is not a SQLite database, so not a containerjobs store: give"
                " the path of a store, or move this file away to start a new store there)"
            )
        if primary == sqlite3.SQLITE_CORRUPT:
            return (
                " (the file is damaged: restore it from a backup, or recover what is left"
                f" with `sqlite3 {path} .recover`)"
            )
        if primary == sqlite3.SQLITE_IOERR:
            return " (an I/O error: check the disk holding the store, and that it has room)"
        if "no such table" in message or "no such column" in message:
            return " (its tables were changed outside containerjobs: restore it from a backup)"
        return ""

    @contextlib.asynccontextmanager
    async def _connection(self, action: str) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            # Looked up under the lock, so a close() that ran while we waited is seen.
            if self._db is None:
                raise StorageError(
                    f"SQLite store {self._path!r} is not open: call open() first "
                    "(the manager does this on entering its context)"
                )
            async with self._translate(action):
                yield self._db

    @contextlib.asynccontextmanager
    async def _transaction(self, action: str) -> AsyncIterator[aiosqlite.Connection]:
        async with self._connection(action) as db, _begin(db):
            yield db

    async def open(self) -> None:
        async with self._lock:
            if self._db is not None:
                return
            existed = await self._check_path()
            async with self._translate("opening"):
                # isolation_level=None: no implicit transactions from the sqlite3
                # module; we say BEGIN where we mean it. timeout is the busy timeout.
                db = await aiosqlite.connect(
                    self._path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None
                )
            try:
                async with self._translate("opening"):
                    await self._prepare(db, existed=existed)
                await self._check_health(db)
                async with self._translate("reading the store id"):
                    store_id = await self._read_store_id(db)
            except BaseException:
                await _close_quietly(db)
                raise
            self._db = db
            self._store_id = store_id

    async def _check_path(self) -> bool:
        # Whether the file exists already; raises when the path cannot hold a store.
        if self._path == ":memory:":
            return False
        path = anyio.Path(self._path)
        folder = (await path.absolute()).parent
        if not await folder.is_dir():
            raise StorageError(
                f"cannot open SQLite store {self._path!r}: its folder "
                f"{str(folder)!r} does not exist; create it first"
            )
        if await path.is_dir():
            raise StorageError(
                f"cannot open SQLite store {self._path!r}: it is a folder, not a file; "
                f"give the path of a file, such as {os.path.join(self._path, 'jobs.db')!r}"
            )
        return await path.exists()

    async def _prepare(self, db: aiosqlite.Connection, *, existed: bool) -> None:
        for attempt in range(_OPEN_ATTEMPTS):
            try:
                if existed:
                    # Before anything below writes to the file: even switching it to
                    # WAL gives an empty file a header.
                    await self._await_schema(db)
                # WAL: readers never block the writer nor it them, which matters
                # when several managers poll one file. NORMAL is durable in WAL
                # except for the last commits on power loss, never corrupt.
                await db.execute("PRAGMA journal_mode = WAL")
                await db.execute("PRAGMA synchronous = NORMAL")
                # The WAL file keeps the size of the largest transaction it held (a
                # job's final write holds its kept output: 10 MB or more) for as long
                # as the store is open; past this size it is cut back once it restarts.
                await db.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT_BYTES}")
                await db.execute("PRAGMA foreign_keys = ON")
                await self._migrate(db)
                return
            except sqlite3.OperationalError as exc:
                # Processes opening a new file together can meet in a lock order that
                # SQLite resolves by failing one at once instead of waiting (switching
                # to WAL needs the file to itself): the loser tries again.
                if "locked" not in str(exc) or attempt == _OPEN_ATTEMPTS - 1:
                    raise
                await anyio.sleep(0.05 * 2**attempt)

    async def _await_schema(self, db: aiosqlite.Connection) -> None:
        # A file that was there before we connected, with no schema, is either being
        # born (another process created it by connecting, and is about to migrate it)
        # or empty for good: truncated, or made by hand. Migrating the latter would
        # silently start a new store in place of a lost one. So give a creator a
        # moment, reading under the write lock, where a migration in progress is
        # waited for rather than missed; then refuse.
        deadline = anyio.current_time() + _BIRTH_GRACE_SECONDS
        while True:
            # Rolled back, not committed: a write transaction committed on a 0-byte
            # file gives it a header, and a file we refuse must stay as it was.
            async with _rolled_back(db):
                if await _user_version(db) or await _table_names(db):
                    return  # a schema; whose, _migrate checks
            if anyio.current_time() >= deadline:
                break
            await anyio.sleep(_BIRTH_POLL_SECONDS)
        size = (await anyio.Path(self._path).stat()).st_size
        what = "is empty (0 bytes)" if size == 0 else "is a SQLite database with no tables"
        raise StorageError(
            f"SQLite store {self._path!r} {what}, not a containerjobs store: delete it to "
            "start a new store, or restore it from a backup"
        )

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        version = await _user_version(db)
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"SQLite store {self._path!r} has schema version {version}, newer than the "
                f"{SCHEMA_VERSION} this containerjobs knows: upgrade containerjobs"
            )
        for target, statements in enumerate(MIGRATIONS, start=1):
            if target <= version:
                continue
            async with _begin(db):
                # Read again under the write lock: another process opening the same
                # new file may have run this migration while we waited for it.
                if await _user_version(db) >= target:
                    continue
                if target == 1:
                    # Our first migration sets the version with the tables, so tables
                    # without a version are another program's.
                    tables = await _table_names(db)
                    if tables:
                        raise StorageError(
                            f"SQLite store {self._path!r} is a SQLite database of another "
                            f"program (tables {', '.join(tables)}), not a containerjobs "
                            "store: give the path of a store, or of a file that does not "
                            "exist yet"
                        )
                for statement in statements:
                    if isinstance(statement, str):
                        await db.execute(statement)
                    else:
                        await statement(db)
                # PRAGMA takes no parameters; target is our own int.
                await db.execute(f"PRAGMA user_version = {int(target)}")

    async def _check_health(self, db: aiosqlite.Connection) -> None:
        for what, sql in _HEALTH_READS:
            async with self._translate(f"reading {what} on opening"):
                await db.execute_fetchall(sql)
        # A file this process may only read opens without complaint (SQLite falls
        # back to read-only) and then fails every write: find out now, with a write
        # that is rolled back. It dirties a page in memory only, so it passes on a
        # full disk, where the store can still be read.
        async with self._translate("trying a write on opening"), _rolled_back(db):
            await db.execute("UPDATE meta SET value = value WHERE key = 'store_id'")

    async def _read_store_id(self, db: aiosqlite.Connection) -> str:
        rows = list(await db.execute_fetchall("SELECT value FROM meta WHERE key = 'store_id'"))
        if not rows:
            # Only a hand-edited file can get here: the migration that made the table
            # wrote the id with it.
            raise StorageError(f"SQLite store {self._path!r} has lost its store_id (table meta)")
        return str(rows[0][0])

    async def close(self) -> None:
        # Shielded: a close cut short would leave the connection's thread running.
        with anyio.CancelScope(shield=True):
            async with self._lock:
                db, self._db = self._db, None
                if db is not None:
                    async with self._translate("closing"):
                        await db.close()

    # --- jobs -----------------------------------------------------------------------

    async def create(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        rows = [(job.id, *_job_columns(job)) for job in jobs]
        # SQLite's "UNIQUE constraint failed" does not say which id: name them here.
        named = ", ".join(repr(job.id) for job in jobs[:5]) + (", ..." if len(jobs) > 5 else "")
        action = f"creating {len(rows)} job(s) ({named})"
        outputs = [
            (job.id, encode_output(stdout or ""), encode_output(stderr or ""))
            for job in jobs
            for stdout, stderr in [job_output(job)]
            if stdout or stderr
        ]
        async with self._transaction(action) as db:
            # A duplicate id (stored or within `jobs`) fails the whole transaction.
            await db.executemany(_INSERT_JOB, rows)
            if outputs:
                await db.executemany(
                    "INSERT INTO job_output (job_id, stdout, stderr) VALUES (?, ?, ?)", outputs
                )

    async def get(self, job_id: str) -> Job:
        async with self._connection(f"reading job {job_id!r}") as db:
            rows = list(await db.execute_fetchall(f"{_WITH_OUTPUT} WHERE id = ?", (job_id,)))
        if not rows:
            raise JobNotFound(f"no job with id {job_id!r}")
        return _load_full(*rows[0])

    async def list(
        self,
        *,
        status: JobStatus | Sequence[JobStatus] | None = None,
        host: str | None = None,
        limit: int | None = 100,
    ) -> builtins.list[Job]:
        check_limit(limit)
        wanted = status_filter(status)
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if wanted is not None:
            if not wanted:
                return []
            where.append(f"status IN ({', '.join('?' * len(wanted))})")
            params.extend(s.value for s in wanted)
        if host is not None:
            where.append("host = ?")
            params.append(host)
        sql = "SELECT record FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        async with self._connection("listing jobs") as db:
            rows = await db.execute_fetchall(sql, params)
        # The records alone: their output is neither read nor loaded.
        return [_load_listed(row[0]) for row in rows]

    async def compare_and_set(
        self, job: Job, *, expected: JobStatus, expected_owner: str | None
    ) -> bool:
        columns = _job_columns(job)
        # IS, not =: "owner = NULL" is never true, and None must match no owner.
        sql = f"UPDATE jobs SET {_SET_JOB} WHERE id = ? AND status = ? AND owner IS ?"
        params = (*columns, job.id, expected.value, expected_owner)
        action = f"writing job {job.id!r}"
        output = job_output(job)
        if output == (None, None):
            # A listed job leaves its output as stored: one statement, atomic as is.
            async with self._connection(action) as db:
                cursor = await db.execute(sql, params)
                if cursor.rowcount == 1:
                    return True
                await self._require_job(db, job.id)
                return False
        if output == ("", ""):
            # The usual move: a job that has printed nothing, with no output stored
            # either (it is written at the end). One statement, which checks that, as
            # a transaction of three costs a third more (560 µs a move, not 430); a
            # stored output to clear, or a lost race, takes the way below.
            async with self._connection(action) as db:
                cursor = await db.execute(
                    f"{sql} AND NOT EXISTS (SELECT 1 FROM job_output WHERE job_id = ?)",
                    (*params, job.id),
                )
                if cursor.rowcount == 1:
                    return True
        async with self._transaction(action) as db:
            # The record and its output in one transaction, the output only if the
            # record's write won.
            cursor = await db.execute(sql, params)
            if cursor.rowcount == 1:
                await _write_output(db, job)
                return True
            await self._require_job(db, job.id)
            return False

    async def claim_next(
        self,
        manager_id: str,
        hosts: Mapping[str, int],
        choose: ChooseHost,
        *,
        now: datetime,
        limit: int | None = None,
    ) -> builtins.list[Job]:
        check_limit(limit)
        as_utc(now)  # refused before anything, as ClaimRound would
        if not hosts or limit == 0:
            return []  # nothing could be claimed: take no write lock for it
        async with self._transaction("claiming pending jobs") as db:
            # The count and the writes are in one write transaction, so no other
            # process's claim can come between them: per-host limits stay exact.
            round_ = ClaimRound(
                manager_id, hosts, choose, active=await _count_active(db), now=now, limit=limit
            )
            after: tuple[int, str, str] | None = None
            while not round_.done:
                rows = list(await _pending_page(db, round_.open_hosts(), now, after))
                for priority, created_at, job_id, record in rows:
                    after = (priority, created_at, job_id)
                    claimed = round_.offer(_load_listed(record))
                    if claimed is not None:
                        # Read as pending under this write lock: no status check needed.
                        await db.execute(
                            f"UPDATE jobs SET {_SET_JOB} WHERE id = ?",
                            (*_job_columns(claimed), claimed.id),
                        )
                    if round_.done:
                        break
                if len(rows) < _CLAIM_PAGE:
                    break  # the end of the queue
            # The claimed jobs with their output, as get returns them (a pending job
            # has printed nothing, unless someone wrote it an output: no row to find).
            return await _with_outputs(db, round_.claimed)

    async def _require_job(self, db: aiosqlite.Connection, job_id: str) -> None:
        rows = await db.execute_fetchall("SELECT 1 FROM jobs WHERE id = ?", (job_id,))
        if not list(rows):
            raise JobNotFound(f"no job with id {job_id!r}")

    async def active_jobs(self, *, owner: str | None = None) -> builtins.list[Job]:
        # No index on owner: jobs_by_dispatch (status first) already narrows the scan
        # to the active jobs, which the hosts' limits keep few.
        # With their output, as get: a running job has printed nothing yet (its lines
        # are in log_chunks until it ends), so no row to find.
        sql = f"{_WITH_OUTPUT} WHERE status IN {_ACTIVE_SQL}"
        params: builtins.list[Any] = []
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        sql += " ORDER BY created_at DESC, id DESC"
        async with self._connection("listing active jobs") as db:
            rows = await db.execute_fetchall(sql, params)
        return [_load_full(*row) for row in rows]

    async def cancel_requests(self, owner: str) -> builtins.list[str]:
        """The ids of `owner`'s active jobs that someone asked to cancel: what a worker
        reads every round, without decoding a record."""
        async with self._connection("reading cancel requests") as db:
            rows = await db.execute_fetchall(
                f"SELECT id FROM jobs WHERE status IN {_ACTIVE_SQL} AND owner = ?"
                " AND json_extract(record, '$.cancel_requested') = 1",
                (owner,),
            )
        return [row[0] for row in rows]

    async def count_active(self) -> dict[str, int]:
        async with self._connection("counting active jobs") as db:
            return await _count_active(db)

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The status of each of `job_ids` that exists, in one read: what the
        manager's waiters poll, without decoding a record."""
        found: dict[str, JobStatus] = {}
        async with self._connection(f"reading the status of {len(job_ids)} job(s)") as db:
            for start in range(0, len(job_ids), _IN_CHUNK):
                chunk = list(job_ids[start : start + _IN_CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = await db.execute_fetchall(
                    f"SELECT id, status FROM jobs WHERE id IN ({marks})", chunk
                )
                found.update((job_id, JobStatus(status)) for job_id, status in rows)
        return found

    async def count_by_status(self) -> dict[JobStatus, int]:
        async with self._connection("counting jobs") as db:
            rows = await db.execute_fetchall("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        counts = dict.fromkeys(JobStatus, 0)
        for status, count in rows:
            counts[JobStatus(status)] = count
        return counts

    async def delete(self, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0
        params = [(job_id,) for job_id in job_ids]
        async with self._transaction(f"deleting {len(params)} job(s)") as db:
            # The foreign key cascades too, but only on connections that turned it on;
            # deleting the lines by hand keeps the file clean whoever else writes to it.
            await db.executemany("DELETE FROM log_chunks WHERE job_id = ?", params)
            await db.executemany("DELETE FROM job_output WHERE job_id = ?", params)
            cursor = await db.executemany("DELETE FROM jobs WHERE id = ?", params)
            # executemany sums the rows each statement deleted; a repeated id adds 0.
            return cursor.rowcount

    async def finished_before(self, when: datetime, limit: int | None = None) -> builtins.list[str]:
        check_limit(limit)
        sql = (
            f"SELECT id FROM jobs WHERE status IN {_TERMINAL_SQL} AND completed_at < ?"
            " ORDER BY completed_at, id"
        )
        params: builtins.list[Any] = [format_datetime(when)]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        async with self._connection("finding finished jobs") as db:
            rows = await db.execute_fetchall(sql, params)
        return [row[0] for row in rows]

    # --- logs -----------------------------------------------------------------------

    async def append_logs(self, job_id: str, lines: Sequence[StoredLine]) -> None:
        if not lines:
            return
        # Encoded before the lock is taken; again inside only for a retried write.
        data = pack_chunk(encode_chunk(lines))
        async with self._transaction(f"storing logs of job {job_id!r}") as db:
            # Checked inside the write transaction, so the answer still holds when
            # the chunk is inserted.
            await self._require_job(db, job_id)
            next_seq = await _next_seq(db, job_id)
            check_log_sequence(job_id, lines, next_seq=next_seq)
            # Lines already stored (a retried write) keep their first text.
            new = lines[next_seq - lines[0].seq :]
            if not new:
                return
            if len(new) < len(lines):
                data = pack_chunk(encode_chunk(new))
            await db.execute(
                "INSERT INTO log_chunks (job_id, first_seq, end_seq, data) VALUES (?, ?, ?, ?)",
                (job_id, next_seq, next_seq + len(new), data),
            )

    async def read_logs(
        self, job_id: str, *, after: int = -1, until: int | None = None, limit: int | None = None
    ) -> builtins.list[StoredLine]:
        check_limit(limit)
        window = LineWindow(after, until, limit)
        if window.full:
            return []
        # From the chunk holding the first line wanted, found down the primary key (a
        # filter on end_seq alone would read every chunk of the job before it).
        sql = (
            "SELECT first_seq, data FROM log_chunks WHERE job_id = ?1 AND end_seq > ?2"
            " AND first_seq >= COALESCE((SELECT first_seq FROM log_chunks"
            " WHERE job_id = ?1 AND first_seq <= ?2 ORDER BY first_seq DESC LIMIT 1), 0)"
        )
        params: builtins.list[Any] = [job_id, window.start]
        if window.stop is not None:
            sql += " AND first_seq < ?3"
            params.append(window.stop)
        sql += " ORDER BY first_seq"
        async with self._connection(f"reading logs of job {job_id!r}") as db:
            # Through a cursor, a few chunks at a time, so a read with a limit stops
            # once it has its lines rather than reading the job's whole output.
            async with db.execute(sql, params) as cursor:
                while not window.full:
                    rows = list(await cursor.fetchmany(_READ_CHUNKS))
                    for first_seq, data in rows:
                        window.add(first_seq, data)
                        if window.full:
                            break
                    if len(rows) < _READ_CHUNKS:
                        break
        return window.lines

    async def log_count(self, job_id: str) -> int:
        async with self._connection(f"counting logs of job {job_id!r}") as db:
            return await _next_seq(db, job_id)

    # --- manager leases ---------------------------------------------------------

    async def renew_lease(self, manager_id: str, ttl: float, *, info: str = "") -> None:
        now = store_now()
        expires_at = lease_expiry(now, ttl)
        async with self._connection(f"renewing the lease of manager {manager_id!r}") as db:
            await db.execute(
                "INSERT OR REPLACE INTO managers (manager_id, expires_at, renewed_at, info)"
                " VALUES (?, ?, ?, ?)",
                (manager_id, format_datetime(expires_at), format_datetime(now), info),
            )

    async def drop_lease(self, manager_id: str) -> None:
        async with self._connection(f"dropping the lease of manager {manager_id!r}") as db:
            await db.execute("DELETE FROM managers WHERE manager_id = ?", (manager_id,))

    async def live_managers(self) -> set[str]:
        now = format_datetime(store_now())
        async with self._connection("listing live managers") as db:
            rows = await db.execute_fetchall(
                "SELECT manager_id FROM managers WHERE expires_at > ?", (now,)
            )
        return {row[0] for row in rows}

    # --- environment templates --------------------------------------------------

    async def save_template(self, template: EnvironmentTemplate) -> None:
        async with self._connection(f"saving template {template.name!r}") as db:
            await db.execute(
                "INSERT OR REPLACE INTO templates (name, text, description) VALUES (?, ?, ?)",
                (template.name, template.text, template.description),
            )

    async def get_template(self, name: str) -> EnvironmentTemplate:
        async with self._connection(f"reading template {name!r}") as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT name, text, description FROM templates WHERE name = ?", (name,)
                )
            )
        if not rows:
            raise TemplateNotFound(f"no environment template named {name!r}")
        return EnvironmentTemplate(*rows[0])

    async def list_templates(self) -> builtins.list[EnvironmentTemplate]:
        async with self._connection("listing templates") as db:
            rows = await db.execute_fetchall(
                "SELECT name, text, description FROM templates ORDER BY name"
            )
        return [EnvironmentTemplate(*row) for row in rows]

    async def delete_template(self, name: str) -> None:
        async with self._connection(f"deleting template {name!r}") as db:
            cursor = await db.execute("DELETE FROM templates WHERE name = ?", (name,))
            if cursor.rowcount == 0:
                raise TemplateNotFound(f"no environment template named {name!r}")


# --- helpers on a raw connection (errors translated by the caller) -------------------


@contextlib.asynccontextmanager
async def _begin(db: aiosqlite.Connection) -> AsyncIterator[None]:
    # IMMEDIATE takes the write lock up front, where the busy timeout applies; a
    # deferred transaction that upgrades later can fail at once with "locked" instead.
    try:
        # Inside the try: a caller cancelled while waiting for BEGIN has still queued
        # it on the connection's thread, so it needs the ROLLBACK as much as any.
        await db.execute("BEGIN IMMEDIATE")
        yield
        await db.execute("COMMIT")
    except BaseException:
        # Shielded: a cancelled caller must not leave the transaction open on the
        # shared connection, where the next task's statements would join it. When
        # there is none (BEGIN failed, COMMIT went through) ROLLBACK fails: ignored.
        with anyio.CancelScope(shield=True), contextlib.suppress(sqlite3.Error):
            await db.execute("ROLLBACK")
        raise


@contextlib.asynccontextmanager
async def _rolled_back(db: aiosqlite.Connection) -> AsyncIterator[None]:
    # A transaction that holds the write lock and leaves nothing behind. BEGIN is
    # inside the try, and ROLLBACK shielded, for the same reasons as in _begin.
    try:
        await db.execute("BEGIN IMMEDIATE")
        yield
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(sqlite3.Error):
            await db.execute("ROLLBACK")


async def _user_version(db: aiosqlite.Connection) -> int:
    rows = list(await db.execute_fetchall("PRAGMA user_version"))
    return int(rows[0][0])


async def _table_names(db: aiosqlite.Connection) -> builtins.list[str]:
    rows = await db.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    )
    return [str(row[0]) for row in rows]


async def _next_seq(db: aiosqlite.Connection, job_id: str) -> int:
    # The end of the job's last chunk: MAX(end_seq), as chunks follow each other with
    # no gap nor overlap, but found in one descent of the primary key where MAX would
    # read every chunk of the job.
    rows = list(
        await db.execute_fetchall(
            "SELECT end_seq FROM log_chunks WHERE job_id = ? ORDER BY first_seq DESC LIMIT 1",
            (job_id,),
        )
    )
    return int(rows[0][0]) if rows else 0


async def _with_outputs(db: aiosqlite.Connection, jobs: builtins.list[Job]) -> builtins.list[Job]:
    # Listed jobs (no output loaded) with their stored output, "" where they have none.
    found: dict[str, tuple[bytes, bytes]] = {}
    for start in range(0, len(jobs), _IN_CHUNK):
        ids = [job.id for job in jobs[start : start + _IN_CHUNK]]
        rows = await db.execute_fetchall(
            f"SELECT job_id, stdout, stderr FROM job_output WHERE job_id IN"
            f" ({','.join('?' * len(ids))})",
            ids,
        )
        found.update((job_id, (out, err)) for job_id, out, err in rows)
    return with_output(jobs, found)


async def _count_active(db: aiosqlite.Connection) -> dict[str, int]:
    rows = await db.execute_fetchall(
        "SELECT host, COUNT(*) FROM jobs"
        f" WHERE status IN {_ACTIVE_SQL} AND host IS NOT NULL GROUP BY host"
    )
    return {host: count for host, count in rows}


async def _pending_page(
    db: aiosqlite.Connection,
    open_hosts: Sequence[str],
    now: datetime,
    after: tuple[int, str, str] | None,
) -> Iterable[Any]:
    # The next pending jobs in dispatch order that some open host may take now:
    # retries whose time has come, jobs pinned to no host or to an open one. Read
    # after the last row of the previous page (in the queue's order, by the columns
    # of the index), so a job skipped in this round is not read again.
    sql = (
        "SELECT priority, created_at, id, record FROM jobs"
        " WHERE status = ? AND (retry_at IS NULL OR retry_at <= ?)"
        f" AND (pinned_host IS NULL OR pinned_host IN ({', '.join('?' * len(open_hosts))}))"
    )
    params: builtins.list[Any] = [JobStatus.PENDING.value, format_datetime(now), *open_hosts]
    if after is not None:
        priority, created_at, job_id = after
        sql += (
            " AND (priority < ? OR (priority = ? AND"
            " (created_at > ? OR (created_at = ? AND id > ?))))"
        )
        params += [priority, priority, created_at, created_at, job_id]
    sql += " ORDER BY priority DESC, created_at, id LIMIT ?"
    params.append(_CLAIM_PAGE)
    return await db.execute_fetchall(sql, params)


async def _close_quietly(db: aiosqlite.Connection) -> None:
    # Used on a failed open: the error that made us close is the one to report.
    with anyio.CancelScope(shield=True), contextlib.suppress(*_DRIVER_ERRORS):
        await db.close()
