"""The containerjobs command, run as a user would, against the test bed's dockerd."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Bed

pytestmark = pytest.mark.docker


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "containerjobs.cli", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def test_run_streams_both_streams_and_exits_with_the_job_code(
    image: str, tmp_path: Path, no_leftovers: None
) -> None:
    db = tmp_path / "cli.db"
    done = cli("run", "--db", str(db), "-e", "WHO=world", "--memory", "64", image,
               "sh", "-c", 'echo "hello $WHO"; echo warn >&2; exit 7')
    assert done.returncode == 7
    assert done.stdout == "hello world\n"
    assert done.stderr.startswith("warn\n")
    assert "exited with code 7" in done.stderr
    listed = cli("jobs", "--db", str(db))
    assert listed.returncode == 0 and "failed" in listed.stdout
    job_id = listed.stdout.split()[0]
    shown = json.loads(cli("show", job_id, "--db", str(db)).stdout)
    assert shown["exit_code"] == 7 and shown["spec"]["memory_limit_mb"] == 64
    logs = cli("logs", job_id, "--db", str(db))
    assert (logs.stdout, logs.stderr) == ("hello world\n", "warn\n")


def test_run_shows_lines_while_the_job_runs(image: str, no_leftovers: None) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "containerjobs.cli", "run", image,
         "sh", "-c", "echo first; sleep 3; echo second"],
        stdout=subprocess.PIPE, text=True,
    ) as process:
        assert process.stdout is not None
        started = time.monotonic()
        assert process.stdout.readline() == "first\n"
        first_at = time.monotonic() - started
        assert process.stdout.readline() == "second\n"
        second_at = time.monotonic() - started
        assert process.wait(timeout=30) == 0
    assert second_at - first_at > 2  # the first line came while the job still ran


def test_timeout_and_refusal_exit_codes(image: str, no_leftovers: None) -> None:
    timed_out = cli("run", "--timeout", "1", image, "sleep", "30")
    assert timed_out.returncode == 124 and "timed out" in timed_out.stderr
    refused = cli("run", "--memory", "999999", image, "true")
    assert refused.returncode == 2 and "memory_limit_mb" in refused.stderr
    missing = cli("run", "--pull", "never", "containerjobs-test/absent:1", "true")
    assert missing.returncode == 125 and "containerjobs-test/absent:1" in missing.stderr


def test_sigint_cancels_the_job(image: str, testbed: Bed, no_leftovers: None) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "containerjobs.cli", "run", image, "sh", "-c", "echo up; sleep 60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == "up\n"
        process.send_signal(2)
        assert process.wait(timeout=30) == 130
    assert not testbed.labelled_containers()
