"""The Storage contract: one suite, run against every backend.

A new backend joins by adding a parameter to the `storage` fixture. Tests after the
contract section are about SQLite alone (sharing a file, reopening it, its schema).
"""

from __future__ import annotations

import contextlib
import math
import re
import sqlite3
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import aiosqlite
import anyio
import attrs
import pytest

from containerjobs._errors import ContainerJobsError, JobNotFound, StorageError, TemplateNotFound
from containerjobs._models import (
    AttemptOutcome,
    EnvironmentTemplate,
    Job,
    JobSpec,
    JobStatus,
    LogLine,
    Mount,
    NetworkAttachment,
)
from containerjobs.storage import InMemoryStorage, SQLiteStorage, Storage, StoredLine
from containerjobs.storage._codec import parse_datetime
from containerjobs.storage._sqlite import MIGRATIONS, SCHEMA_VERSION, _job_columns

from .strategies import T0, at


@contextlib.asynccontextmanager
async def open_stores(path: Path, count: int) -> AsyncIterator[list[SQLiteStorage]]:
    """`count` SQLiteStorage objects on one file, as separate managers would hold."""
    stores = [SQLiteStorage(path) for _ in range(count)]
    try:
        for store in stores:
            await store.open()
        yield stores
    finally:
        for store in stores:
            await store.close()

BACKENDS = ["memory", "sqlite"]


def make_storage(kind: str, path: Path) -> Storage:
    if kind == "memory":
        return InMemoryStorage()
    if kind == "sqlite":
        return SQLiteStorage(path / "jobs.db")
    raise AssertionError(kind)


@pytest.fixture(params=BACKENDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    store = make_storage(request.param, tmp_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def make_job(
    job_id: str,
    *,
    status: JobStatus = JobStatus.PENDING,
    host: str | None = None,
    created: float = 0,
    completed: float | None = None,
    priority: int = 0,
    owner: str | None = None,
) -> Job:
    return Job(
        id=job_id,
        spec=JobSpec(image="alpine:3.18", command="true", priority=priority),
        status=status,
        host=host,
        created_at=at(created),
        completed_at=None if completed is None else at(completed),
        owner=owner,
    )


def full_job(job_id: str, command: str | list[str]) -> Job:
    # Every field of Job and JobSpec away from its default.
    spec = JobSpec(
        image="registry.example.com:5000/team/tool:1.2@sha256:" + "ab" * 32,
        command=command,
        name="nightly",
        memory_limit_mb=256,
        cpu_limit=1.5,
        timeout_seconds=90.5,
        environment={"TOKEN": "s3cret", "EMPTY": "", "UNICODE": "häßlich ✓"},
        environment_template="base",
        networks=["plain", NetworkAttachment("backend", ["db", "cache"])],
        working_directory="/work",
        user="1000:1000",
        labels={"team": "data", "containerjobs.extra": "yes"},
        mounts=[Mount("/srv/in", "/in"), Mount("/srv/out", "/out", read_only=False)],
        host="gpu-1",
        pull_policy="always",
        max_retries=2,
        priority=-7,
    )
    return Job(
        id=job_id,
        spec=spec,
        status=JobStatus.FAILED,
        name="nightly",
        host="gpu-1",
        container_id="c0ffee",
        exit_code=137,
        created_at=at(1.5),
        started_at=at(2.25),
        completed_at=at(60.000001),
        stdout='{"ok": false}\n\x1b[31mred\x1b[0m\r',
        stderr="oops\n",
        max_memory_bytes=2**40,
        cpu_usage_percent=12.5,
        oom_killed=True,
        error="killed: out of memory (limit 256 MB)",
        attempts=3,
        logs_truncated=True,
        owner="manager-a",
        cancel_requested=True,
        previous_attempts=(
            AttemptOutcome(1, "gpu-0", "dead", 1, "exit 1", at(0.5), at(1)),
            AttemptOutcome(2, None, None, None, "host gone", None, None),
        ),
    )


def lines(start: int, count: int, *, prefix: str = "line") -> list[StoredLine]:
    return [
        StoredLine(
            seq,
            LogLine("stdout" if seq % 3 else "stderr", f"{prefix} {seq}", at(seq / 1000)),
        )
        for seq in range(start, start + count)
    ]


# --- the contract ------------------------------------------------------------------


async def test_implements_the_protocol(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    assert storage.persistent is isinstance(storage, SQLiteStorage)


async def test_create_then_get_returns_every_field(storage: Storage) -> None:
    shell = full_job("shell", "echo hi && exit 3")
    exec_form = full_job("exec", ["python", "-c", "print('hi')"])
    await storage.create([shell, exec_form])
    got_shell, got_exec = await storage.get("shell"), await storage.get("exec")
    assert got_shell == shell
    assert got_exec == exec_form
    assert got_exec.spec.command == ("python", "-c", "print('hi')")
    assert got_shell.spec.command == "echo hi && exit 3"
    assert got_shell.created_at.tzinfo is not None


async def test_get_unknown_job_raises_job_not_found(storage: Storage) -> None:
    with pytest.raises(JobNotFound, match="nope") as caught:
        await storage.get("nope")
    assert isinstance(caught.value, KeyError)
    assert isinstance(caught.value, ContainerJobsError)


async def test_create_is_all_or_none_on_a_stored_duplicate(storage: Storage) -> None:
    await storage.create([make_job("a")])
    with pytest.raises(StorageError):
        await storage.create([make_job("b"), make_job("a", created=5)])
    with pytest.raises(JobNotFound):
        await storage.get("b")
    assert (await storage.get("a")).created_at == at(0)
    assert await storage.list() == [make_job("a")]


async def test_create_is_all_or_none_on_a_duplicate_within_the_batch(storage: Storage) -> None:
    with pytest.raises(StorageError):
        await storage.create([make_job("x"), make_job("y"), make_job("x")])
    assert await storage.list() == []
    await storage.create([])  # nothing to do, no error
    assert await storage.list() == []


async def test_list_is_newest_first_then_by_id(storage: Storage) -> None:
    await storage.create([make_job("old", created=1), make_job("new", created=3)])
    await storage.create([make_job("tie-a", created=2), make_job("tie-b", created=2)])
    assert [job.id for job in await storage.list()] == ["new", "tie-b", "tie-a", "old"]


async def test_list_filters_by_status_host_and_limit(storage: Storage) -> None:
    await storage.create(
        [
            make_job("p1", created=1),
            make_job("r1", status=JobStatus.RUNNING, host="h1", created=2),
            make_job("r2", status=JobStatus.RUNNING, host="h2", created=3),
            make_job("l1", status=JobStatus.LAUNCHING, host="h1", created=4),
            make_job("c1", status=JobStatus.COMPLETED, host="h1", created=5, completed=6),
        ]
    )

    async def ids(**kwargs: object) -> list[str]:
        return [job.id for job in await storage.list(**kwargs)]  # type: ignore[arg-type]

    assert await ids(status=JobStatus.RUNNING) == ["r2", "r1"]
    assert await ids(status=[JobStatus.RUNNING, JobStatus.LAUNCHING]) == ["l1", "r2", "r1"]
    assert await ids(status=(JobStatus.PENDING,)) == ["p1"]
    assert await ids(status=[]) == []
    assert await ids(status=JobStatus.CANCELLED) == []
    assert await ids(host="h1") == ["c1", "l1", "r1"]
    assert await ids(host="h1", status=JobStatus.RUNNING) == ["r1"]
    assert await ids(host="nowhere") == []
    assert await ids(limit=2) == ["c1", "l1"]
    assert await ids(limit=0) == []
    assert await ids(limit=None) == ["c1", "l1", "r2", "r1", "p1"]
    with pytest.raises(ValueError, match="limit"):
        await storage.list(limit=-1)


async def test_list_default_limit_is_100(storage: Storage) -> None:
    await storage.create([make_job(f"j{n:03}", created=n) for n in range(105)])
    listed = await storage.list()
    assert len(listed) == 100
    assert listed[0].id == "j104"


async def test_pending_is_by_priority_then_oldest(storage: Storage) -> None:
    await storage.create(
        [
            make_job("low-old", priority=-1, created=0),
            make_job("mid-new", priority=0, created=5),
            make_job("mid-old", priority=0, created=1),
            make_job("high", priority=10, created=9),
            make_job("running", status=JobStatus.RUNNING, host="h", priority=99, created=0),
            make_job("done", status=JobStatus.COMPLETED, priority=99, created=0, completed=1),
        ]
    )
    pending = await storage.pending(10)
    assert [job.id for job in pending] == ["high", "mid-old", "mid-new", "low-old"]
    assert [job.id for job in await storage.pending(2)] == ["high", "mid-old"]
    assert await storage.pending(0) == []


async def test_update_is_a_compare_and_set_on_status(storage: Storage) -> None:
    job = make_job("j")
    await storage.create([job])
    launching = job.advance(JobStatus.LAUNCHING, host="h1", started_at=at(1))

    assert await storage.update(launching, expected=JobStatus.RUNNING) is False
    assert await storage.get("j") == job  # unchanged by the refused write

    assert await storage.update(launching, expected=JobStatus.PENDING) is True
    assert await storage.get("j") == launching

    # The same status may be written again with new fields (a progress write).
    running = launching.advance(JobStatus.RUNNING, container_id="abc")
    assert await storage.update(running, expected=JobStatus.LAUNCHING) is True
    noted = attrs.evolve(running, stdout="partial\n")
    assert await storage.update(noted, expected=JobStatus.RUNNING) is True
    assert (await storage.get("j")).stdout == "partial\n"
    # The record and its indexed columns move together: filters see the new status.
    assert [j.id for j in await storage.list(status=JobStatus.RUNNING, host="h1")] == ["j"]


async def test_update_of_an_unknown_job_raises(storage: Storage) -> None:
    with pytest.raises(JobNotFound):
        await storage.update(make_job("ghost"), expected=JobStatus.PENDING)


async def test_racing_updates_have_exactly_one_winner(storage: Storage) -> None:
    job = make_job("j")
    await storage.create([job])
    results: list[bool] = []

    async def attempt(n: int) -> None:
        new = job.advance(JobStatus.CANCELLED, error=f"cancelled by {n}")
        results.append(await storage.update(new, expected=JobStatus.PENDING))

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(attempt, n)
    assert sorted(results) == [False] * 9 + [True]
    assert (await storage.get("j")).status is JobStatus.CANCELLED


async def test_concurrent_claims_respect_max_active(storage: Storage) -> None:
    jobs = [make_job(f"j{n:02}", created=n) for n in range(20)]
    await storage.create(jobs)
    results: dict[str, bool] = {}

    async def claim(job: Job) -> None:
        launching = job.advance(JobStatus.LAUNCHING, host="h1")
        results[job.id] = await storage.claim(launching, max_active=3)

    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(claim, job)

    assert sum(results.values()) == 3
    assert await storage.count_active() == {"h1": 3}
    claimed = {job.id for job in await storage.list(status=JobStatus.LAUNCHING)}
    assert claimed == {job_id for job_id, won in results.items() if won}
    assert len(await storage.pending(100)) == 17


async def test_claim_counts_only_its_own_host(storage: Storage) -> None:
    await storage.create(
        [
            make_job("busy", status=JobStatus.RUNNING, host="h1"),
            make_job("a"),
            make_job("b"),
        ]
    )
    a, b = await storage.get("a"), await storage.get("b")
    assert await storage.claim(a.advance(JobStatus.LAUNCHING, host="h1"), max_active=1) is False
    assert await storage.claim(a.advance(JobStatus.LAUNCHING, host="h2"), max_active=1) is True
    assert await storage.claim(b.advance(JobStatus.LAUNCHING, host="h2"), max_active=1) is False
    assert await storage.claim(b.advance(JobStatus.LAUNCHING, host="h1"), max_active=2) is True
    assert await storage.count_active() == {"h1": 2, "h2": 1}


async def test_claim_of_a_job_that_is_not_pending_is_refused(storage: Storage) -> None:
    job = make_job("j", status=JobStatus.CANCELLED, completed=1)
    await storage.create([job])
    stolen = attrs.evolve(job, status=JobStatus.LAUNCHING, host="h1")
    assert await storage.claim(stolen, max_active=10) is False
    assert await storage.get("j") == job
    with pytest.raises(JobNotFound):
        await storage.claim(make_job("ghost").advance(JobStatus.LAUNCHING, host="h1"), max_active=1)
    with pytest.raises(ValueError, match="host"):
        await storage.claim(make_job("j").advance(JobStatus.LAUNCHING), max_active=1)


async def test_take_over_is_a_compare_and_set_on_status_and_owner(storage: Storage) -> None:
    job = make_job("j", status=JobStatus.RUNNING, host="h1", owner="dead")
    await storage.create([job])
    adopted = attrs.evolve(job, owner="heir", container_id="abc")

    async def refused(**expected: object) -> None:
        assert await storage.take_over(adopted, **expected) is False  # type: ignore[arg-type]
        assert await storage.get("j") == job  # unchanged by the refused write

    await refused(expected=JobStatus.RUNNING, expected_owner="someone-else")
    await refused(expected=JobStatus.RUNNING, expected_owner=None)  # None is no wildcard
    await refused(expected=JobStatus.LAUNCHING, expected_owner="dead")

    assert await storage.take_over(adopted, expected=JobStatus.RUNNING, expected_owner="dead")
    assert await storage.get("j") == adopted  # written whole, like update
    # The old owner is no longer the owner: its own take-back loses.
    back = attrs.evolve(job, owner="dead")
    assert not await storage.take_over(back, expected=JobStatus.RUNNING, expected_owner="dead")
    assert (await storage.get("j")).owner == "heir"


async def test_take_over_of_a_job_with_no_owner(storage: Storage) -> None:
    job = make_job("j", status=JobStatus.LAUNCHING, host="h1")
    await storage.create([job])
    mine = attrs.evolve(job, owner="me")
    assert not await storage.take_over(mine, expected=JobStatus.LAUNCHING, expected_owner="me")
    assert await storage.take_over(mine, expected=JobStatus.LAUNCHING, expected_owner=None)
    assert await storage.get("j") == mine
    with pytest.raises(JobNotFound):
        await storage.take_over(make_job("ghost"), expected=JobStatus.PENDING, expected_owner=None)


async def test_racing_take_overs_have_exactly_one_winner(storage: Storage) -> None:
    job = make_job("j", status=JobStatus.RUNNING, host="h1", owner="dead")
    await storage.create([job])
    winners: list[str] = []

    async def adopt(n: int) -> None:
        mine = attrs.evolve(job, owner=f"heir-{n}")
        if await storage.take_over(mine, expected=JobStatus.RUNNING, expected_owner="dead"):
            winners.append(mine.owner or "")

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(adopt, n)
    assert len(winners) == 1
    assert (await storage.get("j")).owner == winners[0]


async def test_owner_column_follows_the_record(storage: Storage) -> None:
    # Backends may keep the owner beside the record to filter on: every way of
    # writing a job must move both together.
    await storage.create([make_job("p"), make_job("r", status=JobStatus.RUNNING, host="h1")])

    async def owned_by(owner: str) -> list[str]:
        return [job.id for job in await storage.active_jobs(owner=owner)]

    claimed = (await storage.get("p")).advance(JobStatus.LAUNCHING, host="h1", owner="m1")
    assert await storage.claim(claimed, max_active=5)
    assert await owned_by("m1") == ["p"]

    running = claimed.advance(JobStatus.RUNNING, owner="m2")
    assert await storage.update(running, expected=JobStatus.LAUNCHING)
    assert await owned_by("m1") == []
    assert await owned_by("m2") == ["p"]
    # take_over checks the owner that update wrote, not the one claim wrote.
    adopted = attrs.evolve(running, owner="m3")
    assert not await storage.take_over(adopted, expected=JobStatus.RUNNING, expected_owner="m1")
    assert await storage.take_over(adopted, expected=JobStatus.RUNNING, expected_owner="m2")
    assert await owned_by("m2") == []
    assert await owned_by("m3") == ["p"]

    r = await storage.get("r")
    assert await storage.take_over(
        attrs.evolve(r, owner="m3"), expected=JobStatus.RUNNING, expected_owner=None
    )
    assert await owned_by("m3") == ["r", "p"]


async def test_active_jobs_are_launching_or_running_of_anyone_or_one_owner(
    storage: Storage,
) -> None:
    assert await storage.active_jobs() == []
    await storage.create(
        [
            make_job("pending", created=1, owner="a"),
            make_job("l-a", status=JobStatus.LAUNCHING, host="h1", created=2, owner="a"),
            make_job("r-b", status=JobStatus.RUNNING, host="h2", created=3, owner="b"),
            make_job("r-none", status=JobStatus.RUNNING, host="h1", created=4),
            make_job("r-a", status=JobStatus.RUNNING, host="h2", created=5, owner="a"),
            make_job("done-a", status=JobStatus.COMPLETED, created=6, completed=7, owner="a"),
        ]
    )
    assert [job.id for job in await storage.active_jobs()] == ["r-a", "r-none", "r-b", "l-a"]
    assert [job.id for job in await storage.active_jobs(owner="a")] == ["r-a", "l-a"]
    assert [job.id for job in await storage.active_jobs(owner="b")] == ["r-b"]
    assert await storage.active_jobs(owner="nobody") == []
    # Whole records, as get returns them.
    assert (await storage.active_jobs(owner="b"))[0] == await storage.get("r-b")
    # No limit, unlike list.
    await storage.create(
        [make_job(f"many{n:03}", status=JobStatus.RUNNING, host="h3") for n in range(120)]
    )
    assert len(await storage.active_jobs()) == 124


async def test_count_active_and_count_by_status(storage: Storage) -> None:
    assert await storage.count_active() == {}
    assert await storage.count_by_status() == dict.fromkeys(JobStatus, 0)
    await storage.create(
        [
            make_job("p"),
            make_job("l", status=JobStatus.LAUNCHING, host="h1"),
            make_job("r1", status=JobStatus.RUNNING, host="h1"),
            make_job("r2", status=JobStatus.RUNNING, host="h2"),
            make_job("f", status=JobStatus.FAILED, host="h2", completed=1),
        ]
    )
    assert await storage.count_active() == {"h1": 2, "h2": 1}
    counts = await storage.count_by_status()
    assert set(counts) == set(JobStatus)
    assert counts[JobStatus.PENDING] == 1
    assert counts[JobStatus.LAUNCHING] == 1
    assert counts[JobStatus.RUNNING] == 2
    assert counts[JobStatus.FAILED] == 1
    assert counts[JobStatus.COMPLETED] == 0
    assert sum(counts.values()) == 5


async def test_logs_append_and_read_in_order(storage: Storage) -> None:
    await storage.create([make_job("j"), make_job("other")])
    assert await storage.log_count("j") == 0
    assert await storage.read_logs("j") == []
    first, second = lines(0, 4), lines(4, 6)
    await storage.append_logs("j", first)
    await storage.append_logs("j", second)
    await storage.append_logs("other", lines(0, 2, prefix="other"))

    everything = first + second
    assert await storage.read_logs("j") == everything
    assert await storage.log_count("j") == 10
    assert await storage.read_logs("j", after=3) == everything[4:]
    assert await storage.read_logs("j", after=3, until=6) == everything[4:6]
    assert await storage.read_logs("j", until=2) == everything[:2]
    assert await storage.read_logs("j", after=1, limit=3) == everything[2:5]
    assert await storage.read_logs("j", after=9) == []
    assert await storage.read_logs("j", after=2, until=3) == []
    assert await storage.read_logs("j", limit=0) == []
    # Streams and timestamps come back as written.
    assert [s.line.stream for s in everything[:4]] == ["stderr", "stdout", "stdout", "stderr"]
    assert await storage.log_count("other") == 2


async def test_logs_rewritten_seq_is_ignored(storage: Storage) -> None:
    await storage.create([make_job("j")])
    await storage.append_logs("j", lines(0, 3))
    # A retry that overlaps what is stored: the stored lines win, the new ones land.
    await storage.append_logs("j", lines(1, 4, prefix="retry"))
    stored = await storage.read_logs("j")
    assert [s.seq for s in stored] == [0, 1, 2, 3, 4]
    assert [s.line.text for s in stored] == ["line 0", "line 1", "line 2", "retry 3", "retry 4"]
    await storage.append_logs("j", lines(0, 5, prefix="again"))  # entirely old
    assert await storage.log_count("j") == 5
    await storage.append_logs("j", [])
    assert await storage.log_count("j") == 5


async def test_logs_refuse_a_gap(storage: Storage) -> None:
    await storage.create([make_job("j")])
    await storage.append_logs("j", lines(0, 2))
    with pytest.raises(ValueError, match="seq"):
        await storage.append_logs("j", lines(3, 2))
    with pytest.raises(ValueError, match="seq"):
        await storage.append_logs("j", [*lines(2, 1), *lines(4, 1)])
    assert await storage.log_count("j") == 2  # nothing of a refused batch is written


async def test_logs_of_an_unknown_job(storage: Storage) -> None:
    with pytest.raises(JobNotFound):
        await storage.append_logs("ghost", lines(0, 1))
    assert await storage.read_logs("ghost") == []
    assert await storage.log_count("ghost") == 0


async def test_last_logs_are_the_tail_in_order(storage: Storage) -> None:
    await storage.create([make_job("j"), make_job("other")])
    assert await storage.last_logs("j", 5) == []
    await storage.append_logs("j", lines(0, 10))
    await storage.append_logs("other", lines(0, 3, prefix="other"))
    everything = lines(0, 10)
    assert await storage.last_logs("j", 3) == everything[7:]
    assert await storage.last_logs("j", 1) == everything[9:]
    assert await storage.last_logs("j", 10) == everything
    assert await storage.last_logs("j", 50) == everything
    assert await storage.last_logs("j", 0) == []
    assert await storage.last_logs("other", 2) == lines(1, 2, prefix="other")
    assert await storage.last_logs("ghost", 5) == []
    with pytest.raises(ValueError, match="count"):
        await storage.last_logs("j", -1)


async def test_last_logs_tell_where_to_resume(storage: Storage) -> None:
    # What a resuming follower reads: the last timestamp and how many lines share it.
    await storage.create([make_job("j")])
    stamps = [at(1), at(2), at(2), at(3), at(3), at(3)]
    stored = [StoredLine(n, LogLine("stdout", f"l{n}", ts)) for n, ts in enumerate(stamps)]
    await storage.append_logs("j", stored)
    tail = await storage.last_logs("j", 4)
    assert tail == stored[2:]
    last = tail[-1].line.timestamp
    assert last == at(3)
    assert sum(1 for s in tail if s.line.timestamp == last) == 3


async def test_delete_removes_jobs_and_their_logs(storage: Storage) -> None:
    await storage.create([make_job("a"), make_job("b"), make_job("keep")])
    await storage.append_logs("a", lines(0, 5))
    await storage.append_logs("keep", lines(0, 2))

    assert await storage.delete(["a", "b", "a", "ghost"]) == 2
    for job_id in ("a", "b"):
        with pytest.raises(JobNotFound):
            await storage.get(job_id)
    assert await storage.read_logs("a") == []
    assert await storage.log_count("a") == 0
    assert await storage.log_count("keep") == 2
    assert await storage.delete([]) == 0

    # The id is free again, and its old lines do not come back with it.
    await storage.create([make_job("a")])
    assert await storage.read_logs("a") == []


async def test_finished_before(storage: Storage) -> None:
    await storage.create(
        [
            make_job("done-late", status=JobStatus.COMPLETED, completed=30),
            make_job("done-early", status=JobStatus.FAILED, completed=10),
            make_job("timeout", status=JobStatus.TIMEOUT, completed=20),
            make_job("cancelled", status=JobStatus.CANCELLED, completed=15),
            make_job("running", status=JobStatus.RUNNING, host="h", completed=1),
            make_job("pending"),
        ]
    )
    assert await storage.finished_before(at(100)) == [
        "done-early",
        "cancelled",
        "timeout",
        "done-late",
    ]
    assert await storage.finished_before(at(20)) == ["done-early", "cancelled"]
    assert await storage.finished_before(at(100), limit=1) == ["done-early"]
    assert await storage.finished_before(at(0)) == []
    # Any aware datetime is an instant; a naive one is refused.
    assert await storage.finished_before(at(16).astimezone()) == ["done-early", "cancelled"]
    with pytest.raises(ValueError, match="naive"):
        await storage.finished_before(datetime(2030, 1, 1))


async def test_templates_crud(storage: Storage) -> None:
    assert await storage.list_templates() == []
    web = EnvironmentTemplate("web", "PORT=80\n# comment\nHOST=0.0.0.0", "web defaults")
    base = EnvironmentTemplate("base", "A=1")
    await storage.save_template(web)
    await storage.save_template(base)
    assert await storage.get_template("web") == web
    assert await storage.list_templates() == [base, web]

    replaced = EnvironmentTemplate("web", "PORT=8080")
    await storage.save_template(replaced)
    assert await storage.get_template("web") == replaced
    assert len(await storage.list_templates()) == 2

    await storage.delete_template("web")
    assert await storage.list_templates() == [base]
    with pytest.raises(TemplateNotFound, match="web") as caught:
        await storage.get_template("web")
    assert isinstance(caught.value, KeyError)
    with pytest.raises(TemplateNotFound):
        await storage.delete_template("web")


async def test_leases_renew_drop_and_expire(storage: Storage) -> None:
    assert await storage.live_managers() == set()
    await storage.renew_lease("a", 60)
    await storage.renew_lease("b", 60, info="build-3 pid 1234")
    assert await storage.live_managers() == {"a", "b"}

    await storage.drop_lease("a")
    assert await storage.live_managers() == {"b"}
    await storage.drop_lease("a")  # already gone: no error
    await storage.drop_lease("never-seen")

    # A renewal sets the expiry anew, shorter as well as longer.
    await storage.renew_lease("b", 0.001)
    await anyio.sleep(0.05)
    assert await storage.live_managers() == set()
    await storage.renew_lease("b", 60)  # alive again
    assert await storage.live_managers() == {"b"}


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf, 1e300])
async def test_lease_ttl_must_be_a_positive_finite_time(storage: Storage, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await storage.renew_lease("a", ttl)
    assert await storage.live_managers() == set()


async def test_store_id_is_a_random_uuid4_fixed_per_store(storage: Storage, tmp_path: Path) -> None:
    store_id = storage.store_id
    assert re.fullmatch("[0-9a-f]{32}", store_id)
    assert uuid.UUID(hex=store_id).version == 4
    await storage.create([make_job("j")])
    assert storage.store_id == store_id

    (tmp_path / "other").mkdir()
    kind = "sqlite" if isinstance(storage, SQLiteStorage) else "memory"
    other = make_storage(kind, tmp_path / "other")
    await other.open()
    try:
        assert other.store_id != store_id
    finally:
        await other.close()


async def test_cancelled_create_stores_all_or_none(storage: Storage) -> None:
    # Cancel a large create at a few points in its life; whatever the timing, it
    # stored everything or nothing, and the store keeps working.
    for round_, delay in enumerate([0, 0.0005, 0.002, 0.01]):
        batch = [make_job(f"r{round_}-{n:04}", created=n) for n in range(500)]
        with anyio.move_on_after(delay):
            await storage.create(batch)
        stored = [job for job in await storage.list(limit=None) if job.id.startswith(f"r{round_}-")]
        assert len(stored) in (0, 500)
    await storage.create([make_job("after")])
    assert (await storage.get("after")).id == "after"


# --- SQLite alone ------------------------------------------------------------------


async def test_sqlite_two_stores_on_one_file_see_each_other(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    first, second = SQLiteStorage(path), SQLiteStorage(path)
    await first.open()
    await second.open()
    try:
        await first.create([make_job("j")])
        await first.append_logs("j", lines(0, 3))
        assert await second.get("j") == make_job("j")
        assert await second.read_logs("j") == lines(0, 3)

        # A status change through one is a lost race for the other.
        launching = make_job("j").advance(JobStatus.LAUNCHING, host="h1")
        assert await second.claim(launching, max_active=1) is True
        assert await first.update(launching, expected=JobStatus.PENDING) is False
        assert await first.count_active() == {"h1": 1}

        await second.save_template(EnvironmentTemplate("t", "A=1"))
        assert [t.name for t in await first.list_templates()] == ["t"]
        assert await second.delete(["j"]) == 1
        assert await first.log_count("j") == 0
    finally:
        await first.close()
        await second.close()


async def test_sqlite_claims_through_several_connections_respect_max_active(
    tmp_path: Path,
) -> None:
    async with open_stores(tmp_path / "shared.db", 4) as stores:
        jobs = [make_job(f"j{n:02}", created=n) for n in range(20)]
        await stores[0].create(jobs)
        wins: list[bool] = []

        async def claim(store: SQLiteStorage, job: Job) -> None:
            wins.append(await store.claim(job.advance(JobStatus.LAUNCHING, host="h"), max_active=3))

        async with anyio.create_task_group() as tg:
            for n, job in enumerate(jobs):
                tg.start_soon(claim, stores[n % 4], job)
        assert sum(wins) == 3
        assert await stores[1].count_active() == {"h": 3}


async def test_sqlite_take_overs_through_several_connections_have_one_winner(
    tmp_path: Path,
) -> None:
    async with open_stores(tmp_path / "shared.db", 4) as stores:
        job = make_job("j", status=JobStatus.RUNNING, host="h", owner="dead")
        await stores[0].create([job])
        wins: list[bool] = []

        async def adopt(store: SQLiteStorage, n: int) -> None:
            mine = attrs.evolve(job, owner=f"heir-{n}")
            wins.append(
                await store.take_over(mine, expected=JobStatus.RUNNING, expected_owner="dead")
            )

        async with anyio.create_task_group() as tg:
            for n in range(12):
                tg.start_soon(adopt, stores[n % 4], n)
        assert sorted(wins) == [False] * 11 + [True]


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


async def test_sqlite_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    # A file written before leases and the store id existed: its jobs stay, and it
    # gains the new tables and an id.
    path = tmp_path / "v1.db"
    job = full_job("old", ["run"])
    running = make_job("r", status=JobStatus.RUNNING, host="h", owner="m0")
    async with aiosqlite.connect(path, isolation_level=None) as db:
        for statement in MIGRATIONS[0]:
            await db.execute(statement)
        await db.execute("PRAGMA user_version = 1")
        for old in (job, running):
            await db.execute(
                "INSERT INTO jobs (id, status, host, owner, priority, created_at,"
                " completed_at, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (old.id, *_job_columns(old)),
            )
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
    assert version == SCHEMA_VERSION == 2


_CLAIMER = textwrap.dedent(
    """
    import sys, anyio
    from containerjobs._models import JobStatus
    from containerjobs.storage import SQLiteStorage

    async def main() -> None:
        store = SQLiteStorage(sys.argv[1])
        await store.open()
        won = 0
        try:
            for job in await store.list(status=JobStatus.PENDING, limit=None):
                launching = job.advance(JobStatus.LAUNCHING, host="shared")
                won += await store.claim(launching, max_active=5)
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

        async def run_one() -> None:
            done = await anyio.run_process([sys.executable, "-c", _CLAIMER, str(path)])
            results.append(int(done.stdout))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(run_one)
        assert sum(results) == 5
        assert await store.count_active() == {"shared": 5}
    finally:
        await store.close()


async def test_sqlite_reopening_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStorage(path)
    await store.open()
    job = full_job("j", ["run"])
    await store.create([job, make_job("p")])
    await store.append_logs("j", lines(0, 7))
    await store.save_template(EnvironmentTemplate("t", "A=1", "d"))
    await store.close()
    await store.close()  # idempotent

    again = SQLiteStorage(path)
    await again.open()
    try:
        assert await again.get("j") == job
        assert await again.read_logs("j") == lines(0, 7)
        assert await again.get_template("t") == EnvironmentTemplate("t", "A=1", "d")
        assert [p.id for p in await again.pending(10)] == ["p"]
    finally:
        await again.close()

    # The first object can be opened again too.
    await store.open()
    try:
        assert await store.log_count("j") == 7
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
    from containerjobs.storage._codec import format_datetime

    instants = [T0, T0 + timedelta(microseconds=1), T0 + timedelta(seconds=1)]
    texts = [format_datetime(i) for i in instants]
    assert texts == sorted(texts)
