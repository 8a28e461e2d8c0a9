"""`PostgresStorage` on the test bed's PostgreSQL server: the whole storage contract,
then what is PostgreSQL's alone (errors that never show the password, schema
versions, LISTEN/NOTIFY, claims from several processes).

Each test gets a database of its own, created through the test bed's user and dropped
after it; a further store in the same test gets a schema of its own in it.
"""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc
import asyncpg
import attrs
import pytest

import containerjobs as cj
from containerjobs._errors import StorageError
from containerjobs._models import JobStatus
from containerjobs.storage import PostgresStorage, StoredLine, dump_job
from containerjobs.storage import _chunks as chunks_module
from containerjobs.storage._postgres import _COLUMNS, MIGRATIONS, SCHEMA_VERSION, _job_columns
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

from .conftest import TESTBED_ENV, _read_env
from .test_log_chunks import seq_batches


def _base_url() -> str:
    url = os.environ.get("CJ_POSTGRES_URL")
    if url:
        return url
    if not TESTBED_ENV.is_file() or "CJ_POSTGRES_URL" not in _read_env(TESTBED_ENV):
        pytest.fail(
            f"the test bed has no PostgreSQL (no CJ_POSTGRES_URL in {TESTBED_ENV}):"
            " run scripts/testbed up",
            pytrace=False,
        )
    return _read_env(TESTBED_ENV)["CJ_POSTGRES_URL"]


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _password(url: str) -> str:
    password = urlsplit(url).password
    assert password, "the test bed's URL has a password"
    return password


async def _admin(sql: str) -> None:
    # Through the test bed's user, with a few tries: other test runs share the server
    # (and some of them end its sessions on purpose, as a restart would).
    for attempt in range(5):
        try:
            conn = await asyncpg.connect(_base_url())
            try:
                await conn.execute(sql)
            finally:
                await conn.close()
            return
        except asyncpg.DuplicateDatabaseError:
            if attempt == 0:
                raise
            return  # an earlier try did create it, and lost its answer
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if attempt == 4:
                raise
            await anyio.sleep(0.5)


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    name = f"cjtest_{uuid.uuid4().hex[:16]}"
    # template0: no session is ever connected to it, so another test run (or a
    # person) connected to template1 cannot make this fail.
    await _admin(f"CREATE DATABASE {name} TEMPLATE template0")
    try:
        yield _with_database(_base_url(), name)
    finally:
        await _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class TestPostgresStorage(StorageContract):
    persistent = True
    shared_across_processes = True
    reads_statuses = True

    @pytest.fixture(autouse=True)
    def _database(self, database: str) -> None:
        self.url = database
        self.stores_made = 0

    def _next_schema(self) -> str:
        # The first store of a test takes the default schema; any further one a
        # schema of its own, which is cheaper than a database per store (the
        # property tests make one per example).
        self.stores_made += 1
        return "containerjobs" if self.stores_made == 1 else f"store{self.stores_made}"

    async def make_storage(self, folder: Path) -> PostgresStorage:
        return PostgresStorage(self.url, schema=self._next_schema(), max_size=4)

    async def make_shared(self, folder: Path, count: int) -> list[PostgresStorage]:
        schema = self._next_schema()
        return [PostgresStorage(self.url, schema=schema, max_size=4) for _ in range(count)]


# --- PostgreSQL alone ----------------------------------------------------------------


_WITHOUT_ASYNCPG = textwrap.dedent(
    """
    import sys

    sys.modules["asyncpg"] = None  # as if the extra were not installed

    import anyio

    import containerjobs as cj

    async def main() -> None:
        store = cj.PostgresStorage("postgresql://me:s3cret-pw@127.0.0.1:1/jobs")
        try:
            await store.open()
        except cj.StorageError as exc:
            print(exc)

    anyio.run(main)
    """
)


async def test_containerjobs_imports_without_asyncpg_and_says_what_to_install() -> None:
    done = await anyio.run_process([sys.executable, "-c", _WITHOUT_ASYNCPG])
    assert "install containerjobs[postgres]" in done.stdout.decode()
    assert "s3cret-pw" not in done.stdout.decode()


async def opened(url: str, **options: Any) -> PostgresStorage:
    store = PostgresStorage(url, **options)
    await store.open()
    return store


def test_the_package_exports_it() -> None:
    assert cj.PostgresStorage is PostgresStorage
    assert "PostgresStorage" in cj.storage.__all__


def test_repr_masks_the_password() -> None:
    store = PostgresStorage("postgresql://me:s3cret-pw@db.example:5433/jobs")
    assert "s3cret-pw" not in repr(store)
    assert repr(store) == "PostgresStorage('postgresql://me:***@db.example:5433/jobs')"
    other = PostgresStorage("postgres://me@db/jobs?password=s3cret-pw&sslmode=require")
    assert "s3cret-pw" not in repr(other)


def test_a_dsn_of_another_kind_is_refused_without_its_password() -> None:
    with pytest.raises(ValueError, match="postgresql://") as caught:
        PostgresStorage("mysql://me:s3cret-pw@db/jobs")
    assert "s3cret-pw" not in str(caught.value)
    with pytest.raises(ValueError, match="port") as caught:
        PostgresStorage("postgresql://me:s3cret-pw@db:abc/jobs")
    assert "s3cret-pw" not in str(caught.value)
    with pytest.raises(ValueError, match="schema"):
        PostgresStorage("postgresql://db/jobs", schema="Robert'); DROP TABLE")


async def _open_fails(url: str) -> StorageError:
    store = PostgresStorage(url, connect_timeout=5)
    started = anyio.current_time()
    with pytest.raises(StorageError) as caught:
        await store.open()
    assert anyio.current_time() - started < 10
    await store.close()
    return caught.value


def _never_shows(error: BaseException, password: str) -> None:
    seen: BaseException | None = error
    while seen is not None:
        assert password not in str(seen), f"the password is in {seen!r}"
        assert password not in repr(seen)
        seen = seen.__cause__ or seen.__context__


async def test_a_closed_port_raises_storage_error_naming_where() -> None:
    url = "postgresql://cjtest:s3cret-pw@127.0.0.1:1/containerjobs_test"
    error = await _open_fails(url)
    assert "127.0.0.1:1/containerjobs_test" in str(error)
    assert isinstance(error.__cause__, OSError)
    _never_shows(error, "s3cret-pw")


async def test_a_wrong_password_raises_storage_error_without_it() -> None:
    parts = urlsplit(_base_url())
    wrong = "not-the-Pa55word"
    netloc = f"{parts.username}:{wrong}@{parts.hostname}:{parts.port}"
    error = await _open_fails(urlunsplit(parts._replace(netloc=netloc)))
    assert f"{parts.hostname}:{parts.port}" in str(error)
    assert "password authentication failed" in str(error)
    _never_shows(error, wrong)
    _never_shows(error, _password(_base_url()))


async def test_a_missing_database_raises_storage_error_naming_it() -> None:
    url = _with_database(_base_url(), f"cj_missing_{uuid.uuid4().hex[:8]}")
    error = await _open_fails(url)
    assert urlsplit(url).path.lstrip("/") in str(error)
    assert "does not exist" in str(error)
    _never_shows(error, _password(url))


async def test_use_before_open_is_a_storage_error(database: str) -> None:
    store = PostgresStorage(database)
    with pytest.raises(StorageError, match="not open"):
        await store.get("j")
    with pytest.raises(StorageError, match="open"):
        store.store_id  # noqa: B018


async def test_driver_errors_become_storage_errors(database: str) -> None:
    store = await opened(database)
    try:
        job = make_job("huge")
        object.__setattr__(job.spec, "priority", 2**70)
        with pytest.raises(StorageError) as caught:
            await store.create([job])
        _never_shows(caught.value, _password(database))
        assert await store.list() == []
        with pytest.raises(StorageError, match="already exists"):
            await store.create([make_job("a"), make_job("a")])
    finally:
        await store.close()


async def test_schema_is_versioned_and_opening_at_once_is_safe(database: str) -> None:
    stores = [PostgresStorage(database, max_size=2) for _ in range(6)]
    try:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.open)
        assert len({store.store_id for store in stores}) == 1
    finally:
        for store in stores:
            await store.close()
    conn = await asyncpg.connect(database)
    try:
        versions = await conn.fetch("SELECT version FROM containerjobs.schema_version")
        assert [row[0] for row in versions] == list(range(1, SCHEMA_VERSION + 1))
        await conn.execute(
            "INSERT INTO containerjobs.schema_version (version) VALUES ($1)", SCHEMA_VERSION + 1
        )
    finally:
        await conn.close()
    store = PostgresStorage(database)
    with pytest.raises(StorageError, match="newer"):
        await store.open()
    await store.close()


async def test_log_lines_keep_nul_and_every_character(database: str) -> None:
    store = await opened(database)
    try:
        await store.create([make_job("j")])
        text = "a\x00b \u2603 \U0001f600 \x1b[31m"
        line = cj.LogLine("stdout", text, NOW)
        await store.append_logs("j", [cj.storage.StoredLine(0, line)])
        [stored] = await store.read_logs("j")
        assert stored.line == line
        noisy = make_job("k").advance(JobStatus.PENDING, stdout="out\x00put")
        await store.create([noisy])
        assert (await store.get("k")).stdout == "out\x00put"
    finally:
        await store.close()


async def test_leases_follow_the_database_clock(database: str) -> None:
    store = await opened(database)
    try:
        await store.renew_lease("m", 30, info="pid 1")
        conn = await asyncpg.connect(database)
        try:
            left = await conn.fetchval(
                "SELECT extract(epoch FROM expires_at - clock_timestamp())"
                " FROM containerjobs.managers WHERE manager_id = 'm'"
            )
            assert 28 < float(left) <= 30
            # Moved into the past by the server's clock: dead, whatever ours says.
            await conn.execute(
                "UPDATE containerjobs.managers SET expires_at = clock_timestamp()"
                " - interval '1 second'"
            )
        finally:
            await conn.close()
        assert await store.live_managers() == set()
    finally:
        await store.close()


async def _next_change(changes: Any) -> tuple[str, JobStatus, JobStatus | None]:
    with anyio.fail_after(5):
        change: tuple[str, JobStatus, JobStatus | None] = await changes.__anext__()
        return change


async def test_changes_follow_every_job_write_of_any_store(database: str) -> None:
    listener, writer = await opened(database), await opened(database)
    changes = listener.changes()
    try:
        # The iterator listens from its first step on: write a moment after it.
        async def write_after_listening() -> None:
            await anyio.sleep(0.5)
            await writer.create([make_job("j")])

        async with anyio.create_task_group() as tg:
            tg.start_soon(write_after_listening)
            assert await _next_change(changes) == ("j", JobStatus.PENDING, None)
        [claimed] = await writer.claim_next("m", {"h": 1}, first, now=NOW)
        assert await _next_change(changes) == ("j", JobStatus.LAUNCHING, JobStatus.PENDING)
        running = claimed.advance(JobStatus.RUNNING)
        assert await writer.compare_and_set(
            running, expected=JobStatus.LAUNCHING, expected_owner="m"
        )
        assert await _next_change(changes) == ("j", JobStatus.RUNNING, JobStatus.LAUNCHING)
        # A lost race writes nothing, and says nothing.
        assert not await writer.compare_and_set(
            running, expected=JobStatus.LAUNCHING, expected_owner="m"
        )
        await writer.create([make_job("k")])
        assert await _next_change(changes) == ("k", JobStatus.PENDING, None)
    finally:
        await writer.close()
        await listener.close()
    # The store closed: the iterator ends.
    with anyio.fail_after(5), pytest.raises(StopAsyncIteration):
        await changes.__anext__()


async def test_changes_reconnect_after_losing_the_connection(database: str) -> None:
    listener, writer = await opened(database), await opened(database)
    changes = listener.changes()
    try:
        async def write(job_id: str) -> None:
            await anyio.sleep(0.5)
            await writer.create([make_job(job_id)])

        async with anyio.create_task_group() as tg:
            tg.start_soon(write, "before")
            assert (await _next_change(changes))[0] == "before"
        # The server ends the listening session, as a restart does.
        conn = await asyncpg.connect(database)
        try:
            ended = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
            assert ended == 1
        finally:
            await conn.close()

        async def write_until_heard() -> None:
            for n in range(40):
                await anyio.sleep(0.25)
                await writer.create([make_job(f"after{n}")])

        async with anyio.create_task_group() as tg:
            tg.start_soon(write_until_heard)
            with anyio.fail_after(10):
                job_id, _, _ = await changes.__anext__()
            tg.cancel_scope.cancel()
        assert job_id.startswith("after")
    finally:
        await writer.close()
        await listener.close()
        await changes.aclose()


_CLAIMER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime

    import anyio

    from containerjobs.storage import PostgresStorage

    async def main() -> None:
        store = PostgresStorage(sys.argv[1])
        await store.open()
        won = []
        try:
            for _ in range(15):
                claimed = await store.claim_next(
                    sys.argv[2], {"a": 3, "b": 2}, lambda job, loads: min(loads, key=loads.get),
                    now=datetime.now(UTC), limit=1,
                )
                won += [job.id for job in claimed]
        finally:
            await store.close()
        print(" ".join(won))

    anyio.run(main)
    """
)


async def test_claims_from_several_processes_keep_the_limits(database: str) -> None:
    store = await opened(database)
    try:
        await store.create([make_job(f"j{n:02}", created=n) for n in range(40)])
        won: list[str] = []

        async def run_one(n: int) -> None:
            done = await anyio.run_process(
                [sys.executable, "-c", _CLAIMER, database, f"m{n}"],
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )
            won.extend(done.stdout.decode().split())

        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(run_one, n)
        assert len(won) == len(set(won)) == 5
        assert await store.count_active() == {"a": 3, "b": 2}
        assert sorted(won) == [f"j{n:02}" for n in range(5)]
    finally:
        await store.close()


async def test_the_store_works_on_after_the_server_ends_its_sessions(database: str) -> None:
    # What a server restart does to the pool's connections: each is closed by the
    # server. The pool replaces them, and the next calls succeed.
    store = await opened(database, min_size=3, max_size=3)
    try:
        await store.create([make_job("a")])
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(store.get, "a")
        conn = await asyncpg.connect(database)
        try:
            ended = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert ended == 3
        finally:
            await conn.close()
        await anyio.sleep(0.2)
        for _ in range(6):
            assert (await store.get("a")).id == "a"
        await store.create([make_job("b")])
    finally:
        await store.close()


async def test_a_server_that_never_answers_raises_storage_error_in_time() -> None:
    # A host that takes the connection and says nothing (a firewall, a hung server):
    # open gives up after connect_timeout, and says where it tried.
    async def silent(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep(30)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, silent)
        store = PostgresStorage(
            f"postgresql://cjtest:s3cret-pw@127.0.0.1:{port}/jobs", connect_timeout=1
        )
        started = anyio.current_time()
        with pytest.raises(StorageError, match=f"127.0.0.1:{port}/jobs") as caught:
            await store.open()
        assert anyio.current_time() - started < 5
        _never_shows(caught.value, "s3cret-pw")
        tg.cancel_scope.cancel()
    await listener.aclose()


async def test_a_claim_passes_over_the_jobs_another_claim_is_deciding_on(database: str) -> None:
    # Another manager's claim, mid-way, holds the head of the queue: this one takes the
    # next jobs at once instead of waiting for it (FOR ... SKIP LOCKED).
    store = await opened(database)
    try:
        await store.create([make_job(f"j{n}", created=n) for n in range(4)])
        other = await asyncpg.connect(database)
        try:
            async with other.transaction():
                await other.execute(
                    "SELECT 1 FROM containerjobs.jobs WHERE id IN ('j0', 'j1')"
                    " FOR NO KEY UPDATE"
                )
                with anyio.fail_after(5):
                    claimed = await store.claim_next("m", {"h": 2}, first, now=NOW)
                assert [job.id for job in claimed] == ["j2", "j3"]
        finally:
            await other.close()
        claimed = await store.claim_next("m", {"h": 4}, first, now=NOW)
        assert [job.id for job in claimed] == ["j0", "j1"]
    finally:
        await store.close()


# --- log lines as chunks -------------------------------------------------------------


async def test_an_append_of_500_lines_writes_one_chunk(database: str) -> None:
    store = await opened(database)
    try:
        await store.create([make_job("j")])
        await store.append_logs("j", lines(0, 500))
        await store.append_logs("j", lines(300, 203))  # a retry, and 3 lines more
        conn = await asyncpg.connect(database)
        try:
            rows = await conn.fetch(
                "SELECT first_seq, end_seq FROM containerjobs.log_chunks ORDER BY first_seq"
            )
        finally:
            await conn.close()
        assert [tuple(row) for row in rows] == [(0, 500), (500, 503)]
        assert await store.read_logs("j", after=498, limit=3) == lines(499, 3)
    finally:
        await store.close()


async def test_a_read_with_a_limit_fetches_only_the_chunks_it_needs(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await opened(database)
    try:
        await store.create([make_job("j")])
        for start in range(0, 1000, 10):
            await store.append_logs("j", lines(start, 10))
        decoded: list[int] = []
        real = chunks_module._decode

        def counting(first_seq: int, data: str, lo: int, hi: int | None) -> list[StoredLine]:
            decoded.append(first_seq)
            return real(first_seq, data, lo, hi)

        monkeypatch.setattr(chunks_module, "_decode", counting)
        # 400 lines from the middle: 41 chunks, over two batches of them.
        assert await store.read_logs("j", after=504, limit=400) == lines(505, 400)
        assert decoded == list(range(500, 910, 10))
        decoded.clear()
        assert await store.read_logs("j", after=989, until=995) == lines(990, 5)
        assert decoded == [990]
    finally:
        await store.close()


async def test_the_chunks_take_less_than_3_bytes_per_byte_of_seq_output(database: str) -> None:
    # seq 1 1400000 as the manager stores it: batches of 500 lines, a few µs apart.
    # The table as a whole (heap, TOAST, primary key) against the text kept. With a
    # row per line it took some 10 times the text; it takes 0.6 (pglz compresses
    # each chunk), in about 8 s (3 of them making the lines).
    store = await opened(database)
    try:
        await store.create([make_job("j")])
        kept = 0
        for batch in seq_batches(1_400_000):
            kept += sum(len(stored.line.text) + 1 for stored in batch)
            await store.append_logs("j", batch)
        assert await store.log_count("j") == 1_400_000
        [middle] = await store.read_logs("j", after=699_998, limit=1)
        assert middle.line.text == "700000"
        conn = await asyncpg.connect(database)
        try:
            size = await conn.fetchval("SELECT pg_total_relation_size('containerjobs.log_chunks')")
        finally:
            await conn.close()
    finally:
        await store.close()
    assert size <= 3 * kept, f"{size} bytes for {kept} bytes of text ({size / kept:.2f} each)"


async def test_version_1_lines_become_chunks_with_every_byte(database: str) -> None:
    # A line was bytea then: NUL, any character, and a lone surrogate passed through
    # as its bytes. Each job's lines become chunks of up to 500 lines.
    texts = ["plain", "nul\x00 and\nnewline", "häßlich ✓ \U0001f600", "lone \ud800", ""]
    old = [
        StoredLine(seq, cj.LogLine("stderr" if seq % 2 else "stdout", texts[seq % 5],
                                   at(1000 - seq / 3)))
        for seq in range(1203)
    ]
    conn = await asyncpg.connect(database)
    try:
        async with conn.transaction():
            await conn.execute("CREATE SCHEMA containerjobs")
            await conn.execute(
                "CREATE TABLE containerjobs.schema_version (version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
            for statement in MIGRATIONS[0]:
                assert isinstance(statement, str)
                await conn.execute(statement.format(s="containerjobs"))
            await conn.execute("INSERT INTO containerjobs.schema_version (version) VALUES (1)")
            for job_id in ("j", "k"):
                await conn.execute(
                    f"INSERT INTO containerjobs.jobs (id, {', '.join(_COLUMNS)})"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    job_id,
                    *_job_columns(make_job(job_id)),
                )
            await conn.executemany(
                "INSERT INTO containerjobs.logs (job_id, seq, stream, ts, line)"
                " VALUES ($1, $2, $3, $4, $5)",
                [
                    (job_id, stored.seq, stored.line.stream, stored.line.timestamp,
                     stored.line.text.encode("utf-8", "surrogatepass"))
                    for job_id, count in (("j", 1203), ("k", 3))
                    for stored in old[:count]
                ],
            )
    finally:
        await conn.close()
    store = await opened(database)
    try:
        assert await store.read_logs("j") == old
        assert await store.read_logs("k") == old[:3]
        assert await store.read_logs("j", after=498, until=503) == old[499:503]
        assert await store.log_count("j") == 1203
        await store.append_logs("k", lines(2, 3))
        assert await store.read_logs("k", after=2) == lines(3, 2)
    finally:
        await store.close()
    conn = await asyncpg.connect(database)
    try:
        chunks = await conn.fetch(
            "SELECT job_id, first_seq, end_seq FROM containerjobs.log_chunks"
            " ORDER BY job_id, first_seq"
        )
        assert await conn.fetchval("SELECT to_regclass('containerjobs.logs')") is None
        assert (
            await conn.fetchval("SELECT max(version) FROM containerjobs.schema_version")
            == SCHEMA_VERSION
        )
    finally:
        await conn.close()
    assert [tuple(row) for row in chunks] == [
        ("j", 0, 500), ("j", 500, 1000), ("j", 1000, 1203), ("k", 0, 3), ("k", 3, 5)
    ]


async def test_version_2_records_give_their_output_to_job_output(database: str) -> None:
    # Up to version 2 a record held the job's output (NUL as \u0000, which no JSON
    # operator of PostgreSQL reads); it moves to job_output, and reads return the jobs
    # as they were.
    loud = full_job("loud", ["run"])
    odd = attrs.evolve(
        make_job("odd", status=JobStatus.COMPLETED, created=1, completed=2),
        stdout="nul\x00 \ud800 häßlich ✓\n",
        cpu_usage_percent=float("inf"),
    )
    quiet = make_job("quiet", created=2)
    conn = await asyncpg.connect(database)
    try:
        async with conn.transaction():
            await conn.execute("CREATE SCHEMA containerjobs")
            await conn.execute(
                "CREATE TABLE containerjobs.schema_version (version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
            for version, statements in enumerate(MIGRATIONS[:2], start=1):
                for step in statements:
                    if isinstance(step, str):
                        await conn.execute(step.format(s="containerjobs"))
                    else:
                        await step(conn, "containerjobs")
                await conn.execute(
                    "INSERT INTO containerjobs.schema_version (version) VALUES ($1)", version
                )
            for job in (loud, odd, quiet):
                await conn.execute(
                    f"INSERT INTO containerjobs.jobs (id, {', '.join(_COLUMNS)})"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    job.id,
                    *_job_columns(job)[:-1],
                    dump_job(job),  # the record as version 2 wrote it, output and all
                )
    finally:
        await conn.close()
    store = await opened(database)
    try:
        assert await store.get("loud") == loud
        assert await store.get("odd") == odd
        assert await store.get("quiet") == quiet
        assert await store.list() == [listed(quiet), listed(loud), listed(odd)]
    finally:
        await store.close()
    conn = await asyncpg.connect(database)
    try:
        records = dict(await conn.fetch("SELECT id, record FROM containerjobs.jobs"))
        kept = await conn.fetch("SELECT job_id FROM containerjobs.job_output ORDER BY job_id")
        version = await conn.fetchval("SELECT max(version) FROM containerjobs.schema_version")
    finally:
        await conn.close()
    assert version == SCHEMA_VERSION == 3
    assert [row[0] for row in kept] == ["loud", "odd"]  # a row only for a job with output
    assert '"stdout"' not in records["loud"] and '"stdout"' not in records["odd"]


async def test_a_write_that_keeps_the_output_leaves_its_row_alone(database: str) -> None:
    # A row PostgreSQL writes gets a new xmin (and a new version of its TOAST): the
    # output's row keeps its own through moves that leave the output as it is.
    big = "".join(f"line {n:07}\n" for n in range(400_000))
    job = attrs.evolve(make_job("j", status=JobStatus.RUNNING, host="h", owner="m"), stdout=big)
    store = await opened(database)
    try:
        await store.create([job])
        [seen] = await store.list()
        conn = await asyncpg.connect(database)
        try:

            async def versions() -> tuple[str, str]:
                row = await conn.fetchrow(
                    "SELECT j.xmin::text, o.xmin::text FROM containerjobs.jobs AS j"
                    " JOIN containerjobs.job_output AS o ON o.job_id = j.id WHERE j.id = 'j'"
                )
                return row[0], row[1]

            before = await versions()
            for new in (attrs.evolve(seen, error="listed"), attrs.evolve(job, error="same")):
                assert await store.compare_and_set(
                    new, expected=JobStatus.RUNNING, expected_owner="m"
                )
                after = await versions()
                assert after[0] != before[0] and after[1] == before[1]
                before = after
            changed = attrs.evolve(job, stdout=big + "one more\n")
            assert await store.compare_and_set(
                changed, expected=JobStatus.RUNNING, expected_owner="m"
            )
            assert (await versions())[1] != before[1]
            assert await store.get("j") == changed
        finally:
            await conn.close()
    finally:
        await store.close()
