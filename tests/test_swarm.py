"""Jobs on the test bed's Swarm: its main daemon is also a single-node swarm manager
(scripts/testbed up). The whole lifecycle, the security defaults, placement, crash
recovery, and a daemon that is both a Docker host and a Swarm manager."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

import containerjobs as cj
from containerjobs.executors import Executor, SwarmExecutor
from containerjobs.storage import storage_from_url
from containerjobs.testing import ExecutorContract
from tests.conftest import LOCAL_SOCKET, Bed, kill_when_ready, labelled_services, until_status

pytestmark = pytest.mark.docker

# Docker 20.10 (API 1.41) cannot set no-new-privileges on a service: the tests let it
# run unenforced where they are not about that gap.
SWARM_POLICY = cj.SecurityPolicy(allow_unenforced=("no-new-privileges",))
ZONE_LABEL = "containerjobs-test-zone"


def swarm_host(**kwargs: object) -> cj.SwarmHost:
    return cj.SwarmHost("swarm", LOCAL_SOCKET, **kwargs)  # type: ignore[arg-type]


def api_version(bed: Bed) -> tuple[int, int]:
    text = bed.docker("version", "--format", "{{.Server.APIVersion}}").strip()
    major, minor = text.split(".")
    return int(major), int(minor)


@pytest.fixture
async def swarm(no_services: None) -> AsyncIterator[cj.JobManager]:
    async with cj.JobManager(hosts=[swarm_host(max_concurrent_jobs=4)], policy=SWARM_POLICY) as m:
        yield m


@pytest.fixture(scope="module")
def zone(testbed: Bed) -> Iterator[str]:
    """A node label the test bed's only node carries while the module runs."""
    node = testbed.docker("info", "--format", "{{.Swarm.NodeID}}").strip()
    testbed.docker("node", "update", "--label-add", f"{ZONE_LABEL}=a", node)
    yield "a"
    testbed.docker("node", "update", "--label-rm", ZONE_LABEL, node)


class TestSwarmExecutor(ExecutorContract):
    image: ClassVar[str] = ""
    policy: ClassVar[cj.SecurityPolicy] = SWARM_POLICY

    @pytest.fixture(autouse=True)
    def _bed(self, testbed: Bed, no_services: None) -> None:
        type(self).image = testbed.image

    async def make_executor(self) -> Executor:
        return swarm_host().executor()


# --- the lifecycle ---------------------------------------------------------------------


async def test_both_streams_apart_in_order_with_timestamps(
    swarm: cj.JobManager, image: str
) -> None:
    script = "echo out1; sleep 0.2; echo err1 >&2; sleep 0.2; echo out2; sleep 0.2; echo err2 >&2"
    job = await swarm.run(cj.JobSpec(image, script))
    assert job.status is cj.JobStatus.COMPLETED, job.error
    assert (job.exit_code, job.host, job.stdout, job.stderr) == (0, "swarm", "out1\nout2\n",
                                                                 "err1\nerr2\n")
    lines = [line async for line in swarm.logs(job.id, follow=False)]
    assert [(line.stream, line.text) for line in lines] == [
        ("stdout", "out1"), ("stderr", "err1"), ("stdout", "out2"), ("stderr", "err2"),
    ]
    stamps = [line.timestamp for line in lines]
    assert all(stamp.tzinfo is not None for stamp in stamps) and stamps == sorted(stamps)
    assert job.started_at is not None and job.completed_at is not None


async def test_a_non_zero_exit_fails_with_its_code(swarm: cj.JobManager, image: str) -> None:
    job = await swarm.run(cj.JobSpec(image, "echo partial; exit 3"))
    assert (job.status, job.exit_code, job.stdout) == (cj.JobStatus.FAILED, 3, "partial\n")
    assert job.error is not None and "exited with code 3" in job.error


async def test_logs_are_live(swarm: cj.JobManager, image: str) -> None:
    await live_ticks(swarm, image)


async def live_ticks(swarm: cj.JobManager, image: str, **spec: Any) -> None:
    """A job that ticks four times a second apart: each line arrives while it runs."""
    job = await swarm.submit(
        cj.JobSpec(image, "for i in 1 2 3 4; do echo tick $i; sleep 1; done", **spec)
    )
    seen: list[str] = []
    async for line in swarm.logs(job.id):
        if not seen:
            assert (await swarm.get(job.id)).status is cj.JobStatus.RUNNING
        seen.append(line.text)
    assert seen == [f"tick {i}" for i in range(1, 5)]
    assert (await swarm.get(job.id)).status is cj.JobStatus.COMPLETED


async def test_a_fast_job_loses_no_output(swarm: cj.JobManager, image: str) -> None:
    jobs = await swarm.submit_many(
        [cj.JobSpec(image, f"seq 1 {n}; printf 'no newline {n}'") for n in (1, 500, 5000)]
    )
    for n, job in zip((1, 500, 5000), jobs, strict=True):
        done = await swarm.wait(job.id, timeout=60)
        expected = "".join(f"{i}\n" for i in range(1, n + 1)) + f"no newline {n}"
        assert done.stdout == expected


async def test_a_long_line_arrives_whole(swarm: cj.JobManager, image: str) -> None:
    job = await swarm.run(cj.JobSpec(image, "head -c 100000 /dev/zero | tr '\\0' x; echo"))
    assert job.stdout == "x" * 100000 + "\n"


async def test_timeout_kills_and_keeps_the_output(
    swarm: cj.JobManager, image: str, testbed: Bed
) -> None:
    job = await swarm.run(
        cj.JobSpec(image, "echo before; sleep 60; echo after", timeout_seconds=3)
    )
    assert job.status is cj.JobStatus.TIMEOUT
    assert job.stdout == "before\n"
    assert job.error is not None and "timed out" in job.error
    assert job.container_id not in labelled_services(testbed)


async def test_cancel_removes_the_service(
    swarm: cj.JobManager, image: str, testbed: Bed
) -> None:
    job = await swarm.submit(cj.JobSpec(image, "echo up; sleep 60"))
    async for _ in swarm.logs(job.id):
        break  # it runs
    running = await swarm.get(job.id)
    assert running.status is cj.JobStatus.RUNNING
    assert running.container_id in labelled_services(testbed)
    cancelled = await swarm.cancel(job.id)
    assert (cancelled.status, cancelled.stdout) == (cj.JobStatus.CANCELLED, "up\n")
    assert running.container_id not in labelled_services(testbed)
    assert not testbed.labelled_containers()


async def test_a_missing_image_fails_naming_it(swarm: cj.JobManager) -> None:
    missing = "containerjobs-test/absent:never"
    job = await swarm.run(cj.JobSpec(missing, "true", pull_policy="never", max_retries=3))
    assert job.status is cj.JobStatus.FAILED
    assert job.attempts == 1  # a missing image stays missing: no retry
    assert job.error is not None and missing in job.error


async def test_running_out_of_memory_is_reported(swarm: cj.JobManager, image: str) -> None:
    job = await swarm.run(
        cj.JobSpec(image, "head -c 200m /dev/zero | tail", memory_limit_mb=32)
    )
    assert job.status is cj.JobStatus.FAILED
    assert (job.exit_code, job.oom_killed) == (137, True)  # the node is the one we ask
    assert job.error is not None and "memory limit" in job.error


async def test_memory_and_cpu_are_sampled_on_the_local_node(
    swarm: cj.JobManager, image: str
) -> None:
    job = await swarm.run(cj.JobSpec(
        image,
        "x=$(head -c 40000000 /dev/zero | tr '\\0' a); "
        "end=$(($(date +%s)+3)); while [ $(date +%s) -lt $end ]; do :; done; echo ${#x}",
        memory_limit_mb=256,
    ))
    assert job.stdout == "40000000\n"
    assert job.max_memory_bytes is not None and job.max_memory_bytes >= 30 * 1024 * 1024
    assert job.cpu_usage_percent is not None and job.cpu_usage_percent > 5


# --- the security defaults --------------------------------------------------------------


async def test_the_security_defaults_reach_the_task(
    swarm: cj.JobManager, image: str, testbed: Bed
) -> None:
    script = (
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null"
        " || cat /sys/fs/cgroup/memory.max;"
        "id -u; id -g; touch /rootfs-test 2>/dev/null && echo root-writable || echo root-readonly;"
        "touch /tmp/x && echo tmp-writable;"
        "grep -E '^CapEff' /proc/self/status;"
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max;"
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us;"
        "grep -E '^NoNewPrivs' /proc/self/status"
    )
    job = await swarm.run(cj.JobSpec(image, script, memory_limit_mb=96, cpu_limit=0.5))
    assert job.status is cj.JobStatus.COMPLETED, job.error
    lines = job.stdout.splitlines()
    assert lines[0] == str(96 * 1024 * 1024)
    assert lines[1:3] == ["65534", "65534"]
    assert lines[3:5] == ["root-readonly", "tmp-writable"]
    assert lines[5].split() == ["CapEff:", "0000000000000000"]
    assert lines[6] == "256"
    assert int(lines[7]) * 2 == int(lines[8])  # half a core
    # Enforced where the API can say it; otherwise run without, as the policy allows.
    enforced = api_version(testbed) >= (1, 46)
    assert lines[9].split() == ["NoNewPrivs:", "1" if enforced else "0"]


async def test_a_gap_the_policy_does_not_allow_is_refused(
    image: str, testbed: Bed, no_services: None
) -> None:
    if api_version(testbed) >= (1, 46):
        pytest.fail("the test bed's Docker can set no-new-privileges: this test needs 1.41-1.45")
    async with cj.JobManager(hosts=[swarm_host()]) as manager:  # the default policy
        job = await manager.run(cj.JobSpec(image, "echo never", max_retries=2))
    assert (job.status, job.attempts, job.stdout) == (cj.JobStatus.FAILED, 1, "")
    assert job.error is not None
    for words in ("no-new-privileges", "API 1.46", "allow_unenforced"):
        assert words in job.error
    assert job.container_id is None


def test_the_policy_only_lets_known_settings_go_unenforced() -> None:
    with pytest.raises(ValueError, match="no-new-privileges"):
        cj.SecurityPolicy(allow_unenforced=("no_new_privileges",))
    one = cj.SecurityPolicy(allow_unenforced="no-new-privileges")  # type: ignore[arg-type]
    assert one.allow_unenforced == ("no-new-privileges",)


async def test_a_named_user_is_refused_on_swarm(swarm: cj.JobManager, image: str) -> None:
    job = await swarm.run(cj.JobSpec(image, "id -u", user="nobody"))
    assert job.status is cj.JobStatus.FAILED
    assert job.error is not None and "numeric user:group" in job.error
    numeric = await swarm.run(cj.JobSpec(image, "id -u", user="1234:1234"))
    assert numeric.stdout == "1234\n"


# --- placement ----------------------------------------------------------------------------


async def test_a_constraint_the_node_meets_runs_there(
    swarm: cj.JobManager, image: str, zone: str
) -> None:
    for placement in ((f"node.labels.{ZONE_LABEL}=={zone}",), ("node.role==manager",)):
        job = await swarm.run(cj.JobSpec(image, "echo placed", placement=placement))
        assert (job.status, job.stdout) == (cj.JobStatus.COMPLETED, "placed\n"), job.error
        assert job.spec.placement == placement


async def test_a_constraint_no_node_meets_stays_pending_and_says_why(
    swarm: cj.JobManager, image: str, zone: str, testbed: Bed
) -> None:
    job = await swarm.submit(
        cj.JobSpec(image, "echo never", placement=[f"node.labels.{ZONE_LABEL}==elsewhere"])
    )
    events = swarm.events()  # the job goes back to pending: an event
    try:
        with anyio.fail_after(30):
            while (seen := await swarm.get(job.id)).error is None:
                async for event in events:
                    if event.job_id == job.id:
                        break
    finally:
        await events.aclose()
    assert seen.status is cj.JobStatus.PENDING
    assert "no suitable node" in seen.error and "elsewhere" in seen.error
    assert seen.attempts == 0  # waiting to be placed is not an attempt
    assert not labelled_services(testbed)  # nothing held while it waits
    cancelled = await swarm.cancel(job.id)
    assert cancelled.status is cj.JobStatus.CANCELLED


async def test_placement_sends_jobs_to_the_swarm_host_only(
    image: str, local_host: cj.DockerHost, no_services: None, zone: str
) -> None:
    hosts = [local_host, swarm_host()]
    async with cj.JobManager(hosts=hosts, policy=SWARM_POLICY) as manager:
        specs = [
            cj.JobSpec(image, "echo hi", placement=(f"node.labels.{ZONE_LABEL}=={zone}",))
            for _ in range(4)
        ]
        jobs = [await manager.wait(job.id, timeout=60) for job in await manager.submit_many(specs)]
    assert {(job.status, job.host) for job in jobs} == {(cj.JobStatus.COMPLETED, "swarm")}


async def test_placement_without_a_swarm_host_is_refused_at_submit(
    manager: cj.JobManager, image: str
) -> None:
    with pytest.raises(cj.InvalidJobSpec, match="placement"):
        await manager.submit(cj.JobSpec(image, "true", placement=("node.role==worker",)))
    assert await manager.list_jobs() == []


# --- one daemon, both executors ----------------------------------------------------------


async def test_each_executor_finds_only_its_own(
    image: str, local_host: cj.DockerHost, no_services: None
) -> None:
    docker, swarm = local_host.executor(), swarm_host().executor()
    await docker.open()
    await swarm.open()
    try:
        async with cj.JobManager(hosts=[local_host, swarm_host()], policy=SWARM_POLICY,
                                 strategy=cj.RoundRobin()) as manager:
            jobs = await manager.submit_many([cj.JobSpec(image, "sleep 5") for _ in range(2)])
            for job in jobs:
                await until_status(manager, job.id, cj.JobStatus.RUNNING)
            by_host = {(await manager.get(job.id)).host: job.id for job in jobs}
            assert set(by_host) == {"local", "swarm"}
            assert await docker.find(job_id=by_host["swarm"]) == []
            assert await swarm.find(job_id=by_host["local"]) == []
            assert [i.job_id for i in await docker.find() if i.job_id in by_host.values()] == [
                by_host["local"]
            ]
            assert [i.job_id for i in await swarm.find() if i.job_id in by_host.values()] == [
                by_host["swarm"]
            ]
            done = [await manager.wait(job.id, timeout=60) for job in jobs]
        assert all(job.status is cj.JobStatus.COMPLETED for job in done)
    finally:
        await docker.close()
        await swarm.close()


async def test_orphan_removal_on_one_executor_spares_the_other(
    image: str, testbed: Bed, tmp_path: Path, no_services: None
) -> None:
    # A store's reconciliation removes the containers of jobs that ended. A Docker
    # host's must not take a running Swarm task's container for one, nor the reverse.
    db = f"sqlite://{tmp_path}/jobs.db"
    local = cj.DockerHost("local", LOCAL_SOCKET)
    async with cj.JobManager(hosts=[swarm_host()], storage=storage_from_url(db),
                             policy=SWARM_POLICY) as on_swarm:
        job = await on_swarm.submit(cj.JobSpec(image, "echo start; sleep 6; echo end"))
        await until_status(on_swarm, job.id, cj.JobStatus.RUNNING)
        async with cj.JobManager(hosts=[local], storage=storage_from_url(db),
                                 lease_ttl=0.6) as on_docker:
            await anyio.sleep(1.5)  # reconciliation rounds, every 0.2 s
            plain = await on_docker.run(cj.JobSpec(image, "echo plain"))
        done = await on_swarm.wait(job.id, timeout=60)
    assert (done.status, done.stdout) == (cj.JobStatus.COMPLETED, "start\nend\n")
    assert plain.stdout == "plain\n"


# --- crash recovery ------------------------------------------------------------------------

SUBMIT_AND_HANG = """
import sys, anyio
import containerjobs as cj
from containerjobs.storage import storage_from_url

async def main() -> None:
    host = cj.SwarmHost("swarm", "unix:///var/run/docker.sock")
    policy = cj.SecurityPolicy(allow_unenforced=("no-new-privileges",))
    manager = cj.JobManager(hosts=[host], storage=storage_from_url(sys.argv[1]),
                            policy=policy, lease_ttl=2.0)
    await manager.start()
    script = "echo before; seq 1 300; sleep 4; seq 301 600; echo after >&2"
    jobs = await manager.submit_many([cj.JobSpec(sys.argv[2], script) for _ in range(3)])
    for job in jobs:
        async for line in manager.logs(job.id):
            break  # it runs
    print("ready", flush=True)
    await anyio.sleep_forever()

anyio.run(main)
"""


async def test_a_killed_manager_s_swarm_jobs_are_adopted(
    testbed: Bed, tmp_path: Path, no_services: None
) -> None:
    db = f"sqlite://{tmp_path}/jobs.db"
    await kill_when_ready(SUBMIT_AND_HANG, tmp_path, db, testbed.image)
    assert len(labelled_services(testbed)) >= 3  # they run on without their manager
    async with cj.JobManager(hosts=[swarm_host()], storage=storage_from_url(db),
                             policy=SWARM_POLICY) as adopter:
        jobs = await adopter.list_jobs()
        done = [await adopter.wait(job.id, timeout=60) for job in jobs]
        logs = [[line.text async for line in adopter.logs(job.id, follow=False)] for job in done]
    expected = "before\n" + "".join(f"{i}\n" for i in range(1, 601))
    for job, lines in zip(done, logs, strict=True):
        assert job.status is cj.JobStatus.COMPLETED, job.error
        assert (job.stdout, job.stderr, job.attempts) == (expected, "after\n", 1)
        assert len(lines) == 602  # stored once each: nothing lost or doubled
    assert not testbed.labelled_containers()


# --- without Docker ---------------------------------------------------------------------


def test_placement_constraints_are_checked_when_the_spec_is_made() -> None:
    spec = cj.JobSpec("img", placement=[" node.labels.zone == a ", "node.role!=manager"])
    assert spec.placement == ("node.labels.zone==a", "node.role!=manager")
    assert cj.JobSpec("img", placement="node.role==worker").placement == ("node.role==worker",)
    for bad in ("zone=a", "node.labels.zone==", "labels.zone==a", "node.labels.==a", ""):
        with pytest.raises(cj.InvalidJobSpec, match=r"JobSpec\.placement\[0\]"):
            cj.JobSpec("img", placement=[bad])
    with pytest.raises(TypeError, match="placement"):
        cj.JobSpec("img", placement=[1])  # type: ignore[list-item]


def test_a_swarm_host_is_a_host_that_takes_placement() -> None:
    host = cj.SwarmHost("s", "tcp://10.0.0.1:2376", max_concurrent_jobs=50)
    assert isinstance(host, cj.Host)
    assert isinstance(host.executor(), SwarmExecutor)
    assert host.takes_placement
    with pytest.raises(ValueError, match="url"):
        cj.SwarmHost("s", "10.0.0.1:2376")
    with pytest.raises(ValueError, match="max_concurrent_jobs"):
        cj.SwarmHost("s", "tcp://10.0.0.1:2376", max_concurrent_jobs=0)


async def test_a_docker_manager_is_told_it_is_not_a_swarm_manager(testbed: Bed) -> None:
    # The second daemon of the test bed is a plain Docker daemon.
    executor = cj.SwarmHost("plain", testbed.docker2_socket).executor()
    await executor.open()
    try:
        with pytest.raises(cj.HostUnavailable, match="not a Swarm manager"):
            await executor.ping()
    finally:
        await executor.close()



# --- the command ------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "containerjobs.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_the_cli_runs_a_job_on_the_swarm(image: str, zone: str, no_services: None) -> None:
    done = cli("run", "--swarm", "--allow-unenforced", "no-new-privileges",
               "--placement", f"node.labels.{ZONE_LABEL}=={zone}",
               image, "sh", "-c", "echo out; echo err >&2; exit 4")
    assert (done.returncode, done.stdout) == (4, "out\n")
    assert done.stderr.startswith("err\n") and "exited with code 4" in done.stderr


def test_the_cli_says_what_a_swarm_job_lacks(image: str, no_services: None) -> None:
    refused = cli("run", "--swarm", image, "true")
    assert refused.returncode == 125  # the default policy: no-new-privileges is a gap
    assert "allow_unenforced" in refused.stderr
    plain = cli("run", "--placement", "node.role==manager", image, "true")
    assert plain.returncode == 2 and "needs a Swarm host" in plain.stderr
