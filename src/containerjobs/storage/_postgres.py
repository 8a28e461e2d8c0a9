"""`PostgresStorage`: a PostgreSQL database, shared by managers on many machines."""

from __future__ import annotations

import builtins
import contextlib
import json
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio

from .._errors import JobNotFound, StorageError, TemplateNotFound
from .._models import EnvironmentTemplate, Job, JobStatus, LogLine
from ._base import ChooseHost, StoredLine
from ._chunks import LineWindow, encode_chunk
from ._claim import ClaimRound
from ._codec import (
    as_utc,
    check_limit,
    check_log_sequence,
    decode_output,
    dump_record,
    encode_output,
    job_output,
    lease_expiry,
    load_record,
    status_filter,
    store_now,
    with_output,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStorage"]

# A step of a migration: SQL, or a coroutine given the connection and the schema.
MigrationStep = str | Callable[[Any, str], Awaitable[None]]

# Lines per chunk made of the old one-row-per-line table: what a flush writes at most.
_MIGRATED_CHUNK_LINES = 500


async def _chunk_old_lines(conn: Any, schema: str) -> None:
    # The lines of version 1's logs table, as chunks of up to 500 consecutive lines of
    # a job. In Python, not SQL: a line is bytea there (it may hold NUL, and lone
    # surrogates passed through as their bytes), which no text expression of
    # PostgreSQL turns into a JSON string; encode_chunk escapes both.
    batch: builtins.list[StoredLine] = []
    rows: builtins.list[tuple[str, int, int, str]] = []

    def close_chunk(job_id: str) -> None:
        rows.append((job_id, batch[0].seq, batch[-1].seq + 1, encode_chunk(batch)))
        batch.clear()

    async def insert() -> None:
        await conn.executemany(
            f"INSERT INTO {schema}.log_chunks (job_id, first_seq, end_seq, data)"
            " VALUES ($1, $2, $3, $4)",
            rows,
        )
        rows.clear()

    current = ""
    async for job_id, seq, stream, ts, line in conn.cursor(
        f"SELECT job_id, seq, stream, ts, line FROM {schema}.logs ORDER BY job_id, seq",
        prefetch=5000,
    ):
        if batch and (job_id != current or len(batch) == _MIGRATED_CHUNK_LINES):
            close_chunk(current)
            if len(rows) == 100:
                await insert()
        current = job_id
        text = bytes(line).decode("utf-8", "surrogatepass")
        batch.append(StoredLine(seq, LogLine(stream, text, ts)))
    if batch:
        close_chunk(current)
    if rows:
        await insert()


# The records that still hold an output, as dump_job wrote every record up to schema
# version 2: all but those whose output is empty, which read the same either way.
_EMPTY_OUTPUT = '"stdout":"","stderr":""'


async def _move_output_out(conn: Any, schema: str) -> None:
    # Each record that holds an output loses it to job_output, one at a time (a record
    # may hold 20 MB of output). In Python: a record is text, not jsonb, as its output
    # may hold \u0000, which no JSON operator of PostgreSQL reads. A record whose
    # output is empty keeps its two empty keys, which reads ignore.
    ids = await conn.fetch(
        f"SELECT id FROM {schema}.jobs WHERE strpos(record, $1) = 0", _EMPTY_OUTPUT
    )
    for (job_id,) in ids:
        text = await conn.fetchval(f"SELECT record FROM {schema}.jobs WHERE id = $1", job_id)
        record = json.loads(text)
        stdout, stderr = record.pop("stdout", "") or "", record.pop("stderr", "") or ""
        await conn.execute(
            f"UPDATE {schema}.jobs SET record = $2 WHERE id = $1",
            job_id,
            json.dumps(record, separators=(",", ":")),
        )
        if stdout or stderr:
            await conn.execute(
                f"INSERT INTO {schema}.job_output (job_id, stdout, stderr) VALUES ($1, $2, $3)",
                job_id,
                encode_output(stdout),
                encode_output(stderr),
            )


# Migration n (counting from 1) takes a schema from version n-1 to n. Append only: a
# released entry is never edited. "{s}" is the store's schema, a checked identifier.
MIGRATIONS: tuple[tuple[MigrationStep, ...], ...] = (
    (
        # The columns beside `record` are copies of its fields that queries filter or
        # sort on; `record` (the whole Job as `dump_job` JSON; since version 3 less its
        # output, as `dump_record` writes it) is what a read returns.
        # It is text, not jsonb: jsonb refuses the \u0000 escape that a container's
        # output can put in stdout, and text gives back exactly what was written.
        # COLLATE "C" orders ids and names by code point, as Python's sort does, so
        # the queue's ties (and the templates) come out in the same order everywhere.
        """
        CREATE TABLE {s}.jobs (
            id           text COLLATE "C" PRIMARY KEY,
            status       text NOT NULL,
            host         text COLLATE "C",
            owner        text,
            priority     bigint NOT NULL,
            created_at   timestamptz NOT NULL,
            completed_at timestamptz,
            pinned_host  text COLLATE "C",
            retry_at     timestamptz,
            record       text NOT NULL
        )
        """,
        # The pending queue in claim_next's order, and nothing else: a partial index
        # stays small however many finished jobs the table keeps.
        "CREATE INDEX jobs_queue ON {s}.jobs (priority DESC, created_at, id)"
        " WHERE status = 'pending'",
        "CREATE INDEX jobs_active ON {s}.jobs (host, owner)"
        " WHERE status IN ('launching', 'running')",
        "CREATE INDEX jobs_by_created ON {s}.jobs (created_at, id)",
        "CREATE INDEX jobs_by_status ON {s}.jobs (status, created_at, id)",
        "CREATE INDEX jobs_by_host ON {s}.jobs (host, created_at, id)",
        "CREATE INDEX jobs_by_completed ON {s}.jobs (completed_at, id)"
        " WHERE completed_at IS NOT NULL",
        # A line's text is bytea, the UTF-8 bytes (surrogates passed through): text
        # columns refuse NUL, which a container may well print.
        """
        CREATE TABLE {s}.logs (
            job_id text COLLATE "C" NOT NULL REFERENCES {s}.jobs (id) ON DELETE CASCADE,
            seq    bigint NOT NULL,
            stream text NOT NULL,
            ts     timestamptz NOT NULL,
            line   bytea NOT NULL,
            PRIMARY KEY (job_id, seq)
        )
        """,
        """
        CREATE TABLE {s}.templates (
            name        text COLLATE "C" PRIMARY KEY,
            text        text NOT NULL,
            description text NOT NULL DEFAULT ''
        )
        """,
        # Leases are timed by the database's clock (clock_timestamp()), the one clock
        # every manager on every machine shares.
        """
        CREATE TABLE {s}.managers (
            manager_id text PRIMARY KEY,
            expires_at timestamptz NOT NULL,
            renewed_at timestamptz NOT NULL,
            info       text NOT NULL DEFAULT ''
        )
        """,
        "CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
        # Made in SQL, in the migration's transaction: of several processes opening a
        # new database, only the one that runs this makes an id.
        "INSERT INTO {s}.meta (key, value)"
        " VALUES ('store_id', replace(gen_random_uuid()::text, '-', ''))",
    ),
    (
        # A job's lines as chunks (see _chunks.py), one row per append_logs call: a
        # row per line took 170 bytes for a 7-byte line. end_seq is the seq after the
        # chunk's last line. NUL needs no bytea now: JSON escapes it.
        """
        CREATE TABLE {s}.log_chunks (
            job_id    text COLLATE "C" NOT NULL REFERENCES {s}.jobs (id) ON DELETE CASCADE,
            first_seq bigint NOT NULL,
            end_seq   bigint NOT NULL,
            data      text NOT NULL,
            PRIMARY KEY (job_id, first_seq)
        )
        """,
        _chunk_old_lines,
        "DROP TABLE {s}.logs",
    ),
    (
        # A job's kept output apart from its record, a row only for a job that has
        # some: the record is written at every status move and read by every listing,
        # the output (up to 10 MiB a stream) written once, at the end, and read only
        # by get. In the record, a listing of 20 jobs with 4 MiB of output each read
        # and parsed 160 MiB of JSON; and each write of a record wrote its output
        # again. bytea (encode_output's UTF-8): text refuses NUL. TOAST keeps it out
        # of line, compressed, and a write that leaves it alone does not copy it.
        """
        CREATE TABLE {s}.job_output (
            job_id text COLLATE "C" PRIMARY KEY REFERENCES {s}.jobs (id) ON DELETE CASCADE,
            stdout bytea NOT NULL,
            stderr bytea NOT NULL
        )
        """,
        _move_output_out,
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# Log chunks a read_logs with a limit fetches at a time: a follower's page of 1000
# lines is two or three chunks of a busy job, or dozens of a quiet one's.
_READ_CHUNKS = 32

_CHANNEL = "containerjobs_jobs"
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,43}")
_DEFAULT_SCHEMA = "containerjobs"

# Status literals written into SQL: our own enum values, never user input.
_ACTIVE_SQL = "(" + ", ".join(f"'{s.value}'" for s in JobStatus if s.is_active) + ")"
_TERMINAL_SQL = "(" + ", ".join(f"'{s.value}'" for s in JobStatus if s.is_terminal) + ")"
_PENDING = JobStatus.PENDING.value

# claim_next reads the queue a page at a time; the first page is as long as the free
# slots (so a manager locks no more rows than it can take, and leaves the rest to the
# others), and each further page twice as long, up to this.
_CLAIM_PAGE = 64
# How often a changes() connection with nothing to say is checked to be alive.
_LISTEN_PING_SECONDS = 15.0
_RECONNECT_MAX_SECONDS = 5.0


def _mask(dsn: str) -> str:
    # The DSN with its password (in the user part or as a parameter) made ***.
    masked = re.sub(r"(://[^:/@?#]*:)[^@/?#]*@", r"\1***@", dsn)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", masked)


def _where(dsn: str) -> str:
    # "host:port/database" of a DSN, for messages: never the user part's password.
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unreadable DSN>"
    params = dict(parse_qsl(parts.query))
    hostspec = parts.netloc.rpartition("@")[2] or params.get("host", "") or "localhost"
    if ":" not in hostspec.rpartition("]")[2] and "," not in hostspec:
        hostspec += f":{params.get('port', '5432')}"
    database = parts.path.lstrip("/") or params.get("dbname", "") or "(the user's name)"
    return f"{hostspec}/{database}"


class PostgresStorage:
    """A job store in a PostgreSQL database, for managers on many machines.

    Args:
        dsn: ``postgresql://user:password@host:5432/database`` (parameters such as
            ``?sslmode=require`` as asyncpg reads them). The password never appears
            in the store's repr nor in its errors.
        schema: the schema the store's tables live in, created on `open` when absent
            (which needs the CREATE privilege on the database); several stores may
            share a database in schemas of their own.
        min_size: connections the pool keeps open.
        max_size: connections the pool opens at most.
        connect_timeout: seconds `open` (and each new connection) may take to connect;
            an unreachable server raises `StorageError` after that.
        command_timeout: seconds a statement may run, or `None` for no limit.

    Needs the extra ``containerjobs[postgres]`` (asyncpg), and the asyncio event loop.
    `open` creates the tables, or migrates them, under a transaction-level advisory
    lock, so several processes may open one database at once.

    **Claims.** `claim_next` runs in one transaction under PostgreSQL's default
    isolation (READ COMMITTED). It takes a transaction-level advisory lock for each
    offered host, in one order, so no other claim may fill the same hosts until it
    commits; counts the active jobs on them (a fresh statement, so it sees every claim
    committed before it got the locks); then reads the pending jobs in dispatch order
    with ``FOR NO KEY UPDATE SKIP LOCKED``, a page as long as its free slots, and runs the
    shared `ClaimRound` rules on them. Managers whose hosts differ claim at the same
    time; each skips the rows another is deciding on, so they take different jobs
    instead of queueing behind the head of the queue.

    **Leases** are judged by the database's clock, never by the process's.

    **Changes (an optional capability).** Every job write (create, compare-and-set,
    claim) sends ``pg_notify('containerjobs_jobs', '<job id> <status> <previous status
    or ->')`` in its own transaction (the channel is ``containerjobs_jobs_<schema>``
    for a schema other than ``containerjobs``). `changes` follows them:

    ```python
    async for job_id, status, previous in store.changes():
        ...
    ```

    It listens on a connection of its own, ends when the store closes, and connects
    again when the server restarts; changes made while it was disconnected are not
    replayed, so a consumer reads again what it waits on once it has missed some.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = _DEFAULT_SCHEMA,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float | None = None,
    ) -> None:
        if not isinstance(dsn, str) or urlsplit(dsn).scheme.lower() not in (
            "postgresql",
            "postgres",
        ):
            shown = _mask(dsn) if isinstance(dsn, str) else type(dsn).__name__
            raise ValueError(
                f"a PostgreSQL DSN reads postgresql://USER:PASSWORD@HOST:PORT/DATABASE, "
                f"not {shown!r}"
            )
        if "," not in urlsplit(dsn).netloc:  # (several hosts: asyncpg's to read)
            try:
                _ = urlsplit(dsn).port  # raises for a port that is not a number
            except ValueError:
                raise ValueError(f"the port in {_mask(dsn)!r} is not a number") from None
        if not _SCHEMA.fullmatch(schema):
            raise ValueError(
                f"schema must be a lower-case SQL identifier of at most 44 characters, "
                f"got {schema!r}"
            )
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(
                f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size} and {max_size}"
            )
        if not (math.isfinite(connect_timeout) and connect_timeout > 0):
            raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout!r}")
        self._dsn = dsn
        self._schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._where = _where(dsn)
        self._channel = _CHANNEL if schema == _DEFAULT_SCHEMA else f"{_CHANNEL}_{schema}"
        # Any: asyncpg ships no type information.
        self._asyncpg: Any = None
        self._pool: Any = None
        self._store_id: str | None = None
        self._lock = anyio.Lock()  # open and close
        # What close() ends: the send side of each changes() iterator, and its connection.
        self._listeners: dict[Any, Any] = {}
        t = f"{schema}."
        self._jobs, self._chunks, self._templates = f"{t}jobs", f"{t}log_chunks", f"{t}templates"
        self._output = f"{t}job_output"
        # A job's record with its output (NULLs when it has none), as get reads it.
        self._with_output = (
            f"SELECT j.record, o.stdout, o.stderr FROM {self._jobs} AS j"
            f" LEFT JOIN {self._output} AS o ON o.job_id = j.id"
        )
        self._managers, self._meta = f"{t}managers", f"{t}meta"
        # The seq after a job's last stored line ($1 the job), NULL when it has none:
        # the end of its last chunk. That is MAX(end_seq), as chunks follow each other
        # with no gap, but found in one descent of the primary key where MAX would
        # read every chunk of the job.
        self._last_end = (
            f"SELECT end_seq FROM {self._chunks} WHERE job_id = $1 ORDER BY first_seq DESC LIMIT 1"
        )

    @property
    def persistent(self) -> bool:
        return True

    @property
    def store_id(self) -> str:
        if self._store_id is None:
            raise StorageError(
                f"PostgreSQL store {self._where} has no store_id until it is opened: "
                "call open() first"
            )
        return self._store_id

    @property
    def schema(self) -> str:
        return self._schema

    @property
    def channel(self) -> str:
        """The NOTIFY channel of this store's job writes."""
        return self._channel

    def __repr__(self) -> str:
        extra = "" if self._schema == _DEFAULT_SCHEMA else f", schema={self._schema!r}"
        return f"PostgresStorage({_mask(self._dsn)!r}{extra})"

    # --- connection plumbing -----------------------------------------------------

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        pg = self._asyncpg
        errors: tuple[type[BaseException], ...] = (OSError, UnicodeEncodeError, OverflowError)
        if pg is not None:
            errors += (pg.PostgresError, pg.InterfaceError, pg.exceptions.InternalClientError)
        return errors

    def _scrub(self, text: str) -> str:
        # Driver messages do not carry the password; make sure of it all the same.
        password = urlsplit(self._dsn).password
        if password:
            text = text.replace(password, "***")
        return _mask(text)

    @contextlib.contextmanager
    def _translate(self, action: str) -> Any:
        # The one place where driver errors become ours.
        try:
            yield
        except self._driver_errors() as exc:
            if isinstance(exc, TimeoutError):
                text = "no answer in time"
            else:
                detail = getattr(exc, "detail", None)
                text = f"{type(exc).__name__}: {exc}" + (f" ({detail})" if detail else "")
            raise StorageError(
                self._scrub(f"PostgreSQL store {self._where}: {action} failed: {text}")
            ) from exc

    @contextlib.asynccontextmanager
    async def _connection(self, action: str) -> AsyncIterator[Any]:
        pool = self._pool
        if pool is None:
            raise StorageError(
                f"PostgreSQL store {self._where} is not open: call open() first "
                "(the manager does this on entering its context)"
            )
        with self._translate(action):
            async with pool.acquire() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _transaction(self, action: str) -> AsyncIterator[Any]:
        # asyncpg's transaction rolls back on an error. A caller cancelled mid-way may
        # cut that rollback short too, but the pool rolls back whatever a connection
        # left open as it takes the connection back (in a task cancellation does not
        # reach), so nothing half-written is ever committed.
        async with self._connection(action) as conn, conn.transaction():
            yield conn

    async def open(self) -> None:
        async with self._lock:
            if self._pool is not None:
                return
            try:
                import asyncpg  # type: ignore[import-untyped,unused-ignore]
            except ImportError as exc:
                raise StorageError(
                    "PostgresStorage needs asyncpg: install containerjobs[postgres]"
                ) from exc
            self._asyncpg = asyncpg
            with self._translate("connecting"):
                try:
                    with anyio.fail_after(self._connect_timeout + 1):
                        pool = await asyncpg.create_pool(
                            self._dsn,
                            min_size=self._min_size,
                            max_size=self._max_size,
                            timeout=self._connect_timeout,
                            command_timeout=self._command_timeout,
                        )
                except TimeoutError:
                    raise StorageError(
                        f"PostgreSQL store {self._where}: connecting failed: no answer "
                        f"within {self._connect_timeout:g} s (is the server up, and the "
                        "host and port right?)"
                    ) from None
            try:
                with self._translate("creating or migrating the schema"):
                    async with pool.acquire() as conn:
                        await self._migrate(conn)
                        store_id = await conn.fetchval(
                            f"SELECT value FROM {self._meta} WHERE key = 'store_id'"
                        )
            except BaseException:
                pool.terminate()
                raise
            if store_id is None:
                pool.terminate()
                raise StorageError(f"PostgreSQL store {self._where} has lost its store_id")
            self._pool = pool
            self._store_id = str(store_id)

    async def _migrate(self, conn: Any) -> None:
        async with conn.transaction():
            # Several processes opening one new database at once: one migrates, the
            # others wait here and then find the work done.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"containerjobs.schema.{self._schema}"
            )
            # Looked up before any CREATE: PostgreSQL checks the privilege to create
            # before it sees that the thing exists, and a worker's role may well have
            # none once a DBA (or the first open) has made the schema.
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1", self._schema
            )
            if not exists:
                await conn.execute(f"CREATE SCHEMA {self._schema}")
            versioned = await conn.fetchval(
                "SELECT to_regclass($1)", f"{self._schema}.schema_version"
            )
            if versioned is None:
                await conn.execute(
                    f"CREATE TABLE {self._schema}.schema_version ("
                    " version integer PRIMARY KEY,"
                    " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
                )
            version = await conn.fetchval(
                f"SELECT COALESCE(MAX(version), 0) FROM {self._schema}.schema_version"
            )
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"PostgreSQL store {self._where} (schema {self._schema}) has schema "
                    f"version {version}, newer than the {SCHEMA_VERSION} this containerjobs "
                    "knows: upgrade containerjobs"
                )
            for target, statements in enumerate(MIGRATIONS, start=1):
                if target <= version:
                    continue
                for step in statements:
                    if isinstance(step, str):
                        await conn.execute(step.format(s=self._schema))
                    else:
                        await step(conn, self._schema)
                await conn.execute(
                    f"INSERT INTO {self._schema}.schema_version (version) VALUES ($1)", target
                )

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            async with self._lock:
                pool, self._pool = self._pool, None
                listeners, self._listeners = self._listeners, {}
                for send, conn in listeners.items():
                    send.close()
                    if conn is not None:
                        conn.terminate()
                if pool is not None:
                    try:
                        with anyio.fail_after(10):
                            await pool.close()
                    except self._driver_errors():
                        pool.terminate()

    # --- jobs -----------------------------------------------------------------------

    def _notify(self, source: str) -> str:
        # A statement that notifies for each row of `source` (id, status, previous).
        return (
            f"SELECT count(*) FROM (SELECT pg_notify('{self._channel}',"
            " id || ' ' || status || ' ' || previous) FROM " + source + ") AS sent"
        )

    async def create(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        columns = list(zip(*(_job_columns(job) for job in jobs), strict=True))
        named = ", ".join(repr(job.id) for job in jobs[:5]) + (", ..." if len(jobs) > 5 else "")
        sql = (
            f"WITH written AS (INSERT INTO {self._jobs} (id, {', '.join(_COLUMNS)})"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
            " $5::bigint[], $6::timestamptz[], $7::timestamptz[], $8::text[],"
            " $9::timestamptz[], $10::text[])"
            " RETURNING id, status, '-'::text AS previous) "
        ) + self._notify("written")
        ids = [job.id for job in jobs]
        outputs = [
            (job.id, encode_output(stdout or ""), encode_output(stderr or ""))
            for job in jobs
            for stdout, stderr in [job_output(job)]
            if stdout or stderr
        ]
        action = f"creating {len(jobs)} job(s) ({named})"
        try:
            # One transaction when some have output (the usual new job has none).
            async with (
                self._transaction(action) if outputs else self._connection(action)
            ) as conn:
                # One statement: all rows or none, a duplicate id (stored or within the
                # batch) failing the whole of it.
                await conn.fetchval(sql, ids, *columns)
                if outputs:
                    await conn.execute(
                        f"INSERT INTO {self._output} (job_id, stdout, stderr)"
                        " SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])",
                        *zip(*outputs, strict=True),
                    )
        except StorageError as exc:
            # (No driver yet: the store was never opened, and the error says so.)
            driver = self._asyncpg
            if driver is not None and isinstance(
                exc.__cause__, driver.exceptions.UniqueViolationError
            ):
                raise StorageError(f"{exc} (that job id already exists)") from exc.__cause__
            raise

    async def get(self, job_id: str) -> Job:
        async with self._connection(f"reading job {job_id!r}") as conn:
            row = await conn.fetchrow(f"{self._with_output} WHERE j.id = $1", job_id)
        if row is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return _load_full(*row)

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
            params.append(sorted(s.value for s in wanted))
            where.append(f"status = ANY(${len(params)}::text[])")
        if host is not None:
            params.append(host)
            where.append(f"host = ${len(params)}")
        sql = f"SELECT record FROM {self._jobs}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            params.append(limit)
            sql += f" LIMIT ${len(params)}"
        async with self._connection("listing jobs") as conn:
            rows = await conn.fetch(sql, *params)
        # The records alone: their output is neither read nor loaded.
        return [load_record(row[0], None, None) for row in rows]

    async def compare_and_set(
        self, job: Job, *, expected: JobStatus, expected_owner: str | None
    ) -> bool:
        # One statement: the UPDATE's WHERE is the comparison, and under READ
        # COMMITTED a racing writer waits for the row and then finds its WHERE false,
        # so exactly one wins. The notification goes with the write, and the scalar
        # read beside it tells a lost race from a missing job.
        # The output goes in the same statement, only if the record's write won.
        output, output_params = self._output_write(job)
        sql = (
            f"WITH written AS (UPDATE {self._jobs} SET {_SET_JOB}"
            " WHERE id = $1 AND status = $11 AND owner IS NOT DISTINCT FROM $12"
            f" RETURNING id, status, $11::text AS previous){output} "
            f"SELECT ({self._notify('written')}) AS written,"
            f" EXISTS (SELECT 1 FROM {self._jobs} WHERE id = $1) AS known"
        )
        async with self._connection(f"writing job {job.id!r}") as conn:
            row = await conn.fetchrow(
                sql, job.id, *_job_columns(job), expected.value, expected_owner, *output_params
            )
        if row["written"]:
            return True
        if not row["known"]:
            raise JobNotFound(f"no job with id {job.id!r}")
        return False

    def _output_write(self, job: Job) -> tuple[str, tuple[Any, ...]]:
        """What compare_and_set adds to its WITH for the job's output (a CTE on the
        rows of `written`, with parameters from $13), and its parameters: nothing for
        a listed job, whose stored output stays; a stream not loaded keeps its own."""
        stdout, stderr = job_output(job)
        if stdout is None and stderr is None:
            return "", ()
        written = "(SELECT id FROM written)"
        if not stdout and not stderr:
            if stdout is not None and stderr is not None:
                # The usual move of a job that has printed nothing yet: no row to find.
                return f", output AS (DELETE FROM {self._output} WHERE job_id IN {written})", ()
            column = "stdout" if stdout is not None else "stderr"
            return (
                f", output AS (UPDATE {self._output} SET {column} = ''::bytea"
                f" WHERE job_id IN {written} AND {column} <> ''::bytea)",
                (),
            )
        # The WHERE leaves alone a row that would not change: no new row version, and
        # its TOAST is not written again.
        new_out, new_err = "COALESCE($13::bytea, o.stdout)", "COALESCE($14::bytea, o.stderr)"
        return (
            f", output AS (INSERT INTO {self._output} AS o (job_id, stdout, stderr)"
            " SELECT id, COALESCE($13::bytea, ''::bytea), COALESCE($14::bytea, ''::bytea)"
            f" FROM written ON CONFLICT (job_id) DO UPDATE SET stdout = {new_out},"
            f" stderr = {new_err} WHERE o.stdout IS DISTINCT FROM {new_out}"
            f" OR o.stderr IS DISTINCT FROM {new_err})",
            (
                None if stdout is None else encode_output(stdout),
                None if stderr is None else encode_output(stderr),
            ),
        )

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
        now = as_utc(now)
        if not hosts or limit == 0:
            return []
        async with self._transaction("claiming pending jobs") as conn:
            # 1. The hosts' slots: an advisory lock per offered host, taken in the
            # order of their keys so that two claims never wait on each other in a
            # circle. Only claim_next adds jobs to a host, so holding these makes the
            # count below exact until commit, across processes.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1), key) FROM"
                " (SELECT DISTINCT hashtext(name) AS key FROM unnest($2::text[]) AS name)"
                " AS keys ORDER BY key",
                f"containerjobs.hosts.{self._schema}",
                builtins.list(hosts),
            )
            # 2. A new statement, so a new snapshot: it sees every claim committed
            # before the locks were granted to us.
            rows = await conn.fetch(
                f"SELECT host, count(*) FROM {self._jobs} WHERE status IN {_ACTIVE_SQL}"
                " AND host = ANY($1::text[]) GROUP BY host",
                builtins.list(hosts),
            )
            round_ = ClaimRound(
                manager_id,
                hosts,
                choose,
                active={row[0]: row[1] for row in rows},
                now=now,
                limit=limit,
            )
            # 3. The queue, in pages. SKIP LOCKED passes over the rows another claim
            # is deciding on (it may take them); a row claimed and committed since
            # our snapshot is re-checked and dropped, as it is no longer pending.
            after: tuple[int, datetime, str] | None = None
            page = 0
            while not round_.done:
                page = min(_CLAIM_PAGE, max(page * 2, self._free(round_, hosts, rows, limit)))
                batch = await self._pending_page(conn, round_.open_hosts(), now, after, page)
                for priority, created_at, job_id, record in batch:
                    after = (priority, created_at, job_id)
                    round_.offer(load_record(record, None, None))
                    if round_.done:
                        break
                if len(batch) < page:
                    break  # the end of the queue
            # 4. The writes, each notified, in the same transaction.
            if round_.claimed:
                await conn.executemany(
                    f"WITH written AS (UPDATE {self._jobs} SET {_SET_JOB} WHERE id = $1"
                    f" RETURNING id, status, '{_PENDING}'::text AS previous) "
                    + self._notify("written"),
                    [(job.id, *_job_columns(job)) for job in round_.claimed],
                )
                # With their output, as get returns them (a pending job has printed
                # nothing, unless someone wrote it an output: no row to find).
                outputs = await conn.fetch(
                    f"SELECT job_id, stdout, stderr FROM {self._output}"
                    " WHERE job_id = ANY($1::text[])",
                    [job.id for job in round_.claimed],
                )
                return with_output(round_.claimed, {row[0]: (row[1], row[2]) for row in outputs})
        return []

    @staticmethod
    def _free(round_: ClaimRound, hosts: Mapping[str, int], rows: Any, limit: int | None) -> int:
        # How many more jobs the round could take: a first page of that length.
        active: dict[str, int] = {row[0]: row[1] for row in rows}
        free: int = sum(max(0, most - active.get(name, 0)) for name, most in hosts.items())
        free -= len(round_.claimed)
        if limit is not None:
            free = min(free, limit - len(round_.claimed))
        return max(1, free)

    async def _pending_page(
        self,
        conn: Any,
        open_hosts: Sequence[str],
        now: datetime,
        after: tuple[int, datetime, str] | None,
        page: int,
    ) -> builtins.list[Any]:
        # Due retries, jobs pinned to no host or to an open one, after the last row
        # of the previous page in the queue's order (the jobs_queue index's).
        sql = (
            f"SELECT priority, created_at, id, record FROM {self._jobs}"
            f" WHERE status = '{_PENDING}' AND (retry_at IS NULL OR retry_at <= $1)"
            " AND (pinned_host IS NULL OR pinned_host = ANY($2::text[]))"
        )
        params: builtins.list[Any] = [now, builtins.list(open_hosts), page]
        if after is not None:
            sql += (
                " AND (priority < $4 OR (priority = $4 AND"
                " (created_at > $5 OR (created_at = $5 AND id > $6))))"
            )
            params += list(after)
        # NO KEY UPDATE is the lock our UPDATE of these rows takes anyway: it excludes
        # the other claims (which skip the row) and writers of the job, but not the
        # foreign-key checks of its log lines, as FOR UPDATE would.
        sql += " ORDER BY priority DESC, created_at, id LIMIT $3 FOR NO KEY UPDATE SKIP LOCKED"
        return builtins.list(await conn.fetch(sql, *params))

    async def active_jobs(self, *, owner: str | None = None) -> builtins.list[Job]:
        # With their output, as get: a running job has printed nothing yet (its lines
        # are in log_chunks until it ends), so no row to find.
        sql = f"{self._with_output} WHERE j.status IN {_ACTIVE_SQL}"
        params: builtins.list[Any] = []
        if owner is not None:
            sql += " AND j.owner = $1"
            params.append(owner)
        sql += " ORDER BY j.created_at DESC, j.id DESC"
        async with self._connection("listing active jobs") as conn:
            rows = await conn.fetch(sql, *params)
        return [_load_full(*row) for row in rows]

    async def count_active(self) -> dict[str, int]:
        async with self._connection("counting active jobs") as conn:
            rows = await conn.fetch(
                f"SELECT host, count(*) FROM {self._jobs}"
                f" WHERE status IN {_ACTIVE_SQL} AND host IS NOT NULL GROUP BY host"
            )
        return {row[0]: row[1] for row in rows}

    async def cancel_requests(self, owner: str) -> builtins.list[str]:
        """The ids of `owner`'s active jobs that someone asked to cancel: what a worker
        reads every round, without decoding a record."""
        async with self._connection("reading cancel requests") as conn:
            rows = await conn.fetch(
                f"SELECT id FROM {self._jobs} WHERE status IN {_ACTIVE_SQL} AND owner = $1"
                " AND (record::jsonb ->> 'cancel_requested')::boolean",
                owner,
            )
        return [row[0] for row in rows]

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The status of each of `job_ids` that exists, in one query: what the
        manager's waiters poll, without decoding a record."""
        async with self._connection(f"reading the status of {len(job_ids)} job(s)") as conn:
            rows = await conn.fetch(
                f"SELECT id, status FROM {self._jobs} WHERE id = ANY($1::text[])",
                list(job_ids),
            )
        return {row[0]: JobStatus(row[1]) for row in rows}

    async def count_by_status(self) -> dict[JobStatus, int]:
        async with self._connection("counting jobs") as conn:
            rows = await conn.fetch(f"SELECT status, count(*) FROM {self._jobs} GROUP BY status")
        counts = dict.fromkeys(JobStatus, 0)
        for status, count in rows:
            counts[JobStatus(status)] = count
        return counts

    async def delete(self, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0
        async with self._connection(f"deleting {len(job_ids)} job(s)") as conn:
            # Their lines go with them (ON DELETE CASCADE), in the same statement.
            deleted = await conn.fetchval(
                f"WITH gone AS (DELETE FROM {self._jobs} WHERE id = ANY($1::text[])"
                " RETURNING 1) SELECT count(*) FROM gone",
                builtins.list(job_ids),
            )
        return int(deleted or 0)

    async def finished_before(self, when: datetime, limit: int | None = None) -> builtins.list[str]:
        check_limit(limit)
        sql = (
            f"SELECT id FROM {self._jobs} WHERE status IN {_TERMINAL_SQL} AND completed_at < $1"
            " ORDER BY completed_at, id"
        )
        params: builtins.list[Any] = [as_utc(when)]
        if limit is not None:
            sql += " LIMIT $2"
            params.append(limit)
        async with self._connection("finding finished jobs") as conn:
            rows = await conn.fetch(sql, *params)
        return [row[0] for row in rows]

    # --- logs -----------------------------------------------------------------------

    async def append_logs(self, job_id: str, lines: Sequence[StoredLine]) -> None:
        if not lines:
            return
        # Encoded before a connection is taken; again inside only for a retried write.
        data = encode_chunk(lines)
        action = f"storing logs of job {job_id!r}"
        async with self._transaction(action) as conn:
            # Two writers of one job's lines take turns, so the next seq each reads
            # still holds when it inserts.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))",
                f"containerjobs.logs.{self._schema}",
                job_id,
            )
            row = await conn.fetchrow(
                f"SELECT EXISTS (SELECT 1 FROM {self._jobs} WHERE id = $1), ({self._last_end})",
                job_id,
            )
            if not row[0]:
                raise JobNotFound(f"cannot store logs of job {job_id!r}: no such job")
            next_seq = row[1] or 0
            check_log_sequence(job_id, lines, next_seq=next_seq)
            # Lines already stored (a retried write) keep their first text.
            new = lines[next_seq - lines[0].seq :]
            if not new:
                return
            if len(new) < len(lines):
                data = encode_chunk(new)
            await conn.execute(
                f"INSERT INTO {self._chunks} (job_id, first_seq, end_seq, data)"
                " VALUES ($1, $2, $3, $4)",
                job_id,
                next_seq,
                next_seq + len(new),
                data,
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
            f"SELECT first_seq, data FROM {self._chunks} WHERE job_id = $1 AND end_seq > $2"
            f" AND first_seq >= COALESCE((SELECT first_seq FROM {self._chunks}"
            " WHERE job_id = $1 AND first_seq <= $2 ORDER BY first_seq DESC LIMIT 1), 0)"
            " AND ($3::bigint IS NULL OR first_seq < $3) ORDER BY first_seq LIMIT $4"
        )
        # With a limit, a few chunks at a time (each batch starting where the last
        # ended), so a read stops once it has its lines; without, all in one.
        batch = None if limit is None else _READ_CHUNKS
        async with self._connection(f"reading logs of job {job_id!r}") as conn:
            while not window.full:
                rows = await conn.fetch(sql, job_id, window.start, window.stop, batch)
                for first_seq, data in rows:
                    window.add(first_seq, data)
                    if window.full:
                        break
                if batch is None or len(rows) < batch:
                    break
        return window.lines

    async def log_count(self, job_id: str) -> int:
        async with self._connection(f"counting logs of job {job_id!r}") as conn:
            count = await conn.fetchval(self._last_end, job_id)
        return int(count or 0)

    # --- manager leases ---------------------------------------------------------

    async def renew_lease(self, manager_id: str, ttl: float, *, info: str = "") -> None:
        # Checked as every store checks it (the same errors); timed by the server.
        lease_expiry(store_now(), ttl)
        async with self._connection(f"renewing the lease of manager {manager_id!r}") as conn:
            await conn.execute(
                f"INSERT INTO {self._managers} (manager_id, expires_at, renewed_at, info)"
                " VALUES ($1, clock_timestamp() + make_interval(secs => $2),"
                " clock_timestamp(), $3)"
                " ON CONFLICT (manager_id) DO UPDATE SET expires_at = excluded.expires_at,"
                " renewed_at = excluded.renewed_at, info = excluded.info",
                manager_id,
                float(ttl),
                info,
            )

    async def drop_lease(self, manager_id: str) -> None:
        async with self._connection(f"dropping the lease of manager {manager_id!r}") as conn:
            await conn.execute(f"DELETE FROM {self._managers} WHERE manager_id = $1", manager_id)

    async def live_managers(self) -> set[str]:
        async with self._connection("listing live managers") as conn:
            rows = await conn.fetch(
                f"SELECT manager_id FROM {self._managers} WHERE expires_at > clock_timestamp()"
            )
        return {row[0] for row in rows}

    # --- environment templates --------------------------------------------------

    async def save_template(self, template: EnvironmentTemplate) -> None:
        async with self._connection(f"saving template {template.name!r}") as conn:
            await conn.execute(
                f"INSERT INTO {self._templates} (name, text, description) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO UPDATE SET text = excluded.text,"
                " description = excluded.description",
                template.name,
                template.text,
                template.description,
            )

    async def get_template(self, name: str) -> EnvironmentTemplate:
        async with self._connection(f"reading template {name!r}") as conn:
            row = await conn.fetchrow(
                f"SELECT name, text, description FROM {self._templates} WHERE name = $1", name
            )
        if row is None:
            raise TemplateNotFound(f"no environment template named {name!r}")
        return EnvironmentTemplate(row[0], row[1], row[2])

    async def list_templates(self) -> builtins.list[EnvironmentTemplate]:
        async with self._connection("listing templates") as conn:
            rows = await conn.fetch(
                f"SELECT name, text, description FROM {self._templates} ORDER BY name"
            )
        return [EnvironmentTemplate(row[0], row[1], row[2]) for row in rows]

    async def delete_template(self, name: str) -> None:
        async with self._connection(f"deleting template {name!r}") as conn:
            gone = await conn.fetchval(
                f"WITH gone AS (DELETE FROM {self._templates} WHERE name = $1 RETURNING 1)"
                " SELECT count(*) FROM gone",
                name,
            )
        if not gone:
            raise TemplateNotFound(f"no environment template named {name!r}")

    # --- changes: LISTEN/NOTIFY ---------------------------------------------------

    async def changes(self) -> AsyncIterator[tuple[str, JobStatus, JobStatus | None]]:
        """Every job write to the store, by any process: ``(job id, status, previous
        status or None for a new job)``, as the writes commit.

        Ends when the store closes. Reconnects (every few seconds until it can)
        when the connection is lost; writes made meanwhile are not replayed.
        """
        if self._pool is None:
            raise StorageError(f"PostgreSQL store {self._where} is not open: call open() first")
        send, receive = anyio.create_memory_object_stream[Any](math.inf)
        self._listeners[send] = None
        lost = object()
        try:
            delay = 0.1
            while send in self._listeners:
                conn = await self._listen(send, lost)
                if conn is None:
                    # Not reachable now: wait, and try again while the store is open.
                    await anyio.sleep(delay)
                    delay = min(delay * 2, _RECONNECT_MAX_SECONDS)
                    continue
                delay = 0.1
                try:
                    while True:
                        with anyio.move_on_after(_LISTEN_PING_SECONDS) as idle:
                            try:
                                item = await receive.receive()
                            except anyio.EndOfStream:
                                return  # the store closed
                        if idle.cancelled_caught:
                            if not await self._alive(conn):
                                break
                            continue
                        if item is lost:
                            break
                        yield item
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._close_listener(conn)
                if send in self._listeners:
                    self._listeners[send] = None
        finally:
            self._listeners.pop(send, None)
            send.close()
            receive.close()

    async def _listen(self, send: Any, lost: object) -> Any:
        # A connection of its own (LISTEN is per session, and a pooled one is reset).
        def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            change = _parse_change(payload)
            if change is not None:
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    send.send_nowait(change)

        def on_lost(_conn: Any) -> None:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                send.send_nowait(lost)

        conn: Any = None
        try:
            with anyio.fail_after(self._connect_timeout + 1):
                conn = await self._asyncpg.connect(self._dsn, timeout=self._connect_timeout)
                conn.add_termination_listener(on_lost)
                await conn.add_listener(self._channel, on_notify)
        except self._driver_errors():
            if conn is not None:
                conn.terminate()
            return None
        if send not in self._listeners:  # closed while we connected
            conn.terminate()
            return None
        self._listeners[send] = conn
        return conn

    async def _alive(self, conn: Any) -> bool:
        try:
            with anyio.fail_after(self._connect_timeout):
                await conn.fetchval("SELECT 1")
        except self._driver_errors():
            return False
        return True

    async def _close_listener(self, conn: Any) -> None:
        try:
            with anyio.fail_after(2):
                await conn.close()
        except self._driver_errors():
            conn.terminate()


def _parse_change(payload: str) -> tuple[str, JobStatus, JobStatus | None] | None:
    job_id, _, rest = payload.rpartition(" ")
    job_id, _, status = job_id.rpartition(" ")
    previous = rest
    try:
        return job_id, JobStatus(status), None if previous == "-" else JobStatus(previous)
    except ValueError:
        return None  # a status this version does not know (a newer writer): not ours


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
# $1 is the id; the columns follow as $2..$10.
_SET_JOB = ", ".join(f"{column} = ${n}" for n, column in enumerate(_COLUMNS, start=2))


def _job_columns(job: Job) -> tuple[Any, ...]:
    # In the order of _COLUMNS.
    return (
        job.status.value,
        job.host,
        job.owner,
        job.spec.priority,
        job.created_at,
        job.completed_at,
        job.spec.host,
        job.retry_at,
        dump_record(job),
    )


def _load_full(record: str, stdout: bytes | None, stderr: bytes | None) -> Job:
    return load_record(record, decode_output(stdout), decode_output(stderr))
