"""Jobs on the test bed's second swarm node: a worker (a dockerd in a network namespace
of its own, scripts/testbed up) beside the manager the executor speaks to. Placement
on a labelled node, and what the executor does for a task on a node it cannot reach:
no stats, no OOM flag, and a kill that Swarm carries out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

import containerjobs as cj
from tests.conftest import Bed, labelled_services, until_status
from tests.test_swarm import SWARM_POLICY, live_ticks, swarm_host

pytestmark = pytest.mark.docker

NODE_LABEL = "containerjobs-test-node"
ON_WORKER = (f"node.labels.{NODE_LABEL}==two",)
ON_MANAGER = ("node.role==manager",)


def job_containers(bed: Bed, socket: str, job_id: str = "", *, running: bool = False) -> set[str]:
    """The ids of a daemon's containers labelled with a job id (that job's, if given)."""
    label = "containerjobs.job_id" + (f"={job_id}" if job_id else "")
    out = bed.docker("ps", "-q" if running else "-aq", "--filter", f"label={label}",
                     socket=socket)
    return set(out.split())


async def until_gone(bed: Bed, job_id: str) -> None:
    """Wait until no container of the job is left on the worker (Swarm removes a task it
    stopped in its own time)."""
    with anyio.fail_after(15):
        while True:
            if not job_containers(bed, bed.swarm2_socket, job_id):
                return
            await anyio.sleep(0.2)


@pytest.fixture
def worker(testbed: Bed, no_services: None) -> Iterator[str]:
    """The worker node, labelled and active while the test runs, drained after: jobs
    without placement must keep landing on the manager for the other Swarm tests."""
    node, socket = testbed.swarm2_node, testbed.swarm2_socket
    if not node or not socket:
        pytest.fail("the test bed has no second swarm node (no CJ_SWARM2_NODE in its env "
                    "file): run scripts/testbed up", pytrace=False)
    try:
        testbed.docker("info", socket=socket)
        state = testbed.docker("node", "inspect", "--format", "{{.Status.State}}", node).strip()
    except AssertionError as exc:
        pytest.fail(f"the second swarm node is missing ({exc}): run scripts/testbed up",
                    pytrace=False)
    if state != "ready":
        pytest.fail(f"the second swarm node {node} is {state}: run scripts/testbed up",
                    pytrace=False)
    before = job_containers(testbed, socket)
    testbed.docker("node", "update", "--label-add", f"{NODE_LABEL}=two",
                   "--availability", "active", node)
    try:
        yield node
    finally:
        testbed.docker("node", "update", "--label-rm", NODE_LABEL, "--availability", "drain",
                       node)
    new = job_containers(testbed, socket) - before
    still_running = job_containers(testbed, socket, running=True) & new
    # Docker before 23 leaves a job's finished task, and its container on a node other
    # than the manager's, when the service is removed (moby/moby#44312): the test's
    # own are cleared here, once none of them runs.
    if new:
        testbed.docker("rm", "--force", *new, socket=socket)
    assert not still_running, f"containers still running on the worker: {sorted(still_running)}"


@pytest.fixture
async def swarm(worker: str) -> AsyncIterator[cj.JobManager]:
    async with cj.JobManager(hosts=[swarm_host(max_concurrent_jobs=4)], policy=SWARM_POLICY) as m:
        yield m


async def test_placement_puts_jobs_on_the_labelled_node(
    swarm: cj.JobManager, image: str, testbed: Bed
) -> None:
    script = "echo start {n}; sleep 3; echo end {n} >&2"
    specs = [cj.JobSpec(image, script.format(n=n), placement=ON_WORKER) for n in (1, 2)]
    specs.append(cj.JobSpec(image, script.format(n=3), placement=ON_MANAGER))
    jobs = await swarm.submit_many(specs)
    for job in jobs:
        await until_status(swarm, job.id, cj.JobStatus.RUNNING)
    for job, on_worker in zip(jobs, (True, True, False), strict=True):
        there = job_containers(testbed, testbed.swarm2_socket, job.id, running=True)
        here = job_containers(testbed, "unix:///var/run/docker.sock", job.id, running=True)
        assert (bool(there), bool(here)) == (on_worker, not on_worker), job.spec.placement
    done = [await swarm.wait(job.id, timeout=60) for job in jobs]
    for n, job in enumerate(done, start=1):
        assert job.status is cj.JobStatus.COMPLETED, job.error
        assert (job.stdout, job.stderr) == (f"start {n}\n", f"end {n}\n")


async def test_a_job_on_the_other_node_runs_whole_without_stats(
    swarm: cj.JobManager, image: str
) -> None:
    script = "echo out1; sleep 0.2; echo err1 >&2; seq 1 5000; printf 'no newline' >&2; exit 3"
    job = await swarm.run(cj.JobSpec(image, script, placement=ON_WORKER))
    assert (job.status, job.exit_code) == (cj.JobStatus.FAILED, 3)
    assert job.stdout == "out1\n" + "".join(f"{i}\n" for i in range(1, 5001))
    assert job.stderr == "err1\nno newline"
    assert job.error is not None and "exited with code 3" in job.error
    # Only the node that runs a task has its container's figures.
    assert job.max_memory_bytes is None and job.cpu_usage_percent is None


async def test_logs_are_live_from_the_other_node(swarm: cj.JobManager, image: str) -> None:
    await live_ticks(swarm, image, placement=ON_WORKER)


async def test_timeout_on_the_other_node_stops_the_task_and_keeps_the_output(
    swarm: cj.JobManager, image: str, testbed: Bed
) -> None:
    # Removing the service would leave the task running there (Docker before 23):
    # the executor has Swarm stop it.
    job = await swarm.run(cj.JobSpec(
        image, "echo before; sleep 60; echo after", timeout_seconds=3, placement=ON_WORKER
    ))
    assert job.status is cj.JobStatus.TIMEOUT, job.error
    assert job.stdout == "before\n"
    assert job.error is not None and "timed out" in job.error
    assert job.container_id not in labelled_services(testbed)
    await until_gone(testbed, job.id)


async def test_cancel_on_the_other_node_stops_the_task(
    swarm: cj.JobManager, image: str, testbed: Bed
) -> None:
    job = await swarm.submit(cj.JobSpec(image, "echo up; sleep 60", placement=ON_WORKER))
    async for _ in swarm.logs(job.id):
        break  # it runs
    assert job_containers(testbed, testbed.swarm2_socket, job.id, running=True)
    cancelled = await swarm.cancel(job.id)
    assert (cancelled.status, cancelled.stdout) == (cj.JobStatus.CANCELLED, "up\n")
    assert cancelled.container_id not in labelled_services(testbed)
    await until_gone(testbed, job.id)


async def test_running_out_of_memory_on_the_other_node_is_told_as_likely(
    swarm: cj.JobManager, image: str
) -> None:
    job = await swarm.run(cj.JobSpec(
        image, "head -c 200m /dev/zero | tail", memory_limit_mb=32, placement=ON_WORKER
    ))
    assert job.status is cj.JobStatus.FAILED
    # The daemon we ask cannot tell an OOM kill there from another SIGKILL.
    assert (job.exit_code, job.oom_killed) == (137, False)
    assert job.error is not None and "memory limit" in job.error
