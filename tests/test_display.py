"""How jobs show themselves: short reprs, HTML tables for Jupyter, and never output in
full or an environment value (no Docker: records made by hand or by the fake cluster)."""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import containerjobs as cj
from containerjobs._display import JobList, Summary, last_lines
from containerjobs.testing import FakeCluster, FakeRun

SECRET = "s3cr3t-v4lue-never-shown"
MB = 1024 * 1024
STARTED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def big_job(**changes: object) -> cj.Job:
    """A finished job with 1 MB on each stream and an environment full of values."""
    spec = cj.JobSpec(
        image="containerjobs-test/busybox:latest",
        command="seq 1 200000",
        name="big",
        environment={"PLAIN": SECRET, "TOKEN": cj.Secret("api-token")},
    )
    fields: dict[str, object] = {
        "id": "3f2a9c1e-0000-4000-8000-000000000001",
        "spec": spec,
        "status": cj.JobStatus.COMPLETED,
        "name": "big",
        "host": "local",
        "exit_code": 0,
        "started_at": STARTED,
        "completed_at": STARTED + timedelta(seconds=1.5),
        "stdout": "x" * (MB - 1) + "\n",
        "stderr": "e\n" * (MB // 2),
        "max_memory_bytes": 12 * MB,
        "cpu_usage_percent": 40.0,
        "attempts": 1,
    }
    fields.update(changes)
    return cj.Job(**fields)  # type: ignore[arg-type]


def test_a_job_repr_is_one_short_line() -> None:
    job = big_job()
    assert repr(job) == (
        "Job(id='3f2a9c1e-0000-4000-8000-000000000001', name='big', status=completed, "
        "host='local', exit_code=0)"
    )
    assert str(job) == repr(job)
    pending = cj.Job(id="j1", spec=cj.JobSpec(image="a"))
    assert repr(pending) == "Job(id='j1', status=pending, host=None, exit_code=None)"


def test_reprs_and_tables_stay_small_whatever_the_output() -> None:
    job = big_job()
    jobs = JobList([job] * 3)
    assert len(repr(job)) < 200
    assert "\n" not in repr(job)
    assert len(repr(jobs)) < 3 * 200
    assert len(job._repr_html_()) < 4000
    assert len(jobs._repr_html_()) < 3 * 1000
    # A long line is cut; a long output shows its last lines after a count of the rest.
    shown = job._repr_html_()
    assert "x" * 200 not in shown
    assert "… 524283 earlier lines" in shown
    assert len(repr(job.spec)) < 1000


def test_a_long_command_is_cut_in_the_spec_repr() -> None:
    spec = cj.JobSpec(image="a", command="echo " + "y" * MB)
    assert len(repr(spec)) < 700
    assert "…" in repr(spec)
    assert repr(cj.JobSpec(image="a", command="echo hi")).startswith(
        "JobSpec(image='a', command='echo hi', name=None,"
    )


def test_a_job_table_shows_what_matters() -> None:
    job = big_job(stdout="one\ntwo\n", stderr="warn\n")
    shown = job._repr_html_()
    assert shown.startswith("<table") and shown.endswith("</table>")
    for expected in (
        "3f2a9c1e-0000-4000-8000-000000000001",
        "completed",
        "local",
        "containerjobs-test/busybox:latest",
        "seq 1 200000",
        "1.50 s",
        "12.0 MiB",
        "40.0 %",
        "one\ntwo",
        "warn",
        "PLAIN, TOKEN",  # the environment's keys, never its values
    ):
        assert expected in shown, expected


def test_a_list_of_jobs_is_one_table_and_still_a_list() -> None:
    jobs = JobList(
        big_job(id=f"job-{n}", name=f"n{n}", status=status, exit_code=code)
        for n, (status, code) in enumerate(
            [(cj.JobStatus.COMPLETED, 0), (cj.JobStatus.FAILED, 3), (cj.JobStatus.RUNNING, None)]
        )
    )
    assert isinstance(jobs, list) and len(jobs) == 3 and jobs[1].exit_code == 3
    assert jobs == list(jobs)
    assert repr(jobs) == repr(list(jobs))
    shown = jobs._repr_html_()
    assert shown.count("<table") == 1
    assert shown.count("<tr") == 1 + 3  # the header and a row per job
    assert "3 jobs" in shown
    for expected in ("job-0", "job-1", "job-2", "failed", "running", "<td>3</td>"):
        assert expected in shown, expected
    assert "x" * 20 not in shown  # no output in a listing


def test_a_long_list_shows_its_first_rows_and_counts_the_rest() -> None:
    jobs = JobList(big_job(id=f"job-{n}", stdout="", stderr="") for n in range(250))
    shown = jobs._repr_html_()
    assert "job-99<" in shown and "job-100<" not in shown
    assert "… 150 more" in shown
    assert "250 jobs" in shown
    assert len(shown) < 100 * 600


def test_a_summary_is_tables_and_still_a_dict() -> None:
    summary = Summary(
        jobs={"completed": 4, "failed": 1},
        hosts={"local": {"healthy": True, "running": 1, "max_concurrent_jobs": 5, "free": 4}},
        slots_used=1,
        slots_free=4,
    )
    assert isinstance(summary, dict) and summary["jobs"]["completed"] == 4
    assert repr(summary) == repr(dict(summary))
    shown = summary._repr_html_()
    for expected in ("completed", "<td>4</td>", "local", "max_concurrent_jobs", "yes",
                     "slots_free"):
        assert expected in shown, expected


HOSTILE = "<script>alert('x')</script> & \"quoted\""


def test_tables_escape_whatever_a_job_printed_or_was_called() -> None:
    job = big_job(
        name=HOSTILE,
        host=HOSTILE,
        stdout=f"fine\n{HOSTILE}\n",
        stderr=HOSTILE,
        error=HOSTILE,
        status=cj.JobStatus.FAILED,
        spec=cj.JobSpec(image="a", command=HOSTILE, environment={"<b>KEY": "v"}),
    )
    summary = Summary(jobs={"completed": 1}, hosts={HOSTILE: {"healthy": True}})
    for shown in (job._repr_html_(), JobList([job])._repr_html_(), summary._repr_html_()):
        assert "<script" not in shown and "<b>" not in shown
        assert "&lt;script&gt;" in shown
    assert html.escape(HOSTILE) in job._repr_html_()


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.tags.add(tag)


@given(output=st.text(), error=st.text(max_size=2000))
def test_any_output_is_escaped_and_bounded(output: str, error: str) -> None:
    job = big_job(stdout=output, stderr=output, error=error or None, name=output[:50] or None)
    for shown in (job._repr_html_(), JobList([job])._repr_html_()):
        # Whatever the job printed, the only tags are the table's own.
        parser = _Tags()
        parser.feed(shown)
        assert parser.tags <= {"table", "caption", "thead", "tbody", "tr", "th", "td", "pre",
                               "code", "span"}
        assert len(shown) < 6000
    assert len(repr(job)) < 250


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("", ""),
        ("a\n", "a"),
        ("a\nb", "a\nb"),
        ("1\n2\n3\n4\n5\n", "1\n2\n3\n4\n5"),
        ("1\n2\n3\n4\n5\n6\n", "… 1 earlier line\n2\n3\n4\n5\n6"),
        ("\n".join(map(str, range(10))), "… 5 earlier lines\n5\n6\n7\n8\n9"),
        # As a terminal shows it: no colours, a progress bar at its last state.
        ("\x1b[32mok\x1b[0m\n10%\r50%\r100%\n", "ok\n100%"),
    ],
)
def test_last_lines(text: str, shown: str) -> None:
    assert last_lines(text) == shown


class _Secrets:
    async def resolve(self, name: str) -> str:
        return f"{SECRET}-{name}"


async def test_no_environment_value_shows_anywhere_a_job_does() -> None:
    """Plain values, template values and secrets: in no repr and no table of a spec,
    a job, a list of jobs, a summary or a template."""
    cluster = FakeCluster(
        lambda job: FakeRun(stdout="done\n", print_environment=("TOKEN", "API"))
    )
    hosts = [cj.DockerHost("local", "unix:///fake.sock")]
    async with cj.JobManager(hosts=hosts, executor_factory=cluster, secrets=_Secrets()) as manager:
        template = cj.EnvironmentTemplate(
            "prod", f"DB_PASSWORD={SECRET}-tpl\nAPI=${{secret:api}}\n# OLD={SECRET}-old\n"
        )
        await manager.save_template(template)
        spec = cj.JobSpec(
            image="containerjobs-test/busybox:latest",
            command="true",
            environment={"PLAIN": f"{SECRET}-plain", "TOKEN": cj.Secret("api-token")},
            environment_template="prod",
        )
        submitted = await manager.submit(spec)
        # The stored spec holds the template's plain values, merged in at submit.
        assert submitted.spec.environment["DB_PASSWORD"] == f"{SECRET}-tpl"
        done = await manager.wait(submitted.id)
        assert done.stdout == "done\nTOKEN=***\nAPI=***\n"  # the secrets, masked
        jobs = await manager.list_jobs()
        summary = await manager.summary()
        # A listing leaves the output out (it reads no output): the same job otherwise.
        assert type(jobs) is JobList and jobs == [attrs.evolve(done, stdout=None, stderr=None)]
        assert type(summary) is Summary and summary["jobs"]["completed"] == 1
        shown = [
            repr(spec),
            repr(done),
            repr(done.spec),
            str(done),
            done._repr_html_(),
            repr(jobs),
            jobs._repr_html_(),
            repr(summary),
            summary._repr_html_(),
            repr(template),
            repr(await manager.get_template("prod")),
        ]
    for text in shown:
        assert SECRET not in text, text
    assert "DB_PASSWORD" in done._repr_html_()
