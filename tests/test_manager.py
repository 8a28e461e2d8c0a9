"""The manager's own logic, on the FakeCluster of containerjobs.testing (no Docker)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

import containerjobs as cj
from containerjobs.testing import FakeCluster, FakeRun
from tests.conftest import until_status


def fake_hosts(*names: str, slots: int = 2) -> list[cj.DockerHost]:
    return [
        cj.DockerHost(name, f"unix:///fake/{name}.sock", max_concurrent_jobs=slots)
        for name in names
    ]


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
async def manager(cluster: FakeCluster) -> AsyncIterator[cj.JobManager]:
    async with cj.JobManager(hosts=fake_hosts("a"), executor_factory=cluster) as manager:
        yield manager


SPEC = cj.JobSpec(image="example/image:1", command="work")


async def test_run_returns_the_finished_job(cluster: FakeCluster, manager: cj.JobManager) -> None:
    cluster.behaviour = lambda job: FakeRun(stdout="out\n", stderr="err\n", duration=0.05)
    job = await manager.run(SPEC)
    assert (job.status, job.stdout, job.stderr, job.attempts) == (
        cj.JobStatus.COMPLETED,
        "out\n",
        "err\n",
        1,
    )
    assert job.owner == manager.id
    assert job.max_memory_bytes == 8 * 1024 * 1024


async def test_submit_applies_policy_defaults(manager: cj.JobManager) -> None:
    job = await manager.submit(SPEC)
    assert job.status is cj.JobStatus.PENDING
    assert (job.spec.memory_limit_mb, job.spec.cpu_limit, job.spec.timeout_seconds) == (
        512,
        1.0,
        3600.0,
    )
    assert job.spec.user == "65534:65534"


async def test_launch_failure_fails_the_job(cluster: FakeCluster, manager: cj.JobManager) -> None:
    cluster.behaviour = lambda job: FakeRun(launch_error=cj.ExecutorError("no such network"))
    job = await manager.run(SPEC)
    assert job.status is cj.JobStatus.FAILED
    assert job.error == "no such network"


async def test_timeout(cluster: FakeCluster, manager: cj.JobManager) -> None:
    cluster.behaviour = lambda job: FakeRun(stdout="started\n", duration=60)
    job = await manager.run(cj.JobSpec(image="x", timeout_seconds=0.2))
    assert job.status is cj.JobStatus.TIMEOUT
    assert job.stdout == "started\n"


async def test_wait_timeout_leaves_the_job_running(
    cluster: FakeCluster, manager: cj.JobManager
) -> None:
    cluster.behaviour = lambda job: FakeRun(duration=60)
    job = await manager.submit(SPEC)
    with pytest.raises(TimeoutError):
        await manager.wait(job.id, timeout=0.2)
    assert (await manager.get(job.id)).status is cj.JobStatus.RUNNING
    assert (await manager.cancel(job.id)).status is cj.JobStatus.CANCELLED


async def test_never_more_than_max_concurrent_jobs(cluster: FakeCluster) -> None:
    cluster.behaviour = lambda job: FakeRun(duration=0.05)
    async with cj.JobManager(
        hosts=fake_hosts("a", "b", slots=2), executor_factory=cluster
    ) as manager:
        jobs = await manager.submit_many([SPEC] * 20)
        for job in jobs:
            assert (await manager.wait(job.id)).status is cj.JobStatus.COMPLETED
    assert {name: e.max_running for name, e in cluster.executors.items()} == {"a": 2, "b": 2}
    assert sum(len(e.launched) for e in cluster.executors.values()) == 20


async def test_pinned_host_and_unknown_host(cluster: FakeCluster) -> None:
    async with cj.JobManager(hosts=fake_hosts("a", "b"), executor_factory=cluster) as manager:
        jobs = [await manager.run(cj.JobSpec(image="x", host="b")) for _ in range(3)]
        assert {job.host for job in jobs} == {"b"}
        with pytest.raises(cj.ContainerJobsError):
            await manager.submit(cj.JobSpec(image="x", host="nowhere"))


async def test_unhealthy_host_gets_no_jobs_until_it_recovers(cluster: FakeCluster) -> None:
    async with cj.JobManager(
        hosts=fake_hosts("a"), executor_factory=cluster, health_interval=0.1
    ) as manager:
        cluster.executors["a"].healthy = False
        health = await manager.health()
        assert health["a"].healthy is False and health["a"].error
        job = await manager.submit(SPEC)
        await anyio.sleep(0.3)
        assert (await manager.get(job.id)).status is cj.JobStatus.PENDING
        cluster.executors["a"].healthy = True
        assert (await manager.wait(job.id, timeout=5)).status is cj.JobStatus.COMPLETED


async def test_submit_many_is_all_or_nothing(manager: cj.JobManager) -> None:
    with pytest.raises(cj.PolicyViolation):
        await manager.submit_many([SPEC, cj.JobSpec(image="x", cpu_limit=64)])
    assert await manager.list_jobs() == []


async def test_template_precedence_and_unknown_template(manager: cj.JobManager) -> None:
    await manager.save_template(cj.EnvironmentTemplate("t", "A=1\nB=2"))
    job = await manager.submit(
        cj.JobSpec(image="x", environment_template="t", environment={"B": "3"})
    )
    assert job.spec.environment == {"A": "1", "B": "3"}
    with pytest.raises(cj.TemplateNotFound):
        await manager.submit(cj.JobSpec(image="x", environment_template="missing"))
    assert [j.id for j in await manager.list_jobs()] == [job.id]


async def test_cancel_pending_and_terminal(cluster: FakeCluster) -> None:
    cluster.behaviour = lambda job: FakeRun(duration=60)
    async with cj.JobManager(hosts=fake_hosts("a", slots=1), executor_factory=cluster) as manager:
        running, queued = await manager.submit_many([SPEC, SPEC])
        cancelled = await manager.cancel(queued.id)
        assert cancelled.status is cj.JobStatus.CANCELLED and cancelled.attempts == 0
        assert await manager.cancel(queued.id) == cancelled
        await manager.cancel(running.id)


async def test_events_in_order(manager: cj.JobManager) -> None:
    seen: list[tuple[cj.JobStatus, cj.JobStatus | None]] = []

    async def collect() -> None:
        async for event in manager.events():
            seen.append((event.status, event.previous))
            if event.status.is_terminal:
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        await anyio.lowlevel.checkpoint()
        await manager.run(SPEC)
    assert seen == [
        (cj.JobStatus.PENDING, None),
        (cj.JobStatus.LAUNCHING, cj.JobStatus.PENDING),
        (cj.JobStatus.RUNNING, cj.JobStatus.LAUNCHING),
        (cj.JobStatus.COMPLETED, cj.JobStatus.RUNNING),
    ]


async def test_logs_of_a_finished_job_and_follow_false(
    cluster: FakeCluster, manager: cj.JobManager
) -> None:
    cluster.behaviour = lambda job: FakeRun(stdout="a\nb\n", stderr="c\n")
    job = await manager.run(SPEC)
    lines = [(line.stream, line.text) async for line in manager.logs(job.id, follow=False)]
    assert sorted(lines) == [("stderr", "c"), ("stdout", "a"), ("stdout", "b")]
    with pytest.raises(cj.JobNotFound):
        async for _ in manager.logs("nope"):
            pass


async def test_client_manager_stores_and_runs_nothing(cluster: FakeCluster) -> None:
    async with cj.JobManager(hosts=[], executor_factory=cluster) as client:
        job = await client.submit(SPEC)
        await anyio.sleep(0.2)
        assert (await client.get(job.id)).status is cj.JobStatus.PENDING
        with pytest.raises(TimeoutError):
            await client.wait(job.id, timeout=0.2)


async def test_manager_cannot_be_reused(cluster: FakeCluster) -> None:
    manager = cj.JobManager(hosts=fake_hosts("a"), executor_factory=cluster)
    with pytest.raises(RuntimeError):
        await manager.submit(SPEC)
    async with manager:
        pass
    with pytest.raises(RuntimeError):
        async with manager:
            pass
    with pytest.raises(RuntimeError):
        await manager.get("x")


async def test_leaving_cancels_running_jobs(cluster: FakeCluster) -> None:
    cluster.behaviour = lambda job: FakeRun(duration=60)
    storage = cj.InMemoryStorage()
    async with cj.JobManager(
        hosts=fake_hosts("a"), executor_factory=cluster, storage=storage
    ) as manager:
        job = await manager.submit(SPEC)
        await until_status(manager, job.id, cj.JobStatus.RUNNING)
    assert cluster.executors["a"].containers == {}
    assert cluster.executors["a"].running == 0


async def test_summary_counts(cluster: FakeCluster, manager: cj.JobManager) -> None:
    await manager.run(SPEC)
    summary = await manager.summary()
    assert summary["jobs"]["completed"] == 1
    assert summary["slots_free"] == 2 and summary["slots_used"] == 0


async def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="unique"):
        cj.JobManager(hosts=fake_hosts("a") + fake_hosts("a"))
    with pytest.raises(ValueError, match="on_exit"):
        cj.JobManager(hosts=[], on_exit="explode")  # type: ignore[arg-type]


def test_strategies_choose_among_candidates() -> None:
    a, b, c = (cj.DockerHost(n, "unix:///x", weight=w, max_concurrent_jobs=4)
               for n, w in (("a", 100), ("b", 300), ("c", 100)))
    job = cj.Job(id="j", spec=SPEC)
    loads = [cj.HostLoad(a, 1), cj.HostLoad(b, 2), cj.HostLoad(c, 0)]
    assert cj.WeightedLeastLoaded().select(job, loads).host.name == "c"
    assert cj.WeightedLeastLoaded().select(job, loads[:2]).host.name == "b"  # 2/300 < 1/100
    assert cj.FirstAvailable().select(job, loads).host.name == "a"
    rr = cj.RoundRobin()
    assert [rr.select(job, loads).host.name for _ in range(4)] == ["a", "b", "c", "a"]
    assert rr.select(job, [loads[0], loads[2]]).host.name == "c"  # b is full: skipped
    picks = [cj.WeightedRandom().select(job, loads).host.name for _ in range(200)]
    assert set(picks) == {"a", "b", "c"} and picks.count("b") > picks.count("a")


async def test_retries_keep_earlier_attempts_on_record(cluster: FakeCluster) -> None:
    def flaky(job: cj.Job) -> FakeRun:
        if job.attempts < 3:
            return FakeRun(stdout=f"attempt {job.attempts}\n", exit_code=2)
        return FakeRun(stdout="third time\n")

    cluster.behaviour = flaky
    async with cj.JobManager(hosts=fake_hosts("a"), executor_factory=cluster,
                             retry_delay=0.01, poll_interval=0.05) as manager:
        job = await manager.run(cj.JobSpec(image="x", max_retries=3), timeout=10)
        lines = [line.text async for line in manager.logs(job.id, follow=False)]
        once = await manager.run(cj.JobSpec(image="x", max_retries=1), timeout=10)
    assert (job.status, job.attempts, job.stdout) == (cj.JobStatus.COMPLETED, 3, "third time\n")
    assert [a.exit_code for a in job.previous_attempts] == [2, 2]
    assert [a.attempt for a in job.previous_attempts] == [1, 2]
    assert lines == ["attempt 1", "attempt 2", "third time"]  # every attempt's lines kept
    assert once.status is cj.JobStatus.FAILED and once.attempts == 2


async def test_timeouts_and_missing_images_are_not_retried(cluster: FakeCluster) -> None:
    async with cj.JobManager(hosts=fake_hosts("a"), executor_factory=cluster,
                             retry_delay=0.01) as manager:
        cluster.behaviour = lambda job: FakeRun(duration=60)
        slow = await manager.run(cj.JobSpec(image="x", timeout_seconds=0.1, max_retries=3))
        cluster.behaviour = lambda job: FakeRun(launch_error=cj.ImageNotFound("no image"))
        missing = await manager.run(cj.JobSpec(image="x", max_retries=3))
        cluster.behaviour = lambda job: FakeRun(oom_killed=True)
        oom = await manager.run(cj.JobSpec(image="x", max_retries=3))
    assert (slow.status, slow.attempts) == (cj.JobStatus.TIMEOUT, 1)
    assert (missing.status, missing.attempts) == (cj.JobStatus.FAILED, 1)
    assert (oom.status, oom.attempts, oom.oom_killed) == (cj.JobStatus.FAILED, 1, True)


async def test_output_past_the_cap_keeps_head_and_tail(cluster: FakeCluster) -> None:
    text = "".join(f"line {i:04d}\n" for i in range(1000))  # 10 bytes a line
    cluster.behaviour = lambda job: FakeRun(stdout=text, stderr="small\n")
    async with cj.JobManager(hosts=fake_hosts("a"), executor_factory=cluster,
                             max_log_bytes=2000) as manager:
        job = await manager.run(SPEC)
        stored = [line.text async for line in manager.logs(job.id, follow=False)]
    assert job.logs_truncated
    out = job.stdout.splitlines()
    assert out[:100] == [f"line {i:04d}" for i in range(100)]
    assert out[-100:] == [f"line {i:04d}" for i in range(900, 1000)]
    assert out[100] == ("[containerjobs: 8000 bytes left out here: "
                        "the stdout of this job passed 2000 bytes]")
    assert job.stderr == "small\n"
    assert [t for t in stored if t.startswith("line")] == out[:100] + out[-100:]


async def test_a_detached_job_is_adopted_by_the_next_manager(
    cluster: FakeCluster, tmp_path: object
) -> None:
    from pathlib import Path

    db = Path(str(tmp_path)) / "jobs.db"
    cluster.behaviour = lambda job: FakeRun(stdout="early\n", duration=0.5)
    async with cj.JobManager(hosts=fake_hosts("a"), executor_factory=cluster,
                             storage=cj.SQLiteStorage(db)) as first:
        assert first.exit_mode == "detach"
        job = await first.submit(SPEC)
        await until_status(first, job.id, cj.JobStatus.RUNNING)
    left = await _read(db, job.id)
    assert left.status is cj.JobStatus.RUNNING and left.owner == first.id
    async with cj.JobManager(hosts=fake_hosts("a"), executor_factory=cluster,
                             storage=cj.SQLiteStorage(db)) as second:
        done = await second.wait(job.id, timeout=10)
        lines = [line.text async for line in second.logs(job.id)]
    assert done.status is cj.JobStatus.COMPLETED and done.owner == second.id
    assert done.stdout == "early\n" and lines == ["early"]  # nothing lost, nothing doubled
    assert done.attempts == 1
    assert cluster.executors["a"].containers == {}


async def _read(db: object, job_id: str) -> cj.Job:
    store = cj.SQLiteStorage(str(db))
    await store.open()
    try:
        return await store.get(job_id)
    finally:
        await store.close()


async def test_a_client_cancels_a_job_another_manager_runs(cluster: FakeCluster,
                                                           tmp_path: object) -> None:
    from pathlib import Path

    db = Path(str(tmp_path)) / "jobs.db"
    cluster.behaviour = lambda job: FakeRun(duration=60)
    async with cj.JobManager(hosts=fake_hosts("a"), executor_factory=cluster,
                             storage=cj.SQLiteStorage(db), poll_interval=0.1) as worker:
        async with cj.JobManager(hosts=[], storage=cj.SQLiteStorage(db),
                                 poll_interval=0.1) as client:
            job = await client.submit(SPEC)
            await until_status(worker, job.id, cj.JobStatus.RUNNING)
            with anyio.fail_after(10):
                cancelled = await client.cancel(job.id)
    assert cancelled.status is cj.JobStatus.CANCELLED
    assert cluster.executors["a"].containers == {}


async def test_a_launch_cut_short_by_a_crash_is_requeued(cluster: FakeCluster,
                                                         tmp_path: object) -> None:
    from pathlib import Path

    db = Path(str(tmp_path)) / "jobs.db"
    store = cj.SQLiteStorage(db)
    await store.open()
    stranded = cj.Job(id="stranded", spec=cj.SecurityPolicy().apply(SPEC)).advance(
        cj.JobStatus.LAUNCHING, host="a", owner="cjm-dead", attempts=1)
    await store.create([cj.Job(id="stranded", spec=stranded.spec)])
    assert await store.compare_and_set(stranded, expected=cj.JobStatus.PENDING,
                                       expected_owner=None)
    await store.close()
    cluster.behaviour = lambda job: FakeRun(stdout="ran\n")
    async with cj.JobManager(hosts=fake_hosts("a"), executor_factory=cluster,
                             storage=cj.SQLiteStorage(db)) as manager:
        done = await manager.wait("stranded", timeout=10)
    assert (done.status, done.stdout, done.attempts) == (cj.JobStatus.COMPLETED, "ran\n", 1)
    assert done.previous_attempts == ()


class FlakyStorage(cj.InMemoryStorage):
    """An in-memory store whose writes fail while `down` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.failed_writes = 0

    def _check(self) -> None:
        if self.down:
            self.failed_writes += 1
            raise cj.StorageError("the store is down (test)")

    async def compare_and_set(self, job: cj.Job, **kwargs: object) -> bool:  # type: ignore[override]
        self._check()
        return await super().compare_and_set(job, **kwargs)  # type: ignore[arg-type]

    async def append_logs(self, job_id: str, lines: object) -> None:  # type: ignore[override]
        self._check()
        await super().append_logs(job_id, lines)  # type: ignore[arg-type]


async def test_a_short_store_outage_loses_neither_job_nor_output(cluster: FakeCluster) -> None:
    storage = FlakyStorage()
    cluster.behaviour = lambda job: FakeRun(stdout="one\ntwo\n", duration=0.3)
    async with cj.JobManager(hosts=fake_hosts("a"), executor_factory=cluster,
                             storage=storage) as manager:
        job = await manager.submit(SPEC)
        await until_status(manager, job.id, cj.JobStatus.RUNNING)
        storage.down = True  # the job ends while its store is away
        await anyio.sleep(0.8)
        storage.down = False
        done = await manager.wait(job.id, timeout=20)
        lines = [line.text async for line in manager.logs(job.id)]
    assert storage.failed_writes > 0
    assert done.status is cj.JobStatus.COMPLETED and done.stdout == "one\ntwo\n"
    assert lines == ["one", "two"]
    assert cluster.executors["a"].containers == {}


async def test_a_job_whose_launch_times_out_does_not_take_an_answering_host_down(
    cluster: FakeCluster, manager: cj.JobManager
) -> None:
    # A create that timed out on a huge request says nothing of the host: it still
    # answers its health check, and the next job runs there.
    cluster.behaviour = lambda job: FakeRun(
        launch_error=cj.HostUnavailable("host 'a' is unreachable while creating: timed out")
        if job.spec.name == "huge"
        else None,
        stdout="fine\n",
    )
    failed = await manager.run(cj.JobSpec(image="example/image:1", name="huge"))
    assert failed.status is cj.JobStatus.FAILED and "timed out" in (failed.error or "")
    assert (await manager.summary())["hosts"]["a"]["healthy"]
    assert (await manager.run(SPEC)).stdout == "fine\n"


async def test_a_host_that_stops_answering_during_a_launch_is_taken_down(
    cluster: FakeCluster, manager: cj.JobManager
) -> None:
    def behaviour(job: cj.Job) -> FakeRun:
        cluster.executors["a"].healthy = False
        return FakeRun(launch_error=cj.HostUnavailable("host 'a' is unreachable"))

    cluster.behaviour = behaviour
    job = await manager.run(SPEC)
    assert job.status is cj.JobStatus.FAILED
    assert not (await manager.summary())["hosts"]["a"]["healthy"]


class _FlakyLogs(cj.InMemoryStorage):
    """A store whose log writes fail while `failing` is set (a full disk, say)."""

    failing = False

    async def append_logs(self, job_id, lines):  # type: ignore[no-untyped-def]
        if self.failing:
            raise cj.StorageError("database or disk is full")
        await super().append_logs(job_id, lines)


async def test_a_failure_that_repeats_is_logged_once_and_its_end_once(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="containerjobs")
    storage = _FlakyLogs()
    storage.failing = True
    cluster.behaviour = lambda job: FakeRun(stdout="".join(f"{i}\n" for i in range(50)),
                                            duration=1.5)
    async with cj.JobManager(hosts=fake_hosts("a"), executor_factory=cluster,
                             storage=storage) as manager:
        jobs = [await manager.submit(SPEC), await manager.submit(SPEC)]
        await anyio.sleep(1.0)  # four flushes a second, per job, all failing
        storage.failing = False
        done = [await manager.wait(job.id) for job in jobs]
        stored = [[line async for line in manager.logs(job.id)] for job in jobs]
    events = [record.event for record in caplog.records]  # type: ignore[attr-defined]
    assert events.count("logs.flush_failed") == 1
    assert events.count("logs.flush_recovered") == 1
    assert all(job.stdout.count("\n") == 50 for job in done)
    assert all(len(lines) == 50 for lines in stored)  # nothing lost meanwhile


class _Elsewhere:
    """A strategy with a bug: it picks a host that was not offered."""

    def select(self, job: cj.Job, candidates: object) -> cj.HostLoad:
        return cj.HostLoad(cj.DockerHost("nowhere", "unix:///nowhere.sock"), 0)


async def test_a_strategy_that_picks_a_host_not_offered_stops_nothing(
    cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    async with cj.JobManager(hosts=fake_hosts("a"), executor_factory=cluster,
                             strategy=_Elsewhere()) as manager:
        job = await manager.submit(SPEC)
        with pytest.raises(TimeoutError):
            await manager.wait(job.id, timeout=0.5)
        assert (await manager.get(job.id)).status is cj.JobStatus.PENDING
        assert (await manager.health())["a"].healthy  # the manager still works
    assert any(getattr(r, "event", "") == "dispatch.bad_choice" for r in caplog.records)


class _Reporting(cj.InMemoryStorage):
    """One store shared by two managers, reporting its writes as a store with
    LISTEN/NOTIFY does (PostgreSQL): the optional `changes` capability."""

    def __init__(self) -> None:
        super().__init__()
        self._listeners: list[tuple[list[tuple[str, cj.JobStatus, cj.JobStatus | None]],
                                    list[anyio.Event]]] = []

    def _report(self, job: cj.Job, previous: cj.JobStatus | None) -> None:
        for queue, wakeup in self._listeners:
            queue.append((job.id, job.status, previous))
            wakeup[0].set()

    async def create(self, jobs):  # type: ignore[no-untyped-def]
        await super().create(jobs)
        for job in jobs:
            self._report(job, None)

    async def compare_and_set(self, job, *, expected, expected_owner):  # type: ignore[no-untyped-def]
        done = await super().compare_and_set(job, expected=expected, expected_owner=expected_owner)
        if done:
            self._report(job, expected)
        return done

    async def claim_next(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        claimed = await super().claim_next(*args, **kwargs)
        for job in claimed:
            self._report(job, cj.JobStatus.PENDING)
        return claimed

    async def changes(self):  # type: ignore[no-untyped-def]
        queue: list[tuple[str, cj.JobStatus, cj.JobStatus | None]] = []
        wakeup = [anyio.Event()]
        self._listeners.append((queue, wakeup))
        while True:
            while queue:
                yield queue.pop(0)
            wakeup[0] = anyio.Event()
            await wakeup[0].wait()


async def test_a_client_hears_of_changes_other_managers_make(cluster: FakeCluster) -> None:
    store = _Reporting()
    cluster.behaviour = lambda job: FakeRun(stdout="done\n", duration=0.2)
    async with cj.JobManager(hosts=[], storage=store) as client, cj.JobManager(
        hosts=fake_hosts("a"), executor_factory=cluster, storage=store
    ) as worker:
        events = client.events()
        job = await client.submit(SPEC)
        with anyio.fail_after(5):  # no polling: the client is told
            done = await client.wait(job.id)
        assert done.status is cj.JobStatus.COMPLETED and done.owner == worker.id
        seen = []
        with anyio.fail_after(5):
            async for event in events:
                seen.append(event.status)
                if event.status.is_terminal:
                    break
        # Each move once: the client's own (pending) and the worker's, as reported.
        assert seen == [cj.JobStatus.PENDING, cj.JobStatus.LAUNCHING, cj.JobStatus.RUNNING,
                        cj.JobStatus.COMPLETED]
