"""Jobs end to end on the test bed's real dockerd."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import containerjobs as cj
from tests.conftest import Bed, until_status

pytestmark = pytest.mark.docker


async def test_echo_to_both_streams(manager: cj.JobManager, image: str) -> None:
    job = await manager.run(cj.JobSpec(image=image, command="echo hello; echo oops >&2"))
    assert job.status is cj.JobStatus.COMPLETED
    assert job.exit_code == 0
    assert job.stdout == "hello\n"
    assert job.stderr == "oops\n"
    assert job.host == "local"
    assert job.container_id
    assert job.started_at is not None and job.completed_at is not None
    assert job.created_at <= job.started_at < job.completed_at
    assert job.duration is not None and job.duration > 0


async def test_list_command_runs_without_a_shell(manager: cj.JobManager, image: str) -> None:
    job = await manager.run(cj.JobSpec(image=image, command=["echo", "$HOME", "a;b"]))
    assert job.stdout == "$HOME a;b\n"


async def test_string_command_gets_shell_features(manager: cj.JobManager, image: str) -> None:
    job = await manager.run(cj.JobSpec(image=image, command='X=5; echo "$X" && echo done'))
    assert job.stdout == "5\ndone\n"


async def test_non_zero_exit_fails(manager: cj.JobManager, image: str) -> None:
    job = await manager.run(cj.JobSpec(image=image, command="exit 3"))
    assert job.status is cj.JobStatus.FAILED
    assert job.exit_code == 3
    assert job.error is not None and "3" in job.error


async def test_logs_are_live_and_end_with_the_job(manager: cj.JobManager, image: str) -> None:
    job = await manager.submit(
        cj.JobSpec(image=image, command="for i in 1 2 3 4; do echo tick $i; sleep 1; done")
    )
    seen: list[cj.LogLine] = []
    async for line in manager.logs(job.id):
        if not seen:
            # The first line arrives while the job still runs.
            assert (await manager.get(job.id)).status is cj.JobStatus.RUNNING
        seen.append(line)
    assert [line.text for line in seen] == [f"tick {i}" for i in range(1, 5)]
    assert (await manager.get(job.id)).status.is_terminal


async def test_stored_logs_keep_both_streams_in_order(manager: cj.JobManager, image: str) -> None:
    script = "echo out1; sleep 0.2; echo err1 >&2; sleep 0.2; echo out2; sleep 0.2; echo err2 >&2"
    job = await manager.run(cj.JobSpec(image=image, command=script))
    lines = [line async for line in manager.logs(job.id, follow=False)]
    assert [(line.stream, line.text) for line in lines] == [
        ("stdout", "out1"),
        ("stderr", "err1"),
        ("stdout", "out2"),
        ("stderr", "err2"),
    ]
    stamps = [line.timestamp for line in lines]
    assert all(stamp.tzinfo is not None for stamp in stamps)
    assert stamps == sorted(stamps)


async def test_timeout_kills_and_keeps_earlier_output(
    manager: cj.JobManager, image: str, testbed: Bed
) -> None:
    started = time.monotonic()
    job = await manager.run(
        cj.JobSpec(image=image, command="echo before; sleep 60; echo after", timeout_seconds=2)
    )
    elapsed = time.monotonic() - started
    assert job.status is cj.JobStatus.TIMEOUT
    assert elapsed < 2 + 10
    assert job.stdout == "before\n"
    assert job.error is not None and "timed out" in job.error
    assert job.container_id not in " ".join(testbed.labelled_containers())


async def test_cancel_running_job_removes_container(
    manager: cj.JobManager, image: str, testbed: Bed
) -> None:
    job = await manager.submit(cj.JobSpec(image=image, command="echo up; sleep 60"))
    async for _ in manager.logs(job.id):
        break  # it runs
    with pytest.raises(TimeoutError):
        await manager.wait(job.id, timeout=0.5)
    assert (await manager.get(job.id)).status is cj.JobStatus.RUNNING
    cancelled = await manager.cancel(job.id)
    assert cancelled.status is cj.JobStatus.CANCELLED
    assert cancelled.stdout == "up\n"
    assert not testbed.labelled_containers()
    # A terminal job comes back unchanged.
    assert await manager.cancel(job.id) == cancelled


async def test_cancel_pending_job_never_starts(
    local_host: cj.DockerHost, image: str, no_leftovers: None
) -> None:
    host = cj.DockerHost("local", local_host.url, max_concurrent_jobs=1)
    async with cj.JobManager(hosts=[host]) as manager:
        first = await manager.submit(cj.JobSpec(image=image, command="sleep 30"))
        second = await manager.submit(cj.JobSpec(image=image, command="echo never"))
        cancelled = await manager.cancel(second.id)
        assert cancelled.status is cj.JobStatus.CANCELLED
        assert cancelled.container_id is None
        await manager.cancel(first.id)


async def test_out_of_memory_is_reported(manager: cj.JobManager, image: str) -> None:
    job = await manager.run(
        cj.JobSpec(image=image, command="head -c 200m /dev/zero | tail", memory_limit_mb=32)
    )
    assert job.status is cj.JobStatus.FAILED
    assert job.oom_killed is True
    assert job.error is not None and "memory limit" in job.error


async def test_memory_and_cpu_are_sampled(manager: cj.JobManager, image: str) -> None:
    hold = cj.JobSpec(
        image=image,
        command="x=$(head -c 40000000 /dev/zero | tr '\\0' a); sleep 3; echo ${#x}",
        memory_limit_mb=256,
    )
    busy = cj.JobSpec(
        image=image, command="end=$(($(date +%s)+3)); while [ $(date +%s) -lt $end ]; do :; done"
    )
    held, burned = await manager.run(hold), await manager.run(busy)
    assert held.stdout == "40000000\n"
    assert held.max_memory_bytes is not None and held.max_memory_bytes >= 30 * 1024 * 1024
    assert burned.status is cj.JobStatus.COMPLETED
    assert burned.cpu_usage_percent is not None and burned.cpu_usage_percent > 5


async def test_container_is_limited_and_hardened(manager: cj.JobManager, image: str) -> None:
    script = (
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null"
        " || cat /sys/fs/cgroup/memory.max;"
        "id -u; touch /rootfs-test 2>/dev/null && echo root-writable || echo root-readonly;"
        "touch /tmp/x && echo tmp-writable;"
        "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status;"
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"
    )
    job = await manager.run(cj.JobSpec(image=image, command=script, memory_limit_mb=96))
    lines = job.stdout.splitlines()
    assert lines[0] == str(96 * 1024 * 1024)
    assert lines[1] != "0"
    assert lines[2] == "root-readonly"
    assert lines[3] == "tmp-writable"
    assert lines[4].split() == ["CapEff:", "0000000000000000"]
    assert lines[5].split() == ["NoNewPrivs:", "1"]
    assert lines[6] == "256"
    assert job.spec.memory_limit_mb == 96
    assert job.spec.cpu_limit == 1.0  # the policy's default, recorded


async def test_environment_wins_over_template(manager: cj.JobManager, image: str) -> None:
    await manager.save_template(cj.EnvironmentTemplate("base", "A=from-template\nB=kept\n"))
    job = await manager.run(
        cj.JobSpec(
            image=image,
            command='echo "$A $B"',
            environment_template="base",
            environment={"A": "from-spec"},
        )
    )
    assert job.stdout == "from-spec kept\n"


async def test_refusals_store_nothing(manager: cj.JobManager, image: str) -> None:
    with pytest.raises(cj.TemplateNotFound):
        await manager.submit(cj.JobSpec(image=image, environment_template="nope"))
    with pytest.raises(cj.PolicyViolation) as refused:
        await manager.submit(cj.JobSpec(image=image, memory_limit_mb=4096))
    assert isinstance(refused.value, ValueError)
    assert "memory_limit_mb" in str(refused.value) and "2048" in str(refused.value)
    assert await manager.list_jobs() == []


async def test_output_is_cleaned_and_parsed(manager: cj.JobManager, image: str) -> None:
    text = '\033[32mgreen\033[0m\nprogress 50%%\rprogress 100%%\n{"ok": true}\n'
    job = await manager.run(cj.JobSpec(image=image, command=["printf", text]))
    assert job.clean_output == 'green\nprogress 100%\n{"ok": true}\n'
    assert job.parsed_output == {"ok": True}
    whole = await manager.run(cj.JobSpec(image=image, command="echo '[1, 2]'"))
    assert whole.parsed_output == [1, 2]


async def test_bytes_that_are_not_utf8_are_replaced(manager: cj.JobManager, image: str) -> None:
    job = await manager.run(cj.JobSpec(image=image, command=r"printf 'a\377b\n\303\251\n'"))
    assert job.stdout == "a\ufffdb\né\n"


async def test_twenty_thousand_lines_arrive_whole(manager: cj.JobManager, image: str) -> None:
    job = await manager.run(cj.JobSpec(image=image, command="seq 1 20000; seq 1 50 >&2"))
    expected = [str(i) for i in range(1, 20001)]
    assert job.stdout.splitlines() == expected
    stored = [line async for line in manager.logs(job.id, follow=False)]
    assert [line.text for line in stored if line.stream == "stdout"] == expected
    assert len([line for line in stored if line.stream == "stderr"]) == 50


async def test_long_line_is_one_line(manager: cj.JobManager, image: str) -> None:
    job = await manager.run(
        cj.JobSpec(image=image, command="head -c 100000 /dev/zero | tr '\\0' x; echo; echo next")
    )
    assert job.stdout == "x" * 100000 + "\nnext\n"
    stored = [line.text async for line in manager.logs(job.id, follow=False)]
    assert stored == ["x" * 100000, "next"]


async def test_missing_image_with_pull_never(manager: cj.JobManager) -> None:
    job = await manager.run(
        cj.JobSpec(image="containerjobs-test/absent:1", command="true", pull_policy="never")
    )
    assert job.status is cj.JobStatus.FAILED
    assert job.error is not None and "containerjobs-test/absent:1" in job.error


async def test_unknown_job(manager: cj.JobManager) -> None:
    with pytest.raises(cj.JobNotFound) as missing:
        await manager.get("no-such-job")
    assert isinstance(missing.value, KeyError)


async def test_events_follow_the_lifecycle(manager: cj.JobManager, image: str) -> None:
    seen: list[cj.JobEvent] = []

    async def collect() -> None:
        async for event in manager.events():
            seen.append(event)
            if event.status.is_terminal:
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        await anyio.lowlevel.checkpoint()
        await manager.run(cj.JobSpec(image=image, command="true"))
    assert [e.status for e in seen] == [
        cj.JobStatus.PENDING,
        cj.JobStatus.LAUNCHING,
        cj.JobStatus.RUNNING,
        cj.JobStatus.COMPLETED,
    ]
    assert [e.previous for e in seen] == [
        None,
        cj.JobStatus.PENDING,
        cj.JobStatus.LAUNCHING,
        cj.JobStatus.RUNNING,
    ]


async def test_concurrency_limit_holds(
    local_host: cj.DockerHost, image: str, no_leftovers: None
) -> None:
    host = cj.DockerHost("local", local_host.url, max_concurrent_jobs=2)
    running = peak = 0
    async with cj.JobManager(hosts=[host]) as manager:

        async def watch() -> None:
            nonlocal running, peak
            async for event in manager.events():
                if event.status is cj.JobStatus.RUNNING:
                    running += 1
                    peak = max(peak, running)
                elif event.status.is_terminal:
                    running -= 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await anyio.lowlevel.checkpoint()
            jobs = await manager.submit_many(
                [cj.JobSpec(image=image, command="sleep 1") for _ in range(6)]
            )
            done = [await manager.wait(job.id) for job in jobs]
            tg.cancel_scope.cancel()
    assert all(job.status is cj.JobStatus.COMPLETED for job in done)
    assert peak == 2


async def test_twenty_jobs_and_a_second_manager_on_the_same_file(
    local_host: cj.DockerHost, image: str, tmp_path: Path, no_leftovers: None
) -> None:
    db = tmp_path / "jobs.db"
    async with cj.JobManager(hosts=[local_host], storage=cj.SQLiteStorage(db)) as manager:
        jobs = await manager.submit_many(
            [cj.JobSpec(image=image, command=f"echo job {i}") for i in range(20)]
        )
        done = [await manager.wait(job.id) for job in jobs]
    assert [job.stdout for job in done] == [f"job {i}\n" for i in range(20)]
    assert all(job.status is cj.JobStatus.COMPLETED for job in done)
    async with cj.JobManager(hosts=[], storage=cj.SQLiteStorage(db)) as reader:
        again = await reader.get(done[7].id)
        assert again == done[7]
        assert [line.text async for line in reader.logs(again.id)] == ["job 7"]
        assert len(await reader.list_jobs()) == 20


async def test_default_manager_uses_memory(testbed: Bed, no_leftovers: None) -> None:
    async with cj.JobManager() as manager:
        assert isinstance(manager.storage, cj.InMemoryStorage)
        job = await manager.run(cj.JobSpec(image=testbed.image, command="echo hi"))
        assert job.stdout == "hi\n"


async def test_leaving_the_manager_cancels_running_jobs(
    local_host: cj.DockerHost, image: str, testbed: Bed, no_leftovers: None
) -> None:
    async with cj.JobManager(hosts=[local_host]) as manager:
        job = await manager.submit(cj.JobSpec(image=image, command="sleep 60"))
        await until_status(manager, job.id, cj.JobStatus.RUNNING)
    assert not testbed.labelled_containers()
    # The record says what happened, in a store that outlives the manager.


async def test_a_running_job_holds_two_connections_and_is_still_measured(
    local_host: cj.DockerHost, image: str, no_leftovers: None
) -> None:
    # Its log stream and its wait; stats are one-shot reads on a pooled connection.
    async with cj.JobManager(hosts=[local_host]) as manager:
        jobs = await manager.submit_many(
            [cj.JobSpec(image=image, command="sleep 4; echo done") for _ in range(6)]
        )
        for job in jobs:
            await until_status(manager, job.id, cj.JobStatus.RUNNING)
        await anyio.sleep(1.5)  # past the first stats readings
        assert manager._worker is not None
        executor = manager._worker.monitor["local"].executor
        connector = executor._engine._connector  # type: ignore[attr-defined]
        # In use, and idle in the pool (stats reads at once are few, so few idle).
        held = len(connector._acquired) + sum(len(idle) for idle in connector._conns.values())
        done = [await manager.wait(job.id, timeout=60) for job in jobs]
    assert held <= 2 * len(jobs) + 3
    for job in done:
        assert job.stdout == "done\n"
        assert job.max_memory_bytes is not None and job.max_memory_bytes > 0
        assert job.cpu_usage_percent is not None
