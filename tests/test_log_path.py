"""The log path past the cap: live readers get every line, the store only what is
kept, and the cost bounds a test can hold without timing (rows written per line,
no record rewritten per flush, line objects not held for the tail)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import containerjobs as cj
from containerjobs._harvest import Output
from containerjobs._logs import LogHub
from containerjobs.executors import OutputLine
from containerjobs.storage import StoredLine
from containerjobs.testing import FakeCluster, FakeRun
from tests.conftest import LOCAL_SOCKET, Bed

MARKER = "[containerjobs:"


class CountingStore(cj.InMemoryStorage):
    """An in-memory store that counts what the manager writes."""

    def __init__(self) -> None:
        super().__init__()
        self.appends: list[int] = []  # lines per append_logs call
        self.record_writes = 0

    async def append_logs(self, job_id: str, lines: Sequence[StoredLine]) -> None:
        self.appends.append(len(lines))
        await super().append_logs(job_id, lines)

    async def compare_and_set(self, *args: Any, **kwargs: Any) -> Any:
        self.record_writes += 1
        return await super().compare_and_set(*args, **kwargs)


def numbers(n: int) -> str:
    return "".join(f"{i}\n" for i in range(1, n + 1))


async def follow(manager: cj.JobManager, job_id: str) -> list[cj.LogLine]:
    return [line async for line in manager.logs(job_id)]


async def test_a_live_reader_gets_every_line_past_the_cap() -> None:
    lines = 20_000
    store = CountingStore()
    cluster = FakeCluster(lambda job: FakeRun(stdout=numbers(lines), duration=1.0))
    async with cj.JobManager(
        hosts=[cj.DockerHost("fake", "unix:///fake")],
        executor_factory=cluster,
        storage=store,
        max_log_bytes=4000,
    ) as manager:
        job = await manager.submit(cj.JobSpec(image="img", command=["x"]))
        live = await follow(manager, job.id)
        done = await manager.wait(job.id)
        after = [line async for line in manager.logs(job.id, follow=False)]

    assert [line.text for line in live] == [str(i) for i in range(1, lines + 1)]
    # After the end: what the cap kept, the marker between head and tail.
    assert done.logs_truncated
    assert "".join(line.text + "\n" for line in after) == done.stdout
    assert sum(MARKER in line.text for line in after) == 1
    assert len(after) < 1000
    # The store took only what is kept, a few batches, never a row per line read.
    assert sum(store.appends) == len(after)
    assert len(store.appends) <= 6
    # The record is written for its moves (running, the end), not per flush.
    assert store.record_writes <= 4


async def test_a_live_reader_past_the_cap_with_both_streams_sees_each_line_once() -> None:
    # stdout passes its cap while stderr is still stored line by line: the reader
    # switches to the live lines once, at the first line the store did not take.
    out = "".join(f"o{i}\n" for i in range(3000))
    err = "".join(f"e{i}\n" for i in range(50))
    cluster = FakeCluster(lambda job: FakeRun(stdout=out, stderr=err, duration=1.0))
    async with cj.JobManager(
        hosts=[cj.DockerHost("fake", "unix:///fake")],
        executor_factory=cluster,
        max_log_bytes=2000,
    ) as manager:
        job = await manager.submit(cj.JobSpec(image="img", command=["x"]))
        live = await follow(manager, job.id)
    texts = [line.text for line in live]
    assert sorted(t for t in texts if t.startswith("o")) == sorted(out.split())
    assert [t for t in texts if t.startswith("e")] == err.split()
    assert len(texts) == 3050


async def test_a_reader_that_falls_behind_the_ring_is_told_how_much_it_missed() -> None:
    async def store(job_id: str, lines: Sequence[StoredLine]) -> None:
        pass

    hub = LogHub("j", 0, store)
    now = datetime.now(UTC)
    total = 120_000  # more than the ring holds
    for i in range(total):
        hub.live(cj.LogLine("stdout", str(i), now), kept=False)
    missed, lines = hub.live_since(0)
    assert missed + len(lines) == total
    assert missed > 0
    assert lines[-1].text == str(total - 1)
    assert lines[0].text == str(missed)
    # A reader that kept up gets nothing twice.
    assert hub.live_since(total) == (0, [])


def test_the_tail_is_held_compactly_and_exactly() -> None:
    # A million short lines past the cap: the tail keeps its bytes and stamps
    # packed, and gives back exact lines, in order, with their stamps.
    cap = 1 << 20
    output = Output(cap)
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    n = 400_000
    for i in range(n):
        line = cj.LogLine("stdout", str(i), start + timedelta(microseconds=7 * i))
        output.add(OutputLine(line))
    kept = output.streams["stdout"]
    assert len(kept.tail._blocks) <= (cap // 2) // 1024  # blocks, not line objects
    held = list(output.finish())
    assert MARKER in held[0].text
    tail = held[1:]
    last = int(tail[-1].text)
    assert last == n - 1
    first = last - len(tail) + 1
    # The oldest line kept may have lost its start: the cap is kept to the byte.
    assert str(first).endswith(tail[0].text)
    assert [int(line.text) for line in tail[1:]] == list(range(first + 1, n))
    for line in tail[1:4] + tail[-3:]:
        assert line.timestamp == start + timedelta(microseconds=7 * int(line.text))
    text = output.text("stdout")
    assert len(text.encode()) <= cap + 200
    assert text.endswith(f"{n - 1}\n")


@pytest.mark.docker
async def test_a_live_reader_on_the_real_daemon_gets_every_line_and_the_store_only_what_is_kept(
    testbed: Bed, image: str, tmp_path: Path, no_leftovers: None
) -> None:
    lines = 300_000  # 2 MB of output against a 100 kB cap
    db = tmp_path / "jobs.db"
    async with cj.JobManager(
        hosts=[cj.DockerHost("local", LOCAL_SOCKET)],
        storage=cj.SQLiteStorage(db),
        max_log_bytes=100_000,
    ) as manager:
        job = await manager.submit(
            cj.JobSpec(image=image, command=["seq", "1", str(lines)], timeout_seconds=120)
        )
        live = await follow(manager, job.id)
        done = await manager.wait(job.id)
        after = [line async for line in manager.logs(job.id, follow=False)]
    assert done.status is cj.JobStatus.COMPLETED
    got = [line.text for line in live]
    assert MARKER not in "".join(got[:1] + got[-1:])
    assert got == [str(i) for i in range(1, lines + 1)]
    assert "".join(line.text + "\n" for line in after) == done.stdout
    # Rows: one per flush batch of what was kept, not one per line.
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        table = "log_chunks" if "log_chunks" in tables else "logs"
        rows = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    assert rows <= len(after) // 100 + 10
