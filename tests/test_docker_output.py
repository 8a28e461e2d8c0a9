"""Output on the real daemon: what a job wrote is what its record holds, whatever
the line lengths, the missing newlines, the bytes and the load; past the cap, exact
halves with a marker."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import containerjobs as cj
from tests.conftest import LOCAL_SOCKET, Bed
from tests.test_output_capture import check_capped

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent


def go_decode(data: bytes) -> str:
    # The daemon keeps each log message as a JSON string, and Go replaces every byte
    # of an invalid UTF-8 sequence with U+FFFD, one per byte.
    return re.sub("[\udc80-\udcff]", "\ufffd", data.decode("utf-8", "surrogateescape"))


def engine_view(data: bytes) -> str:
    """The text the daemon keeps of one stream: lines cut into 16 KiB messages,
    each decoded on its own (a character cut in two there is two bad bytes)."""
    out = []
    for line in re.findall(rb"[^\n]*\n|[^\n]+$", data):
        out += [go_decode(line[at : at + 16384]) for at in range(0, len(line), 16384)]
    return "".join(out)


@pytest.fixture
def mount_dir(testbed: Bed) -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are private, and the job runs as nobody.
    with tempfile.TemporaryDirectory(prefix="cj-output-") as folder:
        os.chmod(folder, 0o755)
        yield Path(folder)


def write_script(folder: Path, pieces: list[tuple[str, bytes]]) -> str:
    """Files for the pieces, and the command that prints them in turn."""
    steps = []
    for i, (stream, data) in enumerate(pieces):
        path = folder / str(i)
        path.write_bytes(data)
        path.chmod(0o644)
        steps.append(f"cat /data/{i}" + (" >&2" if stream == "stderr" else ""))
    return "; ".join(steps) or "true"


def manager_for(folder: Path, cap: int) -> cj.JobManager:
    return cj.JobManager(
        hosts=[cj.DockerHost("local", LOCAL_SOCKET, max_concurrent_jobs=4)],
        policy=cj.SecurityPolicy(allowed_mount_sources=[str(folder)]),
        max_log_bytes=cap,
    )


def spec_for(image: str, folder: Path, command: str) -> cj.JobSpec:
    return cj.JobSpec(image, command, mounts=[cj.Mount(str(folder), "/data")])


_SIZES = [0, 1, 100, 16383, 16384, 16385, 100_000, 1_500_000, 3_000_000]
_FILL = [b"x", b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xff", b"\xe2\x82", b"ab\x80"]


# What a job prints, as runs of one filler of 0 to a few MB, each ended by a newline or
# not: (stream, size, filler, newline). Small to show when an example fails.
_runs = st.lists(
    st.tuples(
        st.sampled_from(["stdout", "stderr"]),
        st.sampled_from(_SIZES),
        st.sampled_from(_FILL),
        st.booleans(),
    ),
    min_size=1,
    max_size=4,
)


def printed_bytes(runs: list[tuple[str, int, bytes, bool]]) -> list[tuple[str, bytes]]:
    return [
        (stream, (fill * (size // len(fill) + 1))[:size] + (b"\n" if newline else b""))
        for stream, size, fill, newline in runs
    ]


@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=_runs, cap=st.sampled_from([10 * 1024 * 1024, 1_000_000, 100_000]))
async def test_stored_output_is_what_the_job_wrote(
    image: str,
    mount_dir: Path,
    no_leftovers: None,
    runs: list[tuple[str, int, bytes, bool]],
    cap: int,
) -> None:
    printed = printed_bytes(runs)
    command = write_script(mount_dir, printed)
    async with manager_for(mount_dir, cap) as manager:
        job = await manager.run(spec_for(image, mount_dir, command))
        stored = [line async for line in manager.logs(job.id, follow=False)]
    assert job.status is cj.JobStatus.COMPLETED, job.error
    for name in ("stdout", "stderr"):
        wrote = engine_view(b"".join(data for stream, data in printed if stream == name))
        kept = getattr(job, name)
        if len(wrote.encode()) <= cap:
            assert kept == wrote
        else:
            assert job.logs_truncated
            check_capped(wrote, kept, cap)
        lines = [line.text for line in stored if line.stream == name]
        assert sum(len(text.encode()) + 1 for text in lines) <= cap + 200
    if all(len(getattr(job, name).encode()) <= cap for name in ("stdout", "stderr")):
        assert not job.logs_truncated


async def test_unterminated_long_lines_and_quick_jobs_under_load(
    image: str, no_leftovers: None
) -> None:
    specs = [cj.JobSpec(image, "head -c 1000000 /dev/zero | tr '\\0' x") for _ in range(6)]
    specs += [cj.JobSpec(image, "head -c 300000 /dev/zero | tr '\\0' y") for _ in range(4)]
    specs += [cj.JobSpec(image, "echo hi") for _ in range(30)]
    specs += [cj.JobSpec(image, "seq 1 100000") for _ in range(2)]
    async with cj.JobManager(
        hosts=[cj.DockerHost("local", LOCAL_SOCKET, max_concurrent_jobs=8)]
    ) as manager:
        jobs = await manager.submit_many(specs)
        done = [await manager.wait(job.id, timeout=300) for job in jobs]
    expected = (
        ["x" * 1_000_000] * 6
        + ["y" * 300_000] * 4
        + ["hi\n"] * 30
        + ["".join(f"{i}\n" for i in range(1, 100001))] * 2
    )
    assert [job.stdout for job in done] == expected
    assert not any(job.logs_truncated for job in done)


async def test_the_cap_holds_for_one_long_line_and_for_many_short_ones(
    image: str, no_leftovers: None
) -> None:
    async with cj.JobManager(
        hosts=[cj.DockerHost("local", LOCAL_SOCKET)], max_log_bytes=100_000
    ) as manager:
        long = await manager.run(cj.JobSpec(image, "head -c 1000000 /dev/zero | tr '\\0' x"))
        many = await manager.run(cj.JobSpec(image, "seq 1 20000"))
        for job in (long, many):
            stored = [line.text async for line in manager.logs(job.id, follow=False)]
            assert job.logs_truncated
            assert sum(len(text) + 1 for text in stored) <= 100_200
            assert len(job.stdout) <= 100_200
    check_capped("x" * 1_000_000, long.stdout, 100_000)
    check_capped("".join(f"{i}\n" for i in range(1, 20001)), many.stdout, 100_000)


async def test_a_long_line_within_the_cap_is_kept_whole(
    manager: cj.JobManager, image: str
) -> None:
    job = await manager.run(cj.JobSpec(image, "head -c 5000000 /dev/zero | tr '\\0' x; echo"))
    assert job.stdout == "x" * 5_000_000 + "\n"
    assert not job.logs_truncated


_MEMORY_PROBE = """
import anyio, re, sys
import containerjobs as cj

async def main():
    async with cj.JobManager(hosts=[cj.DockerHost("local", sys.argv[1])]) as manager:
        command = "head -c 50000000 /dev/zero | tr '\\\\0' x"
        job = await manager.run(cj.JobSpec(sys.argv[2], command))
    print(job.status, len(job.stdout), job.logs_truncated)
    # VmHWM: this process's own peak. ru_maxrss would count the forking parent too,
    # as Linux carries it over exec.
    status = open("/proc/self/status").read()
    print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) // 1024)

anyio.run(main)
"""


async def test_an_endless_line_does_not_fill_memory(image: str, no_leftovers: None) -> None:
    done = await anyio.run_process(
        [sys.executable, "-c", _MEMORY_PROBE, LOCAL_SOCKET, image], cwd=REPO, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    summary, peak_mb = done.stdout.decode().strip().splitlines()[-2:]
    status, length, truncated = summary.split()
    assert (status, truncated) == ("completed", "True")
    assert 10 * 1024 * 1024 < int(length) < 10 * 1024 * 1024 + 200
    # The 50 MB line is held in at most the cap (10 MiB) and a piece of 1 MiB at a
    # time; before the fix the manager grew past 400 MB.
    assert int(peak_mb) < 200

