"""`StorageContract`: the behaviour every `Storage` must have, as a pytest suite that a
backend's tests subclass. The built-in backends run it exactly so (see
``tests/test_storage_contract.py``).

Needs pytest and hypothesis, which this module imports; `containerjobs.testing`
imports it only when `StorageContract` is asked for.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import anyio
import attrs
import pytest
from anyio.lowlevel import checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .._errors import ContainerJobsError, JobNotFound, StorageError, TemplateNotFound
from .._models import (
    AttemptOutcome,
    EnvironmentTemplate,
    Job,
    JobSpec,
    JobStatus,
    LogLine,
    Mount,
    NetworkAttachment,
)
from .._secrets import Secret
from ..storage import Storage, StoredLine, dispatch_order

__all__ = ["StorageContract", "at", "full_job", "lines", "listed", "make_job"]

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """`T0` plus some seconds."""
    return T0 + timedelta(seconds=seconds)


def make_job(
    job_id: str,
    *,
    status: JobStatus = JobStatus.PENDING,
    host: str | None = None,
    created: float = 0,
    completed: float | None = None,
    priority: int = 0,
    owner: str | None = None,
    pinned: str | None = None,
    retry_at: datetime | None = None,
) -> Job:
    """A small job record: `created` and `completed` are seconds after `T0`."""
    return Job(
        id=job_id,
        spec=JobSpec(image="alpine:3.18", command="true", priority=priority, host=pinned),
        status=status,
        host=host,
        created_at=at(created),
        completed_at=None if completed is None else at(completed),
        owner=owner,
        retry_at=retry_at,
    )


def full_job(job_id: str, command: str | builtins.list[str]) -> Job:
    """A job with every field of `Job` and `JobSpec` away from its default."""
    spec = JobSpec(
        image="registry.example.com:5000/team/tool:1.2@sha256:" + "ab" * 32,
        command=command,
        name="nightly",
        memory_limit_mb=256,
        cpu_limit=1.5,
        timeout_seconds=90.5,
        environment={
            "TOKEN": "s3cret",
            "EMPTY": "",
            "UNICODE": "häßlich ✓",
            "API_KEY": Secret("api-key"),  # stored by its name
            "LOOKS_LIKE_ONE": '{"secret": "x"}',  # a str, and stays one
        },
        environment_template="base",
        # mypy's attrs plugin cannot solve converter=tuple's type variable.
        networks=["plain", NetworkAttachment("backend", ("db", "cache"))],  # type: ignore[arg-type]
        working_directory="/work",
        user="1000:1000",
        labels={"team": "data", "containerjobs.extra": "yes"},
        mounts=[Mount("/srv/in", "/in"), Mount("/srv/out", "/out", read_only=False)],
        host="gpu-1",
        pull_policy="always",
        placement=("node.labels.zone==a", "node.role!=manager"),
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
        retry_at=at(61),
        output_start=12,
    )


def listed(job: Job) -> Job:
    """`job` as `Storage.list` returns it: its output not loaded."""
    return attrs.evolve(job, stdout=None, stderr=None)


def lines(start: int, count: int, *, prefix: str = "line") -> builtins.list[StoredLine]:
    """`count` stored lines from seq `start`, of both streams."""
    return [
        StoredLine(
            seq,
            LogLine("stdout" if seq % 3 else "stderr", f"{prefix} {seq}", at(seq / 1000)),
        )
        for seq in range(start, start + count)
    ]


def first(job: Job, loads: Mapping[str, int]) -> str | None:
    """A `ChooseHost` that takes the first candidate."""
    return next(iter(loads))


NOW = at(1000)


class _Choices:
    """A `ChooseHost` that records what it was asked; it takes the least busy
    candidate (the first of those on a tie), and refuses the jobs in `refuse`."""

    def __init__(self, refuse: frozenset[str] = frozenset(), pick: str = "least") -> None:
        self.refuse = refuse
        self.pick = pick
        self.asked: builtins.list[tuple[str, builtins.list[tuple[str, int]]]] = []

    def __call__(self, job: Job, loads: Mapping[str, int]) -> str | None:
        self.asked.append((job.id, list(loads.items())))
        return self.decide(job, loads)

    def decide(self, job: Job, loads: Mapping[str, int]) -> str | None:
        if job.id in self.refuse:
            return None
        names = list(loads)
        if self.pick == "last":
            return names[-1]
        return min(names, key=lambda name: (loads[name], names.index(name)))


@st.composite
def _queues(draw: st.DrawFn) -> dict[str, Any]:
    # A small world: hosts offered with their limits (in some order), jobs already
    # holding slots, pending jobs with priorities, ties, pins and retries, a limit.
    names = draw(st.permutations(["a", "b", "c"]))
    offered = draw(st.integers(0, 3))
    hosts = {name: draw(st.integers(0, 3)) for name in names[:offered]}
    busy = draw(st.lists(st.sampled_from(["a", "b", "c", "gone"]), max_size=6))
    count = draw(st.integers(0, 12))
    ids = draw(st.permutations([f"p{n:02}" for n in range(count)]))
    pending = [
        make_job(
            job_id,
            priority=draw(st.integers(-1, 1)),
            created=draw(st.integers(0, 3)),
            pinned=draw(st.sampled_from([None, None, "a", "b", "c", "gone"])),
            retry_at=draw(
                st.sampled_from(
                    [None, None, NOW - timedelta(seconds=1), NOW, NOW + timedelta(seconds=1)]
                )
            ),
        )
        for job_id in ids
    ]
    return {
        "hosts": hosts,
        "busy": busy,
        "pending": pending,
        "limit": draw(st.none() | st.integers(0, 6)),
        "refuse": frozenset(draw(st.sets(st.sampled_from(ids))) if ids else ()),
        "pick": draw(st.sampled_from(["least", "last"])),
    }


def _model_claims(world: dict[str, Any], chooser: _Choices) -> builtins.list[tuple[str, str]]:
    # claim_next as the protocol's docstring states it, written out plainly.
    hosts: dict[str, int] = world["hosts"]
    active = Counter(world["busy"])
    claims: builtins.list[tuple[str, str]] = []
    for job in sorted(world["pending"], key=dispatch_order):
        open_hosts = [name for name in hosts if active[name] < hosts[name]]
        limit = world["limit"]
        if (limit is not None and len(claims) >= limit) or not open_hosts:
            break
        if job.retry_at is not None and job.retry_at > NOW:
            continue
        loads = {name: active[name] for name in open_hosts if job.spec.host in (None, name)}
        if not loads:
            continue
        chooser.asked.append((job.id, list(loads.items())))
        choice = chooser.decide(job, loads)
        if choice is None:
            continue
        active[choice] += 1
        claims.append((job.id, choice))
    return claims


F = TypeVar("F", bound=Callable[..., Any])


def _needs(capability: str) -> Callable[[F], F]:
    """Mark a check that only a store with `capability` (a class flag) runs."""

    def mark(test: F) -> F:
        test._needs = capability  # type: ignore[attr-defined]
        return test

    return mark


class StorageContract:
    """The behaviour suite of the `Storage` protocol: subclass it to test a backend.

    A subclass says how to make the store, and what it can do; every test of the
    contract then runs against it. Name it ``Test...`` so that pytest collects it:

    ```python
    from pathlib import Path

    from containerjobs.testing import StorageContract


    class TestMyStorage(StorageContract):
        persistent = True
        shared_across_processes = True

        async def make_storage(self, folder: Path) -> MyStorage:
            return MyStorage(folder / "jobs.db")

        async def make_shared(self, folder: Path, count: int) -> list[MyStorage]:
            return [MyStorage(folder / "jobs.db") for _ in range(count)]
    ```

    The tests are coroutines that use no async fixture, so any async pytest plugin
    runs them: pytest-asyncio in auto mode as they are, in strict mode with
    ``pytestmark = pytest.mark.asyncio`` on the subclass, anyio's plugin with
    ``pytestmark = pytest.mark.anyio``. Each test opens the stores it makes and
    closes them at its end.

    Capability flags (class attributes) say which tests apply; a test of a capability
    the store lacks is skipped, saying which flag skipped it:

    - `persistent`: what the store's own `persistent` must say; when True, records
      written through one store object are read back through another opened after
      the first is closed.
    - `shared_across_processes`: several store objects on one underlying store (as
      several processes hold) see each other's writes at once, and their
      `compare_and_set` and `claim_next` are atomic between them.
    - `reads_statuses`: the store has the optional ``statuses(job_ids)``, the
      status of many jobs in one read (what a manager's waiters poll), and
      ``cancel_requests(owner)``, the ids of an owner's active jobs with a cancel
      request (what a worker reads every round).
    """

    persistent: ClassVar[bool] = False
    shared_across_processes: ClassVar[bool] = False
    reads_statuses: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A check of a capability the store does not claim is not run at all (rather
        # than skipped): the store is judged on what it says it does.
        super().__init_subclass__(**kwargs)
        for name in dir(cls):
            needs = getattr(getattr(cls, name, None), "_needs", None)
            if needs is not None and not getattr(cls, needs):
                setattr(cls, name, None)

    async def make_storage(self, folder: Path) -> Storage:
        """A new, empty store, not opened yet. Required.

        `folder` is a new, empty folder for this store alone: a store kept in files
        keeps them there. Two calls never share a store.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must define `async def make_storage(self, folder)`"
        )

    async def make_shared(self, folder: Path, count: int) -> builtins.list[Storage]:
        """`count` store objects, not opened yet, on one new, empty underlying store.

        Required when `persistent` or `shared_across_processes` is True. `folder` is a
        new, empty folder for that store alone.
        """
        raise NotImplementedError(
            f"{type(self).__name__} says persistent={self.persistent} and "
            f"shared_across_processes={self.shared_across_processes}: it must define "
            "`async def make_shared(self, folder, count)`"
        )

    # --- plumbing ----------------------------------------------------------------------

    @staticmethod
    async def _new_folder(tmp_path: Path) -> Path:
        folder = anyio.Path(tmp_path) / f"store-{uuid.uuid4().hex[:12]}"
        await folder.mkdir()
        return Path(folder)

    @contextlib.asynccontextmanager
    async def opened(self, tmp_path: Path) -> AsyncIterator[Storage]:
        """A new store from `make_storage`, open for the block, closed after it."""
        store = await self.make_storage(await self._new_folder(tmp_path))
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    @contextlib.asynccontextmanager
    async def opened_shared(
        self, tmp_path: Path, count: int
    ) -> AsyncIterator[builtins.list[Storage]]:
        """`count` objects on one store from `make_shared`, open for the block."""
        assert self.shared_across_processes, "a check of a shared store, on one that is not"
        stores = await self.make_shared(await self._new_folder(tmp_path), count)
        assert len(stores) == count, f"make_shared made {len(stores)} stores, not {count}"
        try:
            for store in stores:
                await store.open()
            yield stores
        finally:
            for store in stores:
                await store.close()

    # --- the store itself -----------------------------------------------------------

    async def test_implements_the_protocol(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            assert isinstance(storage, Storage)
            assert storage.persistent is self.persistent, (
                f"the store says persistent={storage.persistent}, "
                f"{type(self).__name__}.persistent says {self.persistent}"
            )

    async def test_close_is_idempotent(self, tmp_path: Path) -> None:
        storage = await self.make_storage(await self._new_folder(tmp_path))
        await storage.open()
        await storage.close()
        await storage.close()

    async def test_store_id_is_a_random_uuid4_fixed_per_store(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage, self.opened(tmp_path) as other:
            store_id = storage.store_id
            assert re.fullmatch("[0-9a-f]{32}", store_id)
            assert uuid.UUID(hex=store_id).version == 4
            await storage.create([make_job("j")])
            assert storage.store_id == store_id
            assert other.store_id != store_id

    # --- jobs -------------------------------------------------------------------------

    async def test_create_then_get_returns_every_field(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            shell = full_job("shell", "echo hi && exit 3")
            exec_form = full_job("exec", ["python", "-c", "print('hi')"])
            await storage.create([shell, exec_form])
            got_shell, got_exec = await storage.get("shell"), await storage.get("exec")
            assert got_shell == shell
            assert got_exec == exec_form
            assert got_exec.spec.command == ("python", "-c", "print('hi')")
            assert got_shell.spec.command == "echo hi && exit 3"
            assert got_shell.created_at.tzinfo is not None

    async def test_get_unknown_job_raises_job_not_found(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            with pytest.raises(JobNotFound, match="nope") as caught:
                await storage.get("nope")
            assert isinstance(caught.value, KeyError)
            assert isinstance(caught.value, ContainerJobsError)

    async def test_create_is_all_or_none_on_a_stored_duplicate(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create([make_job("a")])
            with pytest.raises(StorageError):
                await storage.create([make_job("b"), make_job("a", created=5)])
            with pytest.raises(JobNotFound):
                await storage.get("b")
            assert (await storage.get("a")).created_at == at(0)
            assert await storage.list() == [listed(make_job("a"))]

    async def test_create_is_all_or_none_on_a_duplicate_within_the_batch(
        self, tmp_path: Path
    ) -> None:
        async with self.opened(tmp_path) as storage:
            with pytest.raises(StorageError):
                await storage.create([make_job("x"), make_job("y"), make_job("x")])
            assert await storage.list() == []
            await storage.create([])  # nothing to do, no error
            assert await storage.list() == []

    async def test_cancelled_create_stores_all_or_none(self, tmp_path: Path) -> None:
        # Cancel a large create at a few points in its life; whatever the timing, it
        # stored everything or nothing, and the store keeps working.
        async with self.opened(tmp_path) as storage:
            for round_, delay in enumerate([0, 0.0005, 0.002, 0.01]):
                batch = [make_job(f"r{round_}-{n:04}", created=n) for n in range(500)]
                with anyio.move_on_after(delay):
                    await storage.create(batch)
                stored = [
                    job
                    for job in await storage.list(limit=None)
                    if job.id.startswith(f"r{round_}-")
                ]
                assert len(stored) in (0, 500)
            await storage.create([make_job("after")])
            assert (await storage.get("after")).id == "after"

    async def test_list_is_newest_first_then_by_id(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create([make_job("old", created=1), make_job("new", created=3)])
            await storage.create([make_job("tie-a", created=2), make_job("tie-b", created=2)])
            assert [job.id for job in await storage.list()] == ["new", "tie-b", "tie-a", "old"]

    async def test_list_filters_by_status_host_and_limit(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create(
                [
                    make_job("p1", created=1),
                    make_job("r1", status=JobStatus.RUNNING, host="h1", created=2),
                    make_job("r2", status=JobStatus.RUNNING, host="h2", created=3),
                    make_job("l1", status=JobStatus.LAUNCHING, host="h1", created=4),
                    make_job("c1", status=JobStatus.COMPLETED, host="h1", created=5, completed=6),
                ]
            )

            async def ids(**kwargs: Any) -> builtins.list[str]:
                return [job.id for job in await storage.list(**kwargs)]

            assert await ids(status=JobStatus.RUNNING) == ["r2", "r1"]
            assert await ids(status=[JobStatus.RUNNING, JobStatus.LAUNCHING]) == [
                "l1",
                "r2",
                "r1",
            ]
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

    async def test_list_default_limit_is_100(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create([make_job(f"j{n:03}", created=n) for n in range(105)])
            listed = await storage.list()
            assert len(listed) == 100
            assert listed[0].id == "j104"

    # --- compare_and_set --------------------------------------------------------------

    async def test_compare_and_set_checks_status_and_owner(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            job = make_job("j", status=JobStatus.RUNNING, host="h1", owner="dead")
            await storage.create([job])
            adopted = attrs.evolve(job, owner="heir", container_id="abc")

            async def refused(expected: JobStatus, expected_owner: str | None) -> None:
                assert not await storage.compare_and_set(
                    adopted, expected=expected, expected_owner=expected_owner
                )
                assert await storage.get("j") == job  # unchanged by the refused write

            await refused(JobStatus.RUNNING, "someone-else")
            await refused(JobStatus.RUNNING, None)  # None is no wildcard
            await refused(JobStatus.LAUNCHING, "dead")

            assert await storage.compare_and_set(
                adopted, expected=JobStatus.RUNNING, expected_owner="dead"
            )
            assert await storage.get("j") == adopted  # written whole
            # The old owner is no longer the owner: its own write loses.
            back = attrs.evolve(job, owner="dead")
            assert not await storage.compare_and_set(
                back, expected=JobStatus.RUNNING, expected_owner="dead"
            )
            assert (await storage.get("j")).owner == "heir"

    async def test_compare_and_set_moves_the_status_and_every_field(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            job = make_job("j", status=JobStatus.LAUNCHING, host="h1", owner="m")
            await storage.create([job])
            running = job.advance(JobStatus.RUNNING, container_id="abc", started_at=at(1))
            assert await storage.compare_and_set(
                running, expected=JobStatus.LAUNCHING, expected_owner="m"
            )
            # The same status may be written again with new fields (a progress write).
            noted = attrs.evolve(running, stdout="partial\n")
            assert await storage.compare_and_set(
                noted, expected=JobStatus.RUNNING, expected_owner="m"
            )
            assert await storage.get("j") == noted
            # Whatever a backend keeps beside the record to filter on moves with it.
            assert [j.id for j in await storage.list(status=JobStatus.RUNNING, host="h1")] == ["j"]
            done = noted.advance(JobStatus.COMPLETED, completed_at=at(5), exit_code=0)
            assert await storage.compare_and_set(
                done, expected=JobStatus.RUNNING, expected_owner="m"
            )
            assert await storage.active_jobs() == []
            assert await storage.finished_before(at(6)) == ["j"]

    async def test_compare_and_set_of_a_job_with_no_owner(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            job = make_job("j", status=JobStatus.LAUNCHING, host="h1")
            await storage.create([job])
            mine = attrs.evolve(job, owner="me")
            assert not await storage.compare_and_set(
                mine, expected=JobStatus.LAUNCHING, expected_owner="me"
            )
            assert await storage.compare_and_set(
                mine, expected=JobStatus.LAUNCHING, expected_owner=None
            )
            assert await storage.get("j") == mine

    async def test_compare_and_set_of_an_unknown_job_raises(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            with pytest.raises(JobNotFound):
                await storage.compare_and_set(
                    make_job("ghost"), expected=JobStatus.PENDING, expected_owner=None
                )

    async def test_racing_compare_and_sets_have_exactly_one_winner(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            job = make_job("j", status=JobStatus.RUNNING, host="h1", owner="dead")
            await storage.create([job])
            winners: builtins.list[str] = []

            async def adopt(n: int) -> None:
                mine = attrs.evolve(job, owner=f"heir-{n}")
                if await storage.compare_and_set(
                    mine, expected=JobStatus.RUNNING, expected_owner="dead"
                ):
                    winners.append(f"heir-{n}")

            async with anyio.create_task_group() as tg:
                for n in range(10):
                    tg.start_soon(adopt, n)
            assert len(winners) == 1
            assert (await storage.get("j")).owner == winners[0]

    async def test_owner_follows_the_record(self, tmp_path: Path) -> None:
        # Backends may keep the owner beside the record to filter on: every way of
        # writing a job must move both together.
        async with self.opened(tmp_path) as storage:
            await storage.create(
                [make_job("p"), make_job("r", status=JobStatus.RUNNING, host="h1", created=1)]
            )

            async def owned_by(owner: str) -> builtins.list[str]:
                return [job.id for job in await storage.active_jobs(owner=owner)]

            [claimed] = await storage.claim_next("m1", {"h1": 5}, first, now=NOW)
            assert await owned_by("m1") == ["p"]

            running = claimed.advance(JobStatus.RUNNING, owner="m2")
            assert await storage.compare_and_set(
                running, expected=JobStatus.LAUNCHING, expected_owner="m1"
            )
            assert await owned_by("m1") == []
            assert await owned_by("m2") == ["p"]

            r = await storage.get("r")
            assert await storage.compare_and_set(
                attrs.evolve(r, owner="m2"), expected=JobStatus.RUNNING, expected_owner=None
            )
            assert await owned_by("m2") == ["r", "p"]

    # --- claim_next -------------------------------------------------------------------

    async def test_claim_next_takes_the_queue_in_dispatch_order(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create(
                [
                    make_job("low-old", priority=-1, created=0),
                    make_job("mid-new", priority=0, created=5),
                    make_job("mid-old-b", priority=0, created=1),
                    make_job("mid-old-a", priority=0, created=1),
                    make_job("high", priority=10, created=9),
                    make_job("running", status=JobStatus.RUNNING, host="x", priority=99),
                    make_job("done", status=JobStatus.COMPLETED, priority=99, completed=1),
                ]
            )
            claimed = await storage.claim_next("m", {"h": 3}, first, now=NOW)
            assert [job.id for job in claimed] == ["high", "mid-old-a", "mid-old-b"]
            claimed = await storage.claim_next("m", {"h": 5}, first, now=NOW)
            assert [job.id for job in claimed] == ["mid-new", "low-old"]
            assert await storage.claim_next("m", {"h": 10}, first, now=NOW) == []

    async def test_claim_next_writes_the_launching_record_it_returns(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            job = attrs.evolve(
                full_job("j", ["run"]),
                status=JobStatus.PENDING,
                host=None,
                owner=None,
                completed_at=None,
                retry_at=at(1),
            )
            await storage.create([job])
            [claimed] = await storage.claim_next("m1", {"gpu-1": 1}, first, now=NOW)
            assert claimed == job.advance(
                JobStatus.LAUNCHING, host="gpu-1", owner="m1", attempts=job.attempts + 1
            )
            assert await storage.get("j") == claimed
            assert await storage.active_jobs(owner="m1") == [claimed]
            assert await storage.count_active() == {"gpu-1": 1}

    async def test_claim_next_keeps_each_hosts_limit_counting_every_owner(
        self, tmp_path: Path
    ) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create(
                [
                    make_job("r1", status=JobStatus.RUNNING, host="h1", owner="other"),
                    make_job("l1", status=JobStatus.LAUNCHING, host="h1"),
                    make_job("r2", status=JobStatus.RUNNING, host="h2", owner="m"),
                    make_job("done", status=JobStatus.FAILED, host="h1", completed=1),
                    *[make_job(f"p{n}", created=n) for n in range(10)],
                ]
            )
            claimed = await storage.claim_next("m", {"h1": 3, "h2": 2}, first, now=NOW)
            assert [(job.id, job.host) for job in claimed] == [("p0", "h1"), ("p1", "h2")]
            assert await storage.count_active() == {"h1": 3, "h2": 2}
            # Full: nothing more, whoever asks.
            assert await storage.claim_next("n", {"h1": 3, "h2": 2}, first, now=NOW) == []
            # A host over its limit (lowered since) has no free slot, not a negative one.
            claimed = await storage.claim_next("m", {"h1": 1, "h3": 1}, first, now=NOW)
            assert [(job.id, job.host) for job in claimed] == [("p2", "h3")]
            assert await storage.count_active() == {"h1": 3, "h2": 2, "h3": 1}

    async def test_claim_next_asks_choose_among_the_free_hosts_in_order(
        self, tmp_path: Path
    ) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create(
                [
                    make_job("busy", status=JobStatus.RUNNING, host="b"),
                    make_job("full", status=JobStatus.RUNNING, host="c"),
                    make_job("j1", created=1),
                    make_job("j2", created=2),
                    make_job("j3", created=3),
                ]
            )
            chooser = _Choices()
            claimed = await storage.claim_next("m", {"c": 1, "b": 3, "a": 1}, chooser, now=NOW)
            # The candidates have a free slot, come in the order offered, and count the
            # jobs this call claimed already.
            assert chooser.asked == [
                ("j1", [("b", 1), ("a", 0)]),
                ("j2", [("b", 1)]),
                ("j3", [("b", 2)]),
            ]
            assert [(job.id, job.host) for job in claimed] == [
                ("j1", "a"),
                ("j2", "b"),
                ("j3", "b"),
            ]

    async def test_claim_next_leaves_what_choose_refuses_pending(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create([make_job(f"j{n}", created=n) for n in range(3)])
            chooser = _Choices(refuse=frozenset({"j0"}))
            claimed = await storage.claim_next("m", {"h": 1}, chooser, now=NOW)
            assert [job.id for job in claimed] == ["j1"]
            assert (await storage.get("j0")).status is JobStatus.PENDING
            assert [job_id for job_id, _ in chooser.asked] == ["j0", "j1"]

    async def test_claim_next_reads_past_many_jobs_it_cannot_place(self, tmp_path: Path) -> None:
        # More refusals than a backend would read at once: it must read on.
        async with self.opened(tmp_path) as storage:
            refused = [make_job(f"no{n:03}", priority=1, created=n) for n in range(300)]
            await storage.create([*refused, make_job("yes"), make_job("too", created=1)])
            chooser = _Choices(refuse=frozenset(job.id for job in refused))
            claimed = await storage.claim_next("m", {"h": 1}, chooser, now=NOW)
            assert [job.id for job in claimed] == ["yes"]
            assert len(chooser.asked) == 301

    async def test_claim_next_skips_retries_not_yet_due(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create(
                [
                    make_job("later", priority=5, retry_at=NOW + timedelta(seconds=1)),
                    make_job("due", priority=5, created=1, retry_at=NOW),
                    make_job("past", created=2, retry_at=NOW - timedelta(days=1)),
                    make_job("plain", created=3),
                ]
            )
            claimed = await storage.claim_next("m", {"h": 10}, first, now=NOW)
            assert [job.id for job in claimed] == ["due", "past", "plain"]
            later = await storage.claim_next("m", {"h": 10}, first, now=NOW + timedelta(seconds=1))
            assert [job.id for job in later] == ["later"]

    async def test_claim_next_does_not_let_pinned_jobs_block_others(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create(
                [
                    make_job("busy", status=JobStatus.RUNNING, host="gpu"),
                    # Many jobs at the head of the queue for a full host, an unknown
                    # one, and one not offered: none of them holds back the others.
                    *[make_job(f"gpu{n:03}", priority=9, pinned="gpu") for n in range(150)],
                    *[make_job(f"gone{n:03}", priority=8, pinned="gone") for n in range(150)],
                    make_job("mine", priority=7, pinned="cpu"),
                    make_job("free", priority=0, created=1),
                ]
            )
            claimed = await storage.claim_next("m", {"gpu": 1, "cpu": 5}, first, now=NOW)
            assert [(job.id, job.host) for job in claimed] == [("mine", "cpu"), ("free", "cpu")]
            # Once the pinned host has room, its jobs come first again.
            busy = await storage.get("busy")
            assert await storage.compare_and_set(
                busy.advance(JobStatus.COMPLETED, completed_at=at(1)),
                expected=JobStatus.RUNNING,
                expected_owner=None,
            )
            claimed = await storage.claim_next("m", {"gpu": 1, "cpu": 5}, first, now=NOW)
            assert [(job.id, job.host) for job in claimed] == [("gpu000", "gpu")]

    async def test_claim_next_stops_at_its_limit(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create([make_job(f"j{n}", created=n) for n in range(5)])
            assert await storage.claim_next("m", {"h": 5}, first, now=NOW, limit=0) == []
            claimed = await storage.claim_next("m", {"h": 5}, first, now=NOW, limit=2)
            assert [job.id for job in claimed] == ["j0", "j1"]
            assert await storage.claim_next("m", {}, first, now=NOW) == []
            with pytest.raises(ValueError, match="limit"):
                await storage.claim_next("m", {"h": 5}, first, now=NOW, limit=-1)
            with pytest.raises(ValueError, match="naive"):
                await storage.claim_next("m", {"h": 5}, first, now=datetime(2030, 1, 1))
            assert len(await storage.list(status=JobStatus.PENDING)) == 3

    async def test_claim_next_claims_nothing_when_choose_fails(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create([make_job(f"j{n}", created=n) for n in range(3)])

            def wrong(job: Job, loads: Mapping[str, int]) -> str | None:
                return "h" if job.id != "j2" else "elsewhere"

            with pytest.raises(ValueError, match="elsewhere"):
                await storage.claim_next("m", {"h": 5}, wrong, now=NOW)

            class Broken(Exception):
                pass

            def broken(job: Job, loads: Mapping[str, int]) -> str | None:
                if job.id == "j1":
                    raise Broken
                return "h"

            with pytest.raises(Broken):
                await storage.claim_next("m", {"h": 5}, broken, now=NOW)
            # Undone whole: the jobs before the failure are not claimed either.
            assert len(await storage.list(status=JobStatus.PENDING)) == 3
            assert await storage.count_active() == {}

    async def test_racing_claims_keep_the_limits_and_claim_each_job_once(
        self, tmp_path: Path
    ) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create([make_job(f"j{n:02}", created=n) for n in range(20)])
            await self._race_claims([storage] * 8, {"h1": 3, "h2": 2})

    async def test_cancelled_claim_next_claims_whole_jobs_within_the_limits(
        self, tmp_path: Path
    ) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create([make_job(f"j{n:03}", created=n) for n in range(300)])
            hosts = {"h1": 40, "h2": 40}
            for delay in [0, 0.0002, 0.001, 0.005]:
                with anyio.move_on_after(delay):
                    await storage.claim_next(f"m-{delay}", hosts, first, now=NOW)
            claimed = await storage.list(status=JobStatus.LAUNCHING, limit=None)
            for job in claimed:
                assert job.host in hosts and job.owner is not None and job.attempts == 1
            active = await storage.count_active()
            assert all(active[host] <= most for host, most in hosts.items() if host in active)
            assert sum(active.values()) == len(claimed)
            # And the store goes on working.
            more = await storage.claim_next("after", hosts, first, now=NOW)
            assert len(more) == 80 - len(claimed)

    # The store is made inside the test, one per example, so tmp_path (a function-scoped
    # fixture) is shared harmlessly. Every backend's subclass runs this one method: the
    # queues it finds are worth replaying against any backend, so "differing
    # executors" is what is meant. deadline: a store's speed is no part of the contract.
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
            HealthCheck.too_slow,
        ],
    )
    @given(world=_queues())
    async def test_claim_next_is_the_documented_walk_of_the_queue(
        self, tmp_path: Path, world: dict[str, Any]
    ) -> None:
        # Any queue, hosts and limit: the store claims what the protocol's steps say,
        # asking `choose` about the same jobs with the same candidates.
        expected_asks = _Choices(world["refuse"], world["pick"])
        expected = _model_claims(world, expected_asks)
        async with self.opened(tmp_path) as storage:
            busy = [
                make_job(f"busy{n}", status=JobStatus.RUNNING, host=host, owner="other")
                for n, host in enumerate(world["busy"])
            ]
            await storage.create([*busy, *world["pending"]])
            chooser = _Choices(world["refuse"], world["pick"])
            claimed = await storage.claim_next(
                "m", world["hosts"], chooser, now=NOW, limit=world["limit"]
            )
            assert [(job.id, job.host) for job in claimed] == expected
            assert chooser.asked == expected_asks.asked
            won = {job.id for job in claimed}
            for job in world["pending"]:
                stored = await storage.get(job.id)
                if job.id in won:
                    assert stored.status is JobStatus.LAUNCHING
                    assert (stored.owner, stored.attempts) == ("m", job.attempts + 1)
                else:
                    assert stored == job

    async def _race_claims(self, stores: builtins.list[Storage], hosts: dict[str, int]) -> None:
        # Several managers claiming at once, through the given store objects: the
        # hosts fill exactly, and no job goes to two of them.
        claims: builtins.list[Job] = []

        async def manager(n: int, store: Storage) -> None:
            for _ in range(3):
                claims.extend(await store.claim_next(f"m{n}", hosts, first, now=NOW))
                await checkpoint()

        async with anyio.create_task_group() as tg:
            for n, store in enumerate(stores):
                tg.start_soon(manager, n, store)
        assert len(claims) == sum(hosts.values())
        assert len({job.id for job in claims}) == len(claims)
        assert Counter(job.host for job in claims) == Counter(hosts)
        assert await stores[0].count_active() == hosts
        for job in claims:
            assert await stores[-1].get(job.id) == job

    # --- reading ----------------------------------------------------------------------

    async def test_active_jobs_are_launching_or_running_of_anyone_or_one_owner(
        self, tmp_path: Path
    ) -> None:
        async with self.opened(tmp_path) as storage:
            assert await storage.active_jobs() == []
            await storage.create(
                [
                    make_job("pending", created=1, owner="a"),
                    make_job("l-a", status=JobStatus.LAUNCHING, host="h1", created=2, owner="a"),
                    make_job("r-b", status=JobStatus.RUNNING, host="h2", created=3, owner="b"),
                    make_job("r-none", status=JobStatus.RUNNING, host="h1", created=4),
                    make_job("r-a", status=JobStatus.RUNNING, host="h2", created=5, owner="a"),
                    make_job(
                        "done-a", status=JobStatus.COMPLETED, created=6, completed=7, owner="a"
                    ),
                ]
            )
            assert [job.id for job in await storage.active_jobs()] == [
                "r-a",
                "r-none",
                "r-b",
                "l-a",
            ]
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

    # --- output: read with the record by get, left out by list -----------------------

    async def test_list_leaves_the_output_out_and_get_reads_it(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            loud = full_job("loud", ["run"])  # output on both streams
            quiet = make_job("quiet", status=JobStatus.COMPLETED, created=2, completed=3)
            await storage.create([loud, quiet])
            everything = await storage.list(limit=None)
            assert everything == [listed(quiet), listed(loud)]
            for job in everything:
                # Never mistaken for a job that printed nothing, the quiet one included.
                assert not job.output_loaded
                for stream in ("stdout", "stderr"):
                    with pytest.raises(ContainerJobsError, match=f"{stream} is not loaded"):
                        getattr(job, stream)
                with pytest.raises(ContainerJobsError, match="get"):
                    job.clean_output  # noqa: B018
            assert await storage.list(status=JobStatus.FAILED, host="gpu-1") == [listed(loud)]
            got_loud, got_quiet = await storage.get("loud"), await storage.get("quiet")
            assert got_loud == loud and got_loud.output_loaded
            assert got_quiet == quiet and got_quiet.output_loaded
            assert (got_quiet.stdout, got_quiet.stderr) == ("", "")

    async def test_active_jobs_and_claim_next_read_the_output(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            running = attrs.evolve(
                make_job("r", status=JobStatus.RUNNING, host="h", owner="m"), stdout="so far\n"
            )
            pending = attrs.evolve(make_job("p", created=1), stderr="a note\n")
            await storage.create([running, pending, make_job("q", created=2)])
            assert await storage.active_jobs() == [running]
            claimed = await storage.claim_next("m2", {"h2": 2}, first, now=NOW)
            assert [job.id for job in claimed] == ["p", "q"]
            assert claimed[0].stderr == "a note\n" and claimed[0] == await storage.get("p")
            assert claimed[1].output_loaded and claimed[1] == await storage.get("q")

    async def test_writing_a_listed_job_keeps_its_stored_output(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            job = attrs.evolve(
                make_job("j", status=JobStatus.RUNNING, host="h", owner="m"),
                stdout="out\n",
                stderr="err\n",
            )
            await storage.create([job])
            [seen] = await storage.list()
            # A write of a listed job (a worker noting why, a cancel request) leaves
            # the output as stored, never blanks it.
            assert await storage.compare_and_set(
                attrs.evolve(seen, error="noted"), expected=JobStatus.RUNNING, expected_owner="m"
            )
            assert await storage.get("j") == attrs.evolve(job, error="noted")
            # A stream it holds is written; the other stays.
            assert await storage.compare_and_set(
                attrs.evolve(seen, stdout="new\n"), expected=JobStatus.RUNNING, expected_owner="m"
            )
            assert await storage.get("j") == attrs.evolve(job, stdout="new\n")
            assert await storage.compare_and_set(
                attrs.evolve(seen, stderr=""), expected=JobStatus.RUNNING, expected_owner="m"
            )
            assert await storage.get("j") == attrs.evolve(job, stdout="new\n", stderr="")
            done = seen.advance(JobStatus.COMPLETED, completed_at=at(9), exit_code=0)
            assert await storage.compare_and_set(
                done, expected=JobStatus.RUNNING, expected_owner="m"
            )
            assert await storage.get("j") == attrs.evolve(done, stdout="new\n", stderr="")
            # A lost race writes no output either.
            assert not await storage.compare_and_set(
                attrs.evolve(job, stdout="lost\n"), expected=JobStatus.RUNNING, expected_owner="m"
            )
            assert (await storage.get("j")).stdout == "new\n"
            # A listed job created as it is (no output loaded) has printed nothing.
            await storage.create([listed(make_job("copy"))])
            assert (await storage.get("copy")).stdout == ""

    async def test_compare_and_set_writes_replaces_and_clears_the_output(
        self, tmp_path: Path
    ) -> None:
        async with self.opened(tmp_path) as storage:
            job = make_job("j", status=JobStatus.RUNNING, host="h", owner="m")
            await storage.create([job])
            big = "".join(f"line {n}\n" for n in range(100_000))  # 1 MB
            outputs = [("a\n", ""), ("a\n", "b\n"), ("", "b\n"), ("", ""), (big, "e"), (big, "e")]
            for stdout, stderr in outputs:
                new = attrs.evolve(job, stdout=stdout, stderr=stderr)
                assert await storage.compare_and_set(
                    new, expected=JobStatus.RUNNING, expected_owner="m"
                )
                got = await storage.get("j")
                assert (got.stdout, got.stderr) == (stdout, stderr)
                assert got == new

    async def test_output_keeps_every_character(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            # NUL (which no PostgreSQL text holds), a lone surrogate (which UTF-8 does
            # not encode), escapes, carriage returns, and characters beyond ASCII.
            text = "a\x00b\n\u2603 \U0001f600 \x1b[31mred\x1b[0m\r\n\ud800 lone\nhäßlich"
            job = attrs.evolve(
                make_job("j", status=JobStatus.RUNNING, host="h", owner="m"),
                stdout=text,
                stderr=text[::-1],
            )
            await storage.create([job])
            assert await storage.get("j") == job
            swapped = attrs.evolve(job, stdout=text[::-1], stderr=text)
            assert await storage.compare_and_set(
                swapped, expected=JobStatus.RUNNING, expected_owner="m"
            )
            assert await storage.get("j") == swapped

    @_needs("reads_statuses")
    async def test_statuses_of_many_jobs_in_one_read(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            statuses = storage.statuses  # type: ignore[attr-defined]
            assert await statuses([]) == {}
            many = [make_job(f"j{n:04}") for n in range(1200)]  # past any IN-list chunk
            await storage.create([*many, make_job("r", status=JobStatus.RUNNING, host="h")])
            claimed = await storage.claim_next("m", {"h2": 1}, first, now=NOW)
            found = await statuses(["r", "absent", *[job.id for job in many]])
            assert found["r"] is JobStatus.RUNNING and "absent" not in found
            assert found[claimed[0].id] is JobStatus.LAUNCHING
            assert sum(status is JobStatus.PENDING for status in found.values()) == 1199
            assert all(isinstance(status, JobStatus) for status in found.values())

    @_needs("reads_statuses")
    async def test_cancel_requests_of_one_owner(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            requests = storage.cancel_requests  # type: ignore[attr-defined]
            running = [
                make_job(f"r{n}", status=JobStatus.RUNNING, host="h", owner=owner)
                for n, owner in enumerate(["a", "a", "b"])
            ]
            await storage.create(running)
            assert await requests("a") == []
            for job in running:
                await storage.compare_and_set(
                    attrs.evolve(job, cancel_requested=True),
                    expected=JobStatus.RUNNING,
                    expected_owner=job.owner,
                )
            assert sorted(await requests("a")) == ["r0", "r1"]
            assert await requests("b") == ["r2"]
            done = attrs.evolve(running[0], status=JobStatus.FAILED, cancel_requested=True)
            await storage.compare_and_set(done, expected=JobStatus.RUNNING, expected_owner="a")
            assert await requests("a") == ["r1"]  # active jobs only

    async def test_count_active_and_count_by_status(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
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

    async def test_delete_removes_jobs_and_their_logs(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
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

    async def test_finished_before(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
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
            assert await storage.finished_before(at(16).astimezone()) == [
                "done-early",
                "cancelled",
            ]
            with pytest.raises(ValueError, match="naive"):
                await storage.finished_before(datetime(2030, 1, 1))

    # --- logs -------------------------------------------------------------------------

    async def test_logs_append_and_read_in_order(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create([make_job("j"), make_job("other")])
            assert await storage.log_count("j") == 0
            assert await storage.read_logs("j") == []
            first_lines, second_lines = lines(0, 4), lines(4, 6)
            await storage.append_logs("j", first_lines)
            await storage.append_logs("j", second_lines)
            await storage.append_logs("other", lines(0, 2, prefix="other"))

            everything = first_lines + second_lines
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
            assert [s.line.stream for s in everything[:4]] == [
                "stderr",
                "stdout",
                "stdout",
                "stderr",
            ]
            assert await storage.log_count("other") == 2

    async def test_logs_rewritten_seq_is_ignored(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create([make_job("j")])
            await storage.append_logs("j", lines(0, 3))
            # A retry that overlaps what is stored: the stored lines win, the new ones land.
            await storage.append_logs("j", lines(1, 4, prefix="retry"))
            stored = await storage.read_logs("j")
            assert [s.seq for s in stored] == [0, 1, 2, 3, 4]
            assert [s.line.text for s in stored] == [
                "line 0",
                "line 1",
                "line 2",
                "retry 3",
                "retry 4",
            ]
            await storage.append_logs("j", lines(0, 5, prefix="again"))  # entirely old
            assert await storage.log_count("j") == 5
            await storage.append_logs("j", [])
            assert await storage.log_count("j") == 5

    async def test_logs_read_from_inside_what_was_appended_at_once(self, tmp_path: Path) -> None:
        # A store may keep each append's lines together (the built-in ones do, as a
        # chunk): reads that start, stop or fill up inside one cut it exactly.
        async with self.opened(tmp_path) as storage:
            await storage.create([make_job("j")])
            for start, count in ((0, 5), (5, 7), (12, 1), (13, 17)):
                await storage.append_logs("j", lines(start, count))
            everything = lines(0, 30)
            for after in (-1, 0, 3, 4, 5, 11, 12, 13, 28, 29, 30):
                for until in (None, 0, 1, 5, 6, 12, 13, 20, 30, 31):
                    for limit in (None, 0, 1, 2, 7, 100):
                        wanted = [
                            s
                            for s in everything
                            if s.seq > after and (until is None or s.seq < until)
                        ][:limit]
                        got = await storage.read_logs("j", after=after, until=until, limit=limit)
                        assert got == wanted, (after, until, limit)

    async def test_logs_retry_overlapping_several_appends(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create([make_job("j")])
            await storage.append_logs("j", lines(0, 3))
            await storage.append_logs("j", lines(3, 3))
            # From inside the first append to past the end: only 6 to 8 are new.
            await storage.append_logs("j", lines(1, 8, prefix="retry"))
            # Entirely inside what is stored, across two appends: nothing changes.
            await storage.append_logs("j", lines(2, 5, prefix="again"))
            assert await storage.log_count("j") == 9
            assert await storage.read_logs("j") == [*lines(0, 6), *lines(6, 3, prefix="retry")]
            assert await storage.read_logs("j", after=4, limit=3) == [
                *lines(5, 1),
                *lines(6, 2, prefix="retry"),
            ]

    async def test_logs_keep_every_character_and_time(self, tmp_path: Path) -> None:
        # A container prints anything, the two streams' lines need not be in time
        # order, and a caller's times may be in any zone: all of it comes back equal.
        texts = [
            "two\nlines",
            "crlf\r\n",
            "nul \x00 tab \t bell \x07 escape \x1b[31m",
            'quotes " \' and a backslash \\ and {"json": [1]}',
            "häßlich ✓ 日本語 \U0001f600",
            "",
            " ",
            "x" * 10_000,
        ]
        zone = timezone(timedelta(hours=-5, minutes=-30))
        times = [
            at(5),
            at(1),
            at(1),
            at(-3600).astimezone(zone),
            at(0.000001),
            datetime(1970, 1, 1, tzinfo=UTC),
            datetime(2100, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            at(2),
        ]
        written = [
            StoredLine(seq, LogLine("stderr" if seq % 2 else "stdout", text, when))
            for seq, (text, when) in enumerate(zip(texts, times, strict=True))
        ]
        async with self.opened(tmp_path) as storage:
            await storage.create([make_job("j")])
            await storage.append_logs("j", written[:3])
            await storage.append_logs("j", written[3:])
            assert await storage.read_logs("j") == written
            assert await storage.read_logs("j", after=1, until=5) == written[2:5]

    async def test_logs_refuse_a_gap(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            await storage.create([make_job("j")])
            await storage.append_logs("j", lines(0, 2))
            with pytest.raises(ValueError, match="seq"):
                await storage.append_logs("j", lines(3, 2))
            with pytest.raises(ValueError, match="seq"):
                await storage.append_logs("j", [*lines(2, 1), *lines(4, 1)])
            assert await storage.log_count("j") == 2  # nothing of a refused batch is written

    async def test_logs_of_an_unknown_job(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
            with pytest.raises(JobNotFound):
                await storage.append_logs("ghost", lines(0, 1))
            assert await storage.read_logs("ghost") == []
            assert await storage.log_count("ghost") == 0

    # --- leases -----------------------------------------------------------------------

    async def test_leases_renew_drop_and_expire(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
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
    async def test_lease_ttl_must_be_a_positive_finite_time(
        self, tmp_path: Path, ttl: float
    ) -> None:
        async with self.opened(tmp_path) as storage:
            with pytest.raises(ValueError, match="ttl"):
                await storage.renew_lease("a", ttl)
            assert await storage.live_managers() == set()

    # --- templates --------------------------------------------------------------------

    async def test_templates_crud(self, tmp_path: Path) -> None:
        async with self.opened(tmp_path) as storage:
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

    # --- persistent -------------------------------------------------------------------

    @_needs("persistent")
    async def test_persistent_records_outlive_the_store_object(self, tmp_path: Path) -> None:
        writer, reader = await self.make_shared(await self._new_folder(tmp_path), 2)
        job = full_job("j", ["run"])
        await writer.open()
        try:
            await writer.create([job, make_job("p")])
            await writer.append_logs("j", lines(0, 7))
            await writer.save_template(EnvironmentTemplate("t", "A=1", "d"))
            store_id = writer.store_id
        finally:
            await writer.close()
        await reader.open()
        try:
            assert reader.store_id == store_id
            assert await reader.get("j") == job
            assert await reader.read_logs("j") == lines(0, 7)
            assert await reader.get_template("t") == EnvironmentTemplate("t", "A=1", "d")
            claimed = await reader.claim_next("m", {"h": 1}, first, now=NOW)
            assert [job.id for job in claimed] == ["p"]
        finally:
            await reader.close()

    # --- shared across processes ------------------------------------------------------

    @_needs("shared_across_processes")
    async def test_shared_stores_see_each_other(self, tmp_path: Path) -> None:
        async with self.opened_shared(tmp_path, 2) as (first_store, second):
            assert first_store.store_id == second.store_id
            await first_store.create([make_job("j"), make_job("k", created=1)])
            await first_store.append_logs("j", lines(0, 3))
            assert await second.get("j") == make_job("j")
            assert await second.read_logs("j") == lines(0, 3)

            # A claim through one is a lost race for the other.
            [claimed] = await second.claim_next("m2", {"h1": 1}, first, now=NOW)
            assert claimed.id == "j"
            assert not await first_store.compare_and_set(
                make_job("j").advance(JobStatus.CANCELLED),
                expected=JobStatus.PENDING,
                expected_owner=None,
            )
            assert await first_store.count_active() == {"h1": 1}
            assert await first_store.claim_next("m1", {"h1": 1}, first, now=NOW) == []

            await second.save_template(EnvironmentTemplate("t", "A=1"))
            assert [t.name for t in await first_store.list_templates()] == ["t"]
            await first_store.renew_lease("m1", 60)
            assert await second.live_managers() == {"m1"}
            assert await second.delete(["j"]) == 1
            assert await first_store.log_count("j") == 0

    @_needs("shared_across_processes")
    async def test_shared_compare_and_sets_have_one_winner(self, tmp_path: Path) -> None:
        async with self.opened_shared(tmp_path, 4) as stores:
            job = make_job("j", status=JobStatus.RUNNING, host="h", owner="dead")
            await stores[0].create([job])
            wins: builtins.list[bool] = []

            async def adopt(store: Storage, n: int) -> None:
                mine = attrs.evolve(job, owner=f"heir-{n}")
                wins.append(
                    await store.compare_and_set(
                        mine, expected=JobStatus.RUNNING, expected_owner="dead"
                    )
                )

            async with anyio.create_task_group() as tg:
                for n in range(12):
                    tg.start_soon(adopt, stores[n % 4], n)
            assert sorted(wins) == [False] * 11 + [True]

    @_needs("shared_across_processes")
    async def test_shared_claims_keep_the_limits_and_claim_each_job_once(
        self, tmp_path: Path
    ) -> None:
        async with self.opened_shared(tmp_path, 4) as stores:
            await stores[0].create([make_job(f"j{n:02}", created=n) for n in range(20)])
            await self._race_claims([*stores, *stores], {"h1": 3, "h2": 2})
