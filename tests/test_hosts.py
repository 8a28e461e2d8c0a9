"""Several Docker hosts: the local daemon and the test bed's second daemon over TLS."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import anyio
import pytest

import containerjobs as cj
from tests.conftest import LOCAL_SOCKET, Bed

pytestmark = pytest.mark.docker


def remote_host(testbed: Bed, name: str = "remote", **kwargs: object) -> cj.DockerHost:
    return cj.DockerHost(
        name, testbed.tls_url, tls=cj.TLSConfig.from_cert_path(testbed.cert_dir), **kwargs
    )  # type: ignore[arg-type]


def local(name: str = "local", **kwargs: object) -> cj.DockerHost:
    return cj.DockerHost(name, LOCAL_SOCKET, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def nothing_left_on_either_daemon(testbed: Bed) -> Iterator[None]:
    yield
    for socket in (LOCAL_SOCKET, testbed.docker2_socket):
        left = testbed.labelled_containers(socket)
        if left:
            testbed.docker("rm", "-f", *left, socket=socket)
        assert not left, f"containers left on {socket}: {left}"


async def run_all(manager: cj.JobManager, specs: list[cj.JobSpec]) -> list[cj.Job]:
    jobs = await manager.submit_many(specs)
    return [await manager.wait(job.id, timeout=120) for job in jobs]


async def track_running(
    manager: cj.JobManager,
    peaks: Counter[str],
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    running: Counter[str] = Counter()
    hosts: dict[str, str] = {}
    events = manager.events()
    task_status.started()
    async for event in events:
        if event.status is cj.JobStatus.RUNNING:
            host = (await manager.get(event.job_id)).host
            assert host is not None
            hosts[event.job_id] = host
            running[host] += 1
            peaks[host] = max(peaks[host], running[host])
        elif event.status.is_terminal and event.job_id in hosts:
            running[hosts[event.job_id]] -= 1


async def test_jobs_spread_over_a_unix_and_a_tls_host(testbed: Bed) -> None:
    hosts = [local(max_concurrent_jobs=2), remote_host(testbed, max_concurrent_jobs=2)]
    async with cj.JobManager(hosts=hosts) as manager:
        done = await run_all(
            manager,
            [cj.JobSpec(image=testbed.image, command=f"sleep 1; echo {i}") for i in range(8)],
        )
    assert all(job.status is cj.JobStatus.COMPLETED for job in done)
    assert [job.stdout for job in done] == [f"{i}\n" for i in range(8)]
    per_host = Counter(job.host for job in done)
    assert per_host["local"] >= 2 and per_host["remote"] >= 2


async def test_health_and_placement_around_bad_hosts(testbed: Bed) -> None:
    wrong_ca = cj.TLSConfig(
        testbed.wrong_ca, testbed.cert_dir / "cert.pem", testbed.cert_dir / "key.pem"
    )
    hosts = [
        local(),
        remote_host(testbed),
        cj.DockerHost("dead", "tcp://127.0.0.1:1"),
        cj.DockerHost("wrong-ca", testbed.tls_url, tls=wrong_ca),
    ]
    async with cj.JobManager(hosts=hosts) as manager:
        health = await manager.health()
        for good in ("local", "remote"):
            assert health[good].healthy and health[good].response_time is not None
            assert health[good].error is None
        for bad in ("dead", "wrong-ca"):
            assert not health[bad].healthy and health[bad].error
        assert "dead" in (health["dead"].error or "")
        assert "TLS" in (health["wrong-ca"].error or "")
        done = await run_all(manager, [cj.JobSpec(image=testbed.image, command="true")] * 6)
    assert {job.host for job in done} <= {"local", "remote"}
    assert all(job.status is cj.JobStatus.COMPLETED for job in done)


async def test_inactive_pinned_and_unknown_hosts(testbed: Bed) -> None:
    hosts = [local("idle", active=False), remote_host(testbed)]
    async with cj.JobManager(hosts=hosts) as manager:
        done = await run_all(manager, [cj.JobSpec(image=testbed.image, command="true")] * 3)
        assert {job.host for job in done} == {"remote"}
        with pytest.raises(cj.ContainerJobsError):
            await manager.submit(cj.JobSpec(image=testbed.image, host="elsewhere"))
    async with cj.JobManager(hosts=[local(), remote_host(testbed)]) as manager:
        pinned = await run_all(
            manager, [cj.JobSpec(image=testbed.image, command="true", host="remote")] * 4
        )
        assert {job.host for job in pinned} == {"remote"}


async def test_one_slot_per_host_holds(testbed: Bed) -> None:
    hosts = [local(max_concurrent_jobs=1), remote_host(testbed, max_concurrent_jobs=1)]
    peaks: Counter[str] = Counter()
    async with cj.JobManager(hosts=hosts) as manager:
        async with anyio.create_task_group() as tg:
            await tg.start(track_running, manager, peaks)
            done = await run_all(
                manager, [cj.JobSpec(image=testbed.image, command="sleep 0.5")] * 6
            )
            tg.cancel_scope.cancel()
    assert all(job.status is cj.JobStatus.COMPLETED for job in done)
    assert peaks == Counter({"local": 1, "remote": 1})


async def test_private_registry_needs_credentials(testbed: Bed) -> None:
    for socket in (LOCAL_SOCKET, testbed.docker2_socket):
        testbed.docker("image", "rm", "-f", testbed.registry_image, socket=socket)
    spec = cj.JobSpec(
        image=testbed.registry_image, command="cat /etc/containerjobs-private", pull_policy="always"
    )
    async with cj.JobManager(hosts=[local()]) as manager:
        refused = await manager.run(spec)
    assert refused.status is cj.JobStatus.FAILED
    assert refused.error is not None
    assert testbed.registry_image in refused.error and testbed.registry in refused.error
    auth = {testbed.registry: cj.RegistryAuth(testbed.registry_user, testbed.registry_password)}
    wrong = {testbed.registry: cj.RegistryAuth(testbed.registry_user, "not-the-password")}
    async with cj.JobManager(hosts=[local(registry_auth=wrong)]) as manager:
        denied = await manager.run(spec)
    assert denied.status is cj.JobStatus.FAILED
    assert "not-the-password" not in (denied.error or "")
    async with cj.JobManager(hosts=[local(registry_auth=auth)]) as manager:
        allowed = await manager.run(spec)
    assert allowed.status is cj.JobStatus.COMPLETED, allowed.error
    for job in (refused, denied, allowed):
        assert testbed.registry_password not in repr(job)


async def test_prewarm_pulls_on_every_host(testbed: Bed) -> None:
    for socket in (LOCAL_SOCKET, testbed.docker2_socket):
        testbed.docker("image", "rm", "-f", testbed.registry_image, socket=socket)
    auth = {testbed.registry: cj.RegistryAuth(testbed.registry_user, testbed.registry_password)}
    hosts = [local(registry_auth=auth), remote_host(testbed, registry_auth=auth)]
    async with cj.JobManager(hosts=hosts) as manager:
        report = await manager.prewarm([testbed.registry_image])
    assert set(report) == {"local", "remote"}
    assert all(result.ok for results in report.values() for result in results), report
    for socket in (LOCAL_SOCKET, testbed.docker2_socket):
        testbed.docker("image", "inspect", testbed.registry_image, socket=socket)
