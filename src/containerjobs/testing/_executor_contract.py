"""`ExecutorContract`: what the manager expects of every executor, as tests (see
the class for how to use it)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import anyio
import pytest

from .._errors import ImageNotFound
from .._models import Job, JobSpec, JobStatus
from .._policy import SecurityPolicy
from ..executors import (
    LABEL_ATTEMPT,
    LABEL_JOB_ID,
    LABEL_MANAGER,
    LABEL_STORE,
    Executor,
    LaunchRequest,
    OutputLine,
)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


class ExecutorContract:
    """The behaviour checks every executor passes.

    Subclass it in a test module with a way to make your executor, and pytest runs the
    whole suite against it:

    ```python
    from containerjobs.testing import ExecutorContract

    class TestMyEngine(ExecutorContract):
        image = "busybox:latest"      # an image the engine has, with /bin/sh

        async def make_executor(self) -> Executor:
            return MyExecutor(MyHost("test", ...))
    ```

    The jobs the suite runs are small shell programs (``printf``, ``sleep``, ``exit``),
    written by `program`; an engine that cannot run a shell (a fake) overrides
    `program` to encode what the job should do in a form it understands.

    Set, in the subclass:

    Attributes:
        image: an image the engine has (or can pull), able to run `program`'s output.
        missing_image: an image the engine does not have and cannot pull.
        kill_timeout: seconds a killed container may take to be reported stopped.
        policy: the security policy the suite's requests are made with (an engine
            that cannot express a default lets it run unenforced here).
    """

    image: ClassVar[str] = ""
    policy: ClassVar[SecurityPolicy] = SecurityPolicy()
    missing_image: ClassVar[str] = "containerjobs-test/absent:never"
    kill_timeout: ClassVar[float] = 30.0

    async def make_executor(self) -> Executor:
        """A new, unopened executor for the engine under test."""
        raise NotImplementedError("subclass ExecutorContract and define make_executor")

    def program(
        self, *, stdout: str = "", stderr: str = "", exit_code: int = 0, seconds: float = 0.0
    ) -> str | tuple[str, ...]:
        """The command of a job that prints `stdout`, then `stderr`, runs `seconds`
        more, and exits with `exit_code`. POSIX shell by default."""
        steps = []
        if stdout:
            steps.append(f"printf '%s' {_quote(stdout)}")
        if stderr:
            steps.append(f"printf '%s' {_quote(stderr)} >&2")
        if seconds:
            steps.append(f"sleep {seconds:g}")
        steps.append(f"exit {exit_code}")
        return "; ".join(steps)

    # --- plumbing ------------------------------------------------------------------

    @pytest.fixture
    async def executor(self) -> AsyncIterator[Executor]:
        executor = await self.make_executor()
        await executor.open()
        self._made: list[str] = []
        try:
            yield executor
        finally:
            with anyio.CancelScope(shield=True):
                for job_id in self._made:
                    for info in await executor.find(job_id=job_id):
                        await executor.remove(info.container_id)
                await executor.close()

    def request(
        self, command: str | tuple[str, ...] | None, *, image: str | None = None, **spec: Any
    ) -> LaunchRequest:
        """A launch request for a new job running `command` (in `image`, by default
        the suite's), hardened by the default policy, as the manager would make it."""
        policy = self.policy
        job = Job(
            id=str(uuid.uuid4()),
            spec=policy.apply(JobSpec(image or self.image, command, **spec)),
            status=JobStatus.LAUNCHING,
            attempts=1,
            owner="contract-manager",
        )
        self._made.append(job.id)
        labels = {LABEL_MANAGER: "contract-manager", LABEL_STORE: "contract-store"}
        return policy.launch_request(job, labels=labels)

    @staticmethod
    async def read_all(executor: Executor, container_id: str) -> list[OutputLine]:
        """What a run reads: the follow stream, once more after the exit, the rest."""
        lines: list[OutputLine] = []
        reader = executor.logs(container_id)
        await reader.read(lines.append, follow=True)
        await executor.wait(container_id)
        await reader.read(lines.append, follow=False)
        lines += reader.finish()
        return lines

    @staticmethod
    def text(lines: list[OutputLine], stream: str) -> str:
        return "".join(item.written for item in lines if item.line.stream == stream)

    # --- the contract --------------------------------------------------------------

    async def test_ping(self, executor: Executor) -> None:
        await executor.ping()

    async def test_runs_a_command_and_reports_how_it_ended(self, executor: Executor) -> None:
        container = await executor.launch(self.request(self.program(exit_code=3)))
        status = await executor.wait(container)
        assert status.exit_code == 3 and not status.oom_killed

    async def test_output_keeps_the_streams_apart_and_in_order(self, executor: Executor) -> None:
        command = self.program(stdout="one\ntwo\n", stderr="oops\n")
        container = await executor.launch(self.request(command))
        lines = await self.read_all(executor, container)
        assert self.text(lines, "stdout") == "one\ntwo\n"
        assert self.text(lines, "stderr") == "oops\n"
        stamps = [item.line.timestamp for item in lines]
        assert all(stamp.tzinfo is not None for stamp in stamps)

    async def test_a_last_line_without_newline_is_kept(self, executor: Executor) -> None:
        container = await executor.launch(self.request(self.program(stdout="a\nb")))
        lines = await self.read_all(executor, container)
        assert [(item.line.text, item.newline) for item in lines] == [("a", True), ("b", False)]

    async def test_reading_again_doubles_nothing(self, executor: Executor) -> None:
        container = await executor.launch(self.request(self.program(stdout="x\ny\n")))
        lines = await self.read_all(executor, container)
        reader = executor.logs(container)
        again: list[OutputLine] = []
        await reader.read(again.append, follow=False)
        await reader.read(again.append, follow=False)  # a second read has nothing new
        assert [item.line.text for item in again] == [item.line.text for item in lines]

    async def test_kill_stops_a_running_container(self, executor: Executor) -> None:
        container = await executor.launch(self.request(self.program(seconds=60)))
        await executor.kill(container)
        with anyio.fail_after(self.kill_timeout):
            status = await executor.wait(container)
        assert status.exit_code != 0
        await executor.kill(container)  # killing a stopped container is no error

    async def test_containers_carry_their_labels(self, executor: Executor) -> None:
        request = self.request(self.program(seconds=60), labels={"team": "a"})
        container = await executor.launch(request)
        [info] = await executor.find(job_id=request.job_id)
        assert info.container_id == container
        assert (info.job_id, info.attempt) == (request.job_id, 1)
        assert (info.manager_id, info.store_id) == ("contract-manager", "contract-store")
        assert info.started and info.running
        assert request.labels[LABEL_JOB_ID] == request.job_id
        assert request.labels[LABEL_ATTEMPT] == "1"
        assert any(i.container_id == container for i in await executor.find())
        await executor.kill(container)
        await executor.wait(container)
        [stopped] = await executor.find(job_id=request.job_id)
        assert stopped.started and not stopped.running

    async def test_remove_leaves_nothing_and_may_repeat(self, executor: Executor) -> None:
        request = self.request(self.program(seconds=60))
        container = await executor.launch(request)
        await executor.remove(container)
        assert await executor.find(job_id=request.job_id) == []
        await executor.remove(container)  # gone already: no error

    async def test_a_failed_launch_leaves_nothing(self, executor: Executor) -> None:
        request = self.request(self.program(), image=self.missing_image, pull_policy="never")
        with pytest.raises(ImageNotFound) as refused:
            await executor.launch(request)
        assert self.missing_image in str(refused.value)
        assert await executor.find(job_id=request.job_id) == []

    async def test_stats_of_a_running_container(self, executor: Executor) -> None:
        container = await executor.launch(self.request(self.program(seconds=30)))
        with anyio.fail_after(20):
            async for sample in executor.stats(container):
                assert sample.memory_bytes > 0
                break
        await executor.kill(container)

