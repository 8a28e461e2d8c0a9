"""Run container jobs from a script: the smallest complete use of containerjobs.

Run it (a Docker daemon at DOCKER_HOST, else the local socket)::

    pip install containerjobs
    python examples/script.py

The jobs use $CONTAINERJOBS_IMAGE, by default the project's test image
``containerjobs-test/busybox:latest`` (``scripts/testbed up`` builds it); any image
with a ``sh`` works, such as ``busybox`` or ``alpine``.

It runs one job and prints its output live, then a few at once, then one that fails
and one that runs out of time. It exits 0 when each ended as expected.
"""

from __future__ import annotations

import os

import anyio

import containerjobs as cj

IMAGE = os.environ.get("CONTAINERJOBS_IMAGE", "containerjobs-test/busybox:latest")


async def main() -> int:
    # The manager owns everything it starts: leaving the block stops it. Records are
    # kept in memory here, and leaving cancels what still runs; with
    # storage=cj.SQLiteStorage("jobs.db") they would outlive the script.
    async with cj.JobManager() as manager:
        # 1. One job, its output printed line by line as the container writes it.
        job = await manager.submit(
            cj.JobSpec(
                IMAGE,
                'for i in 1 2 3; do echo "tick $i"; sleep 0.3; done; '
                'echo "almost done" >&2; echo \'{"ticks": 3}\'',
                name="ticks",
                memory_limit_mb=64,  # limits are always set; these are below the defaults
                cpu_limit=0.5,
                timeout_seconds=60,
            )
        )
        async for line in manager.logs(job.id):  # ends when the job ends
            print(f"[{line.stream}] {line.text}")
        ticks = await manager.wait(job.id)
        print(ticks)  # one line: Job(id=..., name='ticks', status=completed, ...)
        # The last line of output was JSON: parsed_output holds its value.
        print("parsed output:", ticks.parsed_output)

        # 2. Several jobs at once; the manager runs them side by side.
        batch = await manager.submit_many(
            [cj.JobSpec(IMAGE, f"echo {n} squared is $(({n} * {n}))") for n in (1, 2, 3)]
        )
        squares = [await manager.wait(queued.id) for queued in batch]
        for done in squares:
            print(done.stdout.strip())

        # 3. A failing job is not an exception: its record says how it ended.
        failed = await manager.run(cj.JobSpec(IMAGE, "echo 'no input' >&2; exit 3"))
        print(f"{failed.status}: exit code {failed.exit_code}, stderr {failed.stderr!r}")

        # 4. Past its timeout a job is killed, and keeps what it printed.
        late = await manager.run(cj.JobSpec(IMAGE, "echo started; sleep 30", timeout_seconds=1))
        print(f"{late.status}: {late.error}; printed {late.stdout!r}")

    expected = (
        ticks.status is cj.JobStatus.COMPLETED
        and ticks.parsed_output == {"ticks": 3}
        and all(done.status is cj.JobStatus.COMPLETED for done in squares)
        and (failed.status, failed.exit_code) == (cj.JobStatus.FAILED, 3)
        and late.status is cj.JobStatus.TIMEOUT
    )
    return 0 if expected else 1


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
