"""The executor contract, run against the Docker executor on the test bed and against
the fake engine, as an executor of your own would run it."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest

import containerjobs as cj
from containerjobs.executors import Executor
from containerjobs.testing import ExecutorContract, FakeCluster, FakeRun
from tests.conftest import LOCAL_SOCKET, Bed


@pytest.mark.docker
class TestDockerExecutor(ExecutorContract):
    image: ClassVar[str] = ""

    @pytest.fixture(autouse=True)
    def _bed(self, testbed: Bed) -> None:
        # The test bed's image; a missing test bed fails here, loudly.
        type(self).image = testbed.image

    async def make_executor(self) -> Executor:
        return cj.DockerHost("local", LOCAL_SOCKET).executor()


class TestFakeExecutor(ExecutorContract):
    image: ClassVar[str] = "example/fake:1"

    def program(
        self, *, stdout: str = "", stderr: str = "", exit_code: int = 0, seconds: float = 0.0
    ) -> tuple[str, ...]:
        # The fake runs no shell: the job says what it does, for the behaviour below.
        return ("fake", json.dumps([stdout, stderr, exit_code, seconds]))

    @staticmethod
    def behaviour(job: cj.Job) -> FakeRun:
        if job.spec.image == ExecutorContract.missing_image:
            return FakeRun(launch_error=cj.ImageNotFound(
                f"image {job.spec.image!r} not found on host 'fake' and pull_policy is 'never'"
            ))
        assert isinstance(job.spec.command, tuple)
        stdout, stderr, exit_code, seconds = json.loads(job.spec.command[1])
        return FakeRun(stdout=stdout, stderr=stderr, exit_code=exit_code, duration=seconds)

    async def make_executor(self) -> Executor:
        return FakeCluster(self.behaviour)(cj.DockerHost("fake", "unix:///fake.sock"))
