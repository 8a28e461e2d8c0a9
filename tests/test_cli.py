"""The containerjobs command, driven as a user drives it: `python3 -m containerjobs ...`
in a subprocess. The tests marked docker run jobs on the test bed's dockerd; the others
need no daemon (a store, a socket that does not exist, a shell)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import containerjobs as cj
from tests.conftest import Bed

IMAGE = "containerjobs-test/busybox:latest"
NO_DAEMON = "unix:///nonexistent/docker.sock"


def cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "containerjobs", *args],
        capture_output=True, text=True, timeout=timeout, env=_env(env), cwd=cwd,
    )


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "containerjobs", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(env),
    )


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CONTAINERJOBS_DB"}
    return {**env, **(extra or {})}


def one_error(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command printed on stderr."""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("containerjobs: ") and "Traceback" not in done.stderr
    return lines[0]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A store with two queued jobs (nothing runs them), and the file's path."""
    path = tmp_path / "jobs.db"
    for name in ("first", "second"):
        done = cli("submit", "--db", str(path), "--name", name, IMAGE, "echo", name)
        assert done.returncode == 0, done.stderr
    return path


def ids(db: Path) -> list[str]:
    return cli("jobs", "-q", "--db", str(db)).stdout.split()


# --- no daemon needed ------------------------------------------------------------------


def test_version_and_help() -> None:
    assert cli("--version").stdout == f"containerjobs {cj.__version__}\n"
    helped = cli("cancel", "--help")
    assert helped.returncode == 0
    # As docs/cli.md says: a running job is cancelled too, by its manager.
    assert "a running one by its manager" in " ".join(helped.stdout.split())


def test_read_commands_never_create_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    for args in (
        ["jobs"], ["show", "abc"], ["logs", "abc"], ["cancel", "abc"], ["summary"],
        ["prune", "--older-than", "7d"], ["templates"],
    ):
        done = cli(*args, "--db", str(missing))
        assert done.returncode == 2, args
        assert f"no job store at {str(missing)!r}: the file does not exist" in one_error(done)
        assert not missing.exists()
    # The same path as a URL, and from the environment.
    done = cli("jobs", env={"CONTAINERJOBS_DB": f"sqlite://{missing}"})
    assert done.returncode == 2 and "no job store at" in one_error(done)
    assert not missing.exists()
    nothing = cli("jobs")
    assert nothing.returncode == 2
    assert one_error(nothing) == (
        "containerjobs: give the job store: --db URL, or set CONTAINERJOBS_DB"
    )


def test_global_flags_before_or_after_the_subcommand(db: Path) -> None:
    for args in (
        ["-v", "--db", str(db), "jobs"],
        ["jobs", "-v", "--db", str(db)],
        ["--db", str(db), "jobs", "-v"],
        ["-v", "jobs", "--db", str(db)],
    ):
        done = cli(*args)
        assert done.returncode == 0, (args, done.stderr)
        assert done.stdout.startswith("JOB ID"), args


def test_the_store_from_the_environment_and_as_urls(db: Path) -> None:
    for url in (str(db), f"sqlite://{db}"):
        done = cli("jobs", "-q", env={"CONTAINERJOBS_DB": url})
        assert done.returncode == 0 and len(done.stdout.split()) == 2
    # --db wins over the variable.
    done = cli("jobs", "-q", "--db", str(db), env={"CONTAINERJOBS_DB": "/nowhere/x.db"})
    assert done.returncode == 0 and len(done.stdout.split()) == 2


def test_submit_prints_the_id_and_jobs_lists_it(db: Path) -> None:
    done = cli("submit", "--db", str(db), "--name", "third", "--priority", "5", IMAGE, "true")
    assert done.returncode == 0 and done.stderr == ""
    job_id = done.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", job_id)
    table = cli("jobs", "--db", str(db)).stdout.splitlines()
    assert table[0].split() == ["JOB", "ID", "NAME", "IMAGE", "STATUS", "HOST", "CREATED",
                                "EXIT", "ERROR"]
    assert table[1].split()[:4] == [job_id[:12], "third", IMAGE, "pending"]  # newest first
    assert job_id not in "\n".join(table)  # ids shortened in a table
    listed = json.loads(cli("jobs", "-o", "json", "--db", str(db)).stdout)
    assert [job["name"] for job in listed] == ["third", "second", "first"]
    assert listed[0]["id"] == job_id and listed[0]["command"] == ["true"]
    assert listed[0]["status"] == "pending" and listed[0]["exit_code"] is None
    assert ids(db)[0] == job_id
    assert cli("jobs", "-q", "--status", "completed", "--db", str(db)).stdout == ""
    assert cli("jobs", "-q", "--limit", "1", "--db", str(db)).stdout == job_id + "\n"


def test_job_ids_by_unique_prefix(db: Path) -> None:
    for _ in range(16):  # 18 ids in all: two begin with the same hex digit
        cli("submit", "--db", str(db), IMAGE, "true")
    all_ids = ids(db)
    job_id = all_ids[0]
    shown = cli("show", job_id[:8], "--db", str(db))
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["id"] == job_id
    shared = next(a[0] for a in all_ids if sum(b[0] == a[0] for b in all_ids) > 1)
    ambiguous = cli("show", shared, "--db", str(db))
    assert ambiguous.returncode == 2
    assert f"{shared!r} is the beginning of" in one_error(ambiguous)
    unknown = cli("logs", "--db", str(db), "nope")
    assert unknown.returncode == 2
    assert one_error(unknown) == "containerjobs: no job with id 'nope'"


def test_cancel_summary_and_prune(db: Path) -> None:
    first, second = ids(db)
    done = cli("cancel", first[:10], second, "--db", str(db))
    assert done.returncode == 0
    assert done.stdout.split() == [first, "cancelled", second, "cancelled"]
    again = cli("cancel", first, "nope", "--db", str(db))  # each error once, the rest done
    assert again.returncode == 2 and again.stdout.split() == [first, "cancelled"]
    assert one_error(again) == "containerjobs: no job with id 'nope'"
    summary = json.loads(cli("summary", "-o", "json", "--db", str(db)).stdout)
    assert summary["jobs"]["cancelled"] == 2 and summary["jobs"]["pending"] == 0
    assert summary["workers"] == []
    table = cli("summary", "--db", str(db)).stdout
    assert table.splitlines()[0].split() == ["STATUS", "JOBS"]
    assert "workers: none with a live lease" in table
    assert cli("prune", "--older-than", "1h", "--db", str(db)).stdout == "deleted 0 finished jobs\n"
    assert cli("prune", "--older-than", "0", "--db", str(db)).stdout == "deleted 2 finished jobs\n"
    refused = cli("prune", "--older-than", "soon", "--db", str(db))
    assert refused.returncode == 2 and "expected a duration" in refused.stderr


def test_templates_save_list_and_delete(db: Path, tmp_path: Path) -> None:
    file = tmp_path / "base.env"
    file.write_text("# shared settings\nREGION=eu\nTOKEN=s3cr3t\n")
    saved = cli("templates", "save", "base", str(file), "--description", "defaults",
                "--db", str(db))
    assert saved.returncode == 0, saved.stderr
    listed = cli("templates", "--db", str(db)).stdout
    assert listed.splitlines()[0].split() == ["NAME", "VARIABLES", "DESCRIPTION"]
    assert "REGION, TOKEN" in listed and "defaults" in listed
    assert "s3cr3t" not in listed and "eu" not in listed.split()  # names, never values
    as_json = json.loads(cli("templates", "-o", "json", "--db", str(db)).stdout)
    assert as_json == [{"name": "base", "description": "defaults",
                        "variables": ["REGION", "TOKEN"]}]
    assert cli("templates", "rm", "base", "--db", str(db)).returncode == 0
    gone = cli("templates", "rm", "base", "--db", str(db))
    assert gone.returncode == 2 and "base" in one_error(gone)


def test_logs_of_a_job_nobody_runs_says_so_and_ctrl_c_ends_it(db: Path) -> None:
    job_id = ids(db)[0]
    with start("logs", job_id[:12], "--db", str(db)) as process:
        assert process.stderr is not None
        said = process.stderr.readline()
        assert f"job {job_id} is pending and no worker holds a lease" in said
        assert "nothing runs it" in said
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        rest = process.stderr.read()
    assert "Traceback" not in rest


def test_ctrl_c_ends_any_command_with_130(db: Path) -> None:
    with start("jobs", "--watch", "--db", str(db)) as watching:
        assert watching.stdout is not None and watching.stderr is not None
        assert watching.stdout.readline().startswith("JOB ID")
        watching.stdout.readline()
        watching.stdout.readline()
        cancelled = ids(db)[1]
        assert cli("cancel", cancelled, "--db", str(db)).returncode == 0
        # Each change, as a row of its own.
        changed = watching.stdout.readline().split()
        assert changed[0] == cancelled[:12] and "cancelled" in changed
        watching.send_signal(signal.SIGINT)
        assert watching.wait(timeout=30) == 130
        assert "Traceback" not in watching.stderr.read()


def test_submit_wait_with_no_worker_fails_fast(db: Path) -> None:
    started = time.monotonic()
    done = cli("submit", "--wait", "--db", str(db), IMAGE, "echo", "hi", timeout=90)
    assert time.monotonic() - started < 60
    assert done.returncode == 125
    submitted, why = done.stderr.splitlines()
    job_id = submitted.split()[-1]
    assert submitted == f"containerjobs: submitted job {job_id}"
    assert f"nothing ran job {job_id}: no worker holds a lease on SQLiteStorage" in why
    assert f"containerjobs cancel {job_id}" in why
    assert json.loads(cli("show", job_id, "--db", str(db)).stdout)["status"] == "pending"


def test_hosts_says_which_answer() -> None:
    done = cli("hosts", "--host", f"gone={NO_DAEMON}", "-o", "json")
    assert done.returncode == 1
    [host] = json.loads(done.stdout)
    assert (host["name"], host["healthy"]) == ("gone", False)
    assert "/nonexistent/docker.sock" in host["error"]
    assert done.stderr == ""  # the table says it; the library's warning is not repeated
    table = cli("hosts", "--host", f"gone={NO_DAEMON}")
    assert table.stdout.splitlines()[0].split() == ["NAME", "URL", "HEALTHY", "RESPONSE",
                                                    "ERROR"]


def test_run_on_a_daemon_that_is_not_there_exits_125_once(tmp_path: Path) -> None:
    done = cli("run", "--host", NO_DAEMON, IMAGE, "true")
    assert done.returncode == 125
    assert "/nonexistent/docker.sock" in one_error(done)


@pytest.fixture
def completion(tmp_path: Path) -> Path:
    script = tmp_path / "containerjobs.bash"
    done = cli("completion", "bash")
    assert done.returncode == 0
    script.write_text(done.stdout)
    return script


def complete(script: Path, *words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash offers for the last of `words`, with the script loaded."""
    line = " ".join(f"'{word}'" for word in words)
    program = (
        f"source '{script}'\n"
        "complete -p containerjobs >/dev/null || exit 3\n"
        f"COMP_WORDS=(containerjobs {line}); COMP_CWORD={len(words)}\n"
        "_containerjobs; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True,
                          timeout=60, env=_env(env))
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_bash_completion_loads_and_completes(completion: Path, db: Path) -> None:
    assert complete(completion, "") == [
        "run", "submit", "worker", "jobs", "show", "logs", "cancel", "hosts", "summary",
        "prune", "templates", "completion",
    ]
    assert complete(completion, "s") == ["submit", "show", "summary"]
    assert complete(completion, "-v", "jo") == ["jobs"]
    assert complete(completion, "jobs", "--st") == ["--status"]
    assert complete(completion, "jobs", "--status", "c") == ["completed", "cancelled"]
    assert complete(completion, "run", "--pull", "n") == ["never"]
    assert complete(completion, "templates", "") == ["ls", "save", "rm"]
    assert complete(completion, "completion", "") == ["bash", "zsh"]
    # Job ids, from the store the line names.
    assert sorted(complete(completion, "--db", str(db), "show", "")) == sorted(ids(db))


def test_zsh_completion_names_every_command(tmp_path: Path) -> None:
    done = cli("completion", "zsh")
    assert done.returncode == 0 and done.stdout.startswith("#compdef containerjobs\n")
    for name in ("run", "submit", "worker", "jobs", "show", "logs", "cancel", "hosts",
                 "summary", "prune", "templates", "completion"):
        assert f"'{name}:" in done.stdout
    assert "_containerjobs_templates_save()" in done.stdout
    if shutil.which("zsh"):  # the syntax, where zsh is there to read it
        script = tmp_path / "_containerjobs"
        script.write_text(done.stdout)
        assert subprocess.run(["zsh", "-n", str(script)], timeout=60).returncode == 0


# --- on the test bed's dockerd -----------------------------------------------------------


@pytest.mark.docker
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
    [job_id] = ids(db)
    shown = json.loads(cli("show", job_id, "--db", str(db)).stdout)
    assert shown["exit_code"] == 7 and shown["spec"]["memory_limit_mb"] == 64
    logs = cli("logs", job_id, "--db", str(db))
    assert (logs.stdout, logs.stderr) == ("hello world\n", "warn\n")


@pytest.mark.docker
def test_run_shows_lines_while_the_job_runs(image: str, no_leftovers: None) -> None:
    with start("run", image, "sh", "-c", "echo first; sleep 3; echo second") as process:
        assert process.stdout is not None
        started = time.monotonic()
        assert process.stdout.readline() == "first\n"
        first_at = time.monotonic() - started
        assert process.stdout.readline() == "second\n"
        second_at = time.monotonic() - started
        assert process.wait(timeout=30) == 0
    assert second_at - first_at > 2  # the first line came while the job still ran


@pytest.mark.docker
def test_timeout_and_refusal_exit_codes(image: str, no_leftovers: None) -> None:
    timed_out = cli("run", "--timeout", "1", image, "sleep", "30")
    assert timed_out.returncode == 124 and "timed out" in timed_out.stderr
    refused = cli("run", "--memory", "999999", image, "true")
    assert refused.returncode == 2 and "memory_limit_mb" in one_error(refused)
    missing = cli("run", "--pull", "never", "containerjobs-test/absent:1", "true")
    assert missing.returncode == 125 and "containerjobs-test/absent:1" in one_error(missing)


@pytest.mark.docker
def test_a_command_that_cannot_start_exits_as_docker_run_does(
    image: str, no_leftovers: None
) -> None:
    # Said once, in plain words: no runc text, no second copy from the library's log.
    missing = cli("run", image, "no-such-command")
    assert missing.returncode == 127
    assert one_error(missing).endswith(
        f"could not start: command 'no-such-command' not found in image {image!r}"
    )
    not_executable = cli("run", image, "/etc/passwd")
    assert not_executable.returncode == 126
    line = one_error(not_executable)
    assert "command '/etc/passwd'" in line and "cannot be executed" in line
    assert "runc" not in line


@pytest.mark.docker
def test_sigint_cancels_the_job(image: str, testbed: Bed, no_leftovers: None) -> None:
    with start("run", image, "sh", "-c", "echo up; sleep 60") as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline() == "up\n"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        assert "Traceback" not in process.stderr.read()
    assert not testbed.labelled_containers()


@pytest.mark.docker
def test_run_with_a_store_runs_its_own_job_only(
    image: str, db: Path, no_leftovers: None
) -> None:
    queued = ids(db)
    done = cli("run", "--db", str(db), "--name", "mine", image, "echo", "mine")
    assert (done.returncode, done.stdout) == (0, "mine\n")
    listed = {job["name"]: job for job in json.loads(cli("jobs", "-o", "json", "--db",
                                                         str(db)).stdout)}
    assert listed["mine"]["status"] == "completed"
    # The queued jobs were left for the workers: not run, not adopted, not changed.
    assert {listed[name]["id"] for name in ("first", "second")} == set(queued)
    assert listed["first"]["status"] == listed["second"]["status"] == "pending"
    with sqlite3.connect(db) as connection:  # and no lease left behind
        assert connection.execute("SELECT count(*) FROM managers").fetchone() == (0,)


@pytest.fixture
def worker(db: Path, testbed: Bed) -> Iterator[subprocess.Popen[str]]:
    with start("worker", "--db", str(db), "--max-jobs", "2") as process:
        assert process.stderr is not None
        assert "host local healthy" in process.stderr.readline()
        yield process
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


@pytest.mark.docker
def test_submit_wait_follows_a_job_a_worker_runs(
    db: Path, worker: subprocess.Popen[str], no_leftovers: None
) -> None:
    done = cli("submit", "--wait", "--db", str(db), IMAGE, "sh", "-c",
               "echo out; echo err >&2; exit 3")
    assert done.returncode == 3 and done.stdout == "out\n"
    lines = done.stderr.splitlines()
    assert lines[0].startswith("containerjobs: submitted job ") and lines[1] == "err"
    assert lines[2].endswith("failed: exited with code 3")
    # The worker ran the queued ones too; summary sees it.
    summary = json.loads(cli("summary", "-o", "json", "--db", str(db)).stdout)
    assert len(summary["workers"]) == 1
