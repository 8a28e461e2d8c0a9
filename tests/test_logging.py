"""The library's logging: quiet by default, stdlib `logging` under ``containerjobs``,
structured fields kept for whoever renders them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

import containerjobs as cj
from containerjobs.testing import FakeCluster, FakeRun
from tests.conftest import REPO

_JOB = """
import anyio
import containerjobs as cj
from containerjobs.testing import FakeCluster, FakeRun

async def main():
    cluster = FakeCluster(lambda job: FakeRun(stdout="hi\\n", exit_code=3))
    hosts = [cj.DockerHost("a", "unix:///fake.sock")]
    async with cj.JobManager(hosts=hosts, executor_factory=cluster) as manager:
        await manager.run(cj.JobSpec("alpine", "x", environment={"TOKEN": "s3cret"}))

anyio.run(main)
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )


def test_an_application_that_configures_nothing_sees_nothing() -> None:
    done = _python(_JOB)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_plain_logging_shows_events_with_their_fields() -> None:
    done = _python("import logging; logging.basicConfig(level=logging.INFO)\n" + _JOB)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "INFO:containerjobs.manager:job.finished" in done.stderr
    assert "status='failed'" in done.stderr and "exit_code=3" in done.stderr
    assert "s3cret" not in done.stderr


def test_structlog_renders_the_fields() -> None:
    code = """
import logging, structlog
handler = logging.StreamHandler()
handler.setFormatter(structlog.stdlib.ProcessorFormatter(
    processor=structlog.processors.JSONRenderer(),
    foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.ExtraAdder()],
))
logging.getLogger("containerjobs").addHandler(handler)
logging.getLogger("containerjobs").setLevel(logging.INFO)
"""
    done = _python(code + _JOB)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines()]
    finished = next(e for e in events if e.get("event") == "job.finished")
    assert finished["status"] == "failed" and finished["exit_code"] == 3
    assert finished["manager"].startswith("cjm-") and finished["job_id"]


async def test_events_carry_their_fields_on_the_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="containerjobs")
    cluster = FakeCluster(lambda job: FakeRun(stdout="hi\n"))
    hosts = [cj.DockerHost("a", "unix:///fake.sock")]
    async with cj.JobManager(hosts=hosts, executor_factory=cluster) as manager:
        job = await manager.run(cj.JobSpec("alpine", "x", name="named"))
    records = {record.event: record for record in caplog.records}  # type: ignore[attr-defined]
    submitted = records["job.submitted"]
    assert submitted.name == "containerjobs.manager"
    assert submitted.containerjobs["job_id"] == job.id  # type: ignore[attr-defined]
    assert submitted.job_id == job.id  # type: ignore[attr-defined]
    assert submitted.job_name == "named"  # type: ignore[attr-defined]
    assert records["job.finished"].levelno == logging.INFO
