"""The security policy, bad input and secrets: refusals leave nothing behind."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings

import containerjobs as cj
from containerjobs.testing import FakeCluster
from tests.conftest import Bed
from tests.strategies import wild_spec_kwargs


@pytest.fixture
async def client() -> AsyncIterator[cj.JobManager]:
    # A client manager stores jobs and runs none: refusals are all that can happen.
    async with cj.JobManager(hosts=[]) as manager:
        yield manager


@pytest.mark.parametrize(
    "spec",
    [
        cj.JobSpec(image="alpine", memory_limit_mb=2049),
        cj.JobSpec(image="alpine", cpu_limit=2.5),
        cj.JobSpec(image="alpine", timeout_seconds=3601),
        cj.JobSpec(image="alpine", networks=["host"]),
        cj.JobSpec(image="alpine", user="0"),
        cj.JobSpec(image="alpine", user="root"),
        cj.JobSpec(image="alpine", user="0:0"),
        cj.JobSpec(image="alpine", mounts=[cj.Mount("/etc", "/data")]),
        cj.JobSpec(image="alpine", mounts=[cj.Mount("/var/run/docker.sock", "/s")]),
    ],
    ids=["memory", "cpu", "timeout", "host-network", "uid-0", "root", "0:0", "etc", "socket"],
)
async def test_refusals_name_the_field_and_store_nothing(
    client: cj.JobManager, spec: cj.JobSpec
) -> None:
    with pytest.raises(cj.PolicyViolation) as refused:
        await client.submit(spec)
    assert isinstance(refused.value, ValueError)
    message = str(refused.value)
    assert any(
        field in message
        for field in (
            "memory_limit_mb",
            "cpu_limit",
            "timeout_seconds",
            "networks",
            "user",
            "mounts",
        )
    )
    assert await client.list_jobs() == []


async def test_registry_allow_list(tmp_path: Path) -> None:
    policy = cj.SecurityPolicy(allowed_registries=["127.0.0.1:5000"])
    async with cj.JobManager(hosts=[], policy=policy) as client:
        with pytest.raises(cj.PolicyViolation, match=r"docker\.io"):
            await client.submit(cj.JobSpec(image="alpine"))
        await client.submit(cj.JobSpec(image="127.0.0.1:5000/team/tool:1"))
        assert len(await client.list_jobs()) == 1


async def test_mount_sources_are_resolved_before_they_are_checked(tmp_path: Path) -> None:
    allowed = tmp_path / "shared"
    (allowed / "data").mkdir(parents=True)
    (allowed / "to-etc").symlink_to("/etc")
    policy = cj.SecurityPolicy(allowed_mount_sources=[str(allowed)])
    async with cj.JobManager(hosts=[], policy=policy) as client:
        ok = await client.submit(
            cj.JobSpec(image="alpine", mounts=[cj.Mount(str(allowed / "data"), "/data")])
        )
        assert ok.spec.mounts[0].read_only is True
        for source in (
            allowed / "to-etc",
            f"{allowed}/data/../../..{tmp_path}",
            f"{allowed}/../outside",
        ):
            with pytest.raises((cj.PolicyViolation, cj.InvalidJobSpec)):
                await client.submit(
                    cj.JobSpec(image="alpine", mounts=[cj.Mount(str(source), "/x")])
                )
        assert len(await client.list_jobs()) == 1


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kwargs=wild_spec_kwargs)
async def test_any_input_is_stored_or_refused_cleanly(kwargs: dict[str, Any]) -> None:
    async with cj.JobManager(hosts=[], executor_factory=FakeCluster()) as client:
        try:
            spec = cj.JobSpec(**kwargs)
            job = await client.submit(spec)
        except (cj.ContainerJobsError, ValueError, TypeError):
            assert await client.list_jobs() == []
        else:
            assert [j.id for j in await client.list_jobs()] == [job.id]
            assert job.status is cj.JobStatus.PENDING


@pytest.mark.docker
async def test_allowed_folder_mounts_read_only(
    image: str, tmp_path: Path, no_leftovers: None
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "input.txt").write_text("from the host\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(shared, 0o777)
    policy = cj.SecurityPolicy(allowed_mount_sources=[str(tmp_path)])
    local = cj.DockerHost("local", "unix:///var/run/docker.sock")
    async with cj.JobManager(hosts=[local], policy=policy) as manager:
        read = await manager.run(
            cj.JobSpec(
                image=image,
                command="cat /data/input.txt; touch /data/new && echo wrote || echo ro",
                mounts=[cj.Mount(str(shared), "/data")],
            )
        )
        writable = await manager.run(
            cj.JobSpec(
                image=image,
                command="echo out > /data/made.txt",
                mounts=[cj.Mount(str(shared), "/data", read_only=False)],
            )
        )
    assert read.stdout == "from the host\nro\n"
    assert writable.status is cj.JobStatus.COMPLETED
    assert (shared / "made.txt").read_text() == "out\n"


@pytest.mark.docker
async def test_secrets_stay_out_of_logs_errors_and_reprs(
    testbed: Bed,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    no_leftovers: None,
) -> None:
    secret = "tok-3f9a1c5e7b-very-secret"
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        async with cj.JobManager(
            hosts=[cj.DockerHost("local", "unix:///var/run/docker.sock")]
        ) as manager:
            job = await manager.run(
                cj.JobSpec(
                    image=testbed.image,
                    command='test -n "$API_TOKEN" && exit 5',
                    environment={"API_TOKEN": secret},
                )
            )
    assert job.status is cj.JobStatus.FAILED and job.exit_code == 5
    assert job.spec.environment["API_TOKEN"] == secret  # stored: it must run with it
    names = [event["event"] for event in events]
    assert "job.submitted" in names and "job.running" in names and "job.finished" in names
    everything = (
        repr(events) + caplog.text + "".join(capsys.readouterr()) + repr(job) + str(job.error)
    )
    assert secret not in everything
