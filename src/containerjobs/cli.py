"""The ``containerjobs`` command.

``containerjobs run IMAGE [COMMAND...]`` runs one job and streams its output live,
stdout to stdout and stderr to stderr, then exits with the job's exit code (124 on
timeout, 130 when cancelled or interrupted, 125 when the job could not start, 126 and
127 for a command that cannot be run or is not found, as ``timeout`` and ``docker
run`` do). ``submit`` queues a job for workers, ``worker`` runs a store's queue, and
the other commands read or change a store (``--db`` or ``CONTAINERJOBS_DB``). Every
error is one line on stderr; Ctrl+C ends any command with 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel

from . import __version__
from ._display import shorten
from ._errors import (
    ContainerJobsError,
    InvalidJobSpec,
    JobNotFound,
    NoWorkerAvailable,
    PolicyViolation,
    TemplateNotFound,
)
from ._hosts import DockerHost, SwarmHost, TLSConfig
from ._manager import JobManager
from ._models import PULL_POLICIES, EnvironmentTemplate, Job, JobSpec, JobStatus, LogLine
from ._policy import SecurityPolicy
from ._secrets import EnvSecrets, FileSecrets, Secret, SecretSource
from .executors import UNENFORCEABLE
from .storage import InMemoryStorage, SQLiteStorage, Storage
from .storage._codec import converter
from .storage._url import storage_from_url

STORE_VARIABLE = "CONTAINERJOBS_DB"  # the store, when --db is not given
EXIT_FAILURE = 1  # the command failed: a store or host that does not answer, ...
EXIT_USAGE = 2  # the input was refused: a bad option, spec, id, or a missing store
EXIT_TIMEOUT = 124
EXIT_NOT_STARTED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_COMMAND_NOT_FOUND = 127
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl+C, SIGTERM, or a cancelled job
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer killed by it
SHORT_ID = 12  # characters of a job id in a table, as docker shortens container ids
_WATCH_INTERVAL = 1.0  # seconds between reads of the store for jobs --watch
_REASON_INTERVAL = 2.0  # seconds between looks at why a followed job still waits
_LEFT_CANCEL_WAIT = 3.0  # seconds cancel waits on a job whose manager is gone

# What the engine says when a container's command cannot start: as docker run, 127
# for a command that is not there, 126 for one that cannot be executed.
_NOT_FOUND = re.compile(
    r'exec: "(?P<command>[^"]*)": (?:executable file not found in \$PATH'
    r"|stat [^:]*: no such file or directory)"
)
_NOT_EXECUTABLE = re.compile(r'exec: "(?P<command>[^"]*)": permission denied')


class CommandError(Exception):
    """A failure the command reports in one line, and the exit code it ends with."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# --- the parser ------------------------------------------------------------------------


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    # Never echo the argument: whoever forgot the key may have typed a secret.
    if not sep:
        raise argparse.ArgumentTypeError("expected KEY=VALUE; the argument has no '='")
    if not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE; the argument has no KEY before '='")
    return key, value


def _host(text: str) -> tuple[str | None, str]:
    name, sep, url = text.partition("=")
    if sep and "://" not in name:
        return name, url
    return None, text


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``24h``, ``7d`` or ``2w``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 15m, 24h, 7d or 2w, not {text!r}"
        )
    return timedelta(seconds=float(match[1]) * _UNITS[match[2] or "s"])


def _parser() -> argparse.ArgumentParser:
    # -v and --db are accepted before the subcommand and after it: each subcommand
    # takes them too, with no default of its own, so one given before is not reset.
    def shared(store: bool, default: Any) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(add_help=False)
        p.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=default if default is argparse.SUPPRESS else False,
            help="log the library's lifecycle events to stderr",
        )
        if store:
            p.add_argument(
                "--db",
                metavar="URL",
                default=default if default is argparse.SUPPRESS else None,
                help="the job store: a SQLite file (a path, or sqlite:///PATH), "
                "postgresql://USER:PASSWORD@HOST:PORT/DB, or memory:// "
                f"(default: ${STORE_VARIABLE})",
            )
        return p

    common = shared(store=False, default=argparse.SUPPRESS)
    with_store = shared(store=True, default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="containerjobs",
        description="Run jobs as Docker containers, tracked.",
        parents=[shared(store=True, default=None)],
    )
    parser.add_argument("--version", action="version", version=f"containerjobs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, store: bool = True) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=text, description=text, parents=[with_store if store else common]
        )

    def output_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-o",
            "--output",
            choices=["table", "json"],
            default="table",
            help="table (for people; ids shortened) or json (for programs; full ids)",
        )

    def secrets_options(p: argparse.ArgumentParser) -> None:
        where = p.add_mutually_exclusive_group()
        where.add_argument(
            "--secrets-dir",
            metavar="DIR",
            help="resolve secrets from files in DIR, one per secret (as /run/secrets)",
        )
        where.add_argument(
            "--secrets-env",
            metavar="PREFIX",
            help="resolve secret NAME from this process's variable PREFIXNAME "
            "(default for run: the variable NAME itself)",
        )

    def unenforced_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--allow-unenforced",
            action="append",
            default=[],
            choices=sorted(UNENFORCEABLE),
            metavar="SETTING",
            help="let jobs run where an engine cannot enforce this hardening setting "
            f"(repeatable; one of: {', '.join(sorted(UNENFORCEABLE))})",
        )

    def hosts_options(p: argparse.ArgumentParser, default: str) -> None:
        p.add_argument(
            "--host",
            dest="hosts",
            action="append",
            default=[],
            type=_host,
            metavar="[NAME=]URL",
            help=f"a Docker daemon (repeatable; default: {default})",
        )
        p.add_argument(
            "--swarm",
            dest="swarms",
            action="append",
            default=[],
            type=_host,
            metavar="[NAME=]URL",
            help="a Swarm manager, the whole cluster as one host (repeatable)",
        )
        p.add_argument(
            "--tls-dir", metavar="DIR", help="ca.pem, cert.pem and key.pem for the tcp:// hosts"
        )

    def spec_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("image", help="the image to run")
        p.add_argument(
            "args",
            nargs=argparse.REMAINDER,
            metavar="COMMAND...",
            help="the command and its arguments, run without a shell "
            "(use: sh -c '...' for shell features)",
        )
        p.add_argument("--memory", type=int, metavar="MB", help="memory limit in MB")
        p.add_argument("--cpus", type=float, help="CPU limit in cores")
        p.add_argument("--timeout", type=float, metavar="SECONDS", help="kill after this long")
        p.add_argument(
            "-e",
            "--env",
            type=_key_value,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="environment variable (repeatable)",
        )
        p.add_argument(
            "--secret",
            type=_key_value,
            action="append",
            default=[],
            metavar="KEY=NAME",
            help="environment variable KEY from secret NAME: stored by name, masked as *** "
            "in the output (repeatable)",
        )
        p.add_argument("--env-template", metavar="NAME", help="a stored environment template")
        p.add_argument("--name", help="the job's name")
        p.add_argument("--user", help="user[:group] inside the container")
        p.add_argument("-w", "--workdir", help="working directory inside the container")
        p.add_argument(
            "--pull", choices=PULL_POLICIES, default="if-not-present", help="when to pull the image"
        )
        p.add_argument(
            "--placement",
            action="append",
            default=[],
            metavar="CONSTRAINT",
            help="a Swarm constraint such as node.labels.zone==a (repeatable)",
        )

    run = command("run", "run a job here and stream its output")
    spec_options(run)
    run.add_argument(
        "--host", metavar="URL", help="Docker daemon (default: DOCKER_HOST, else the local socket)"
    )
    run.add_argument(
        "--swarm",
        action="store_true",
        help="run the job as a one-shot service on the daemon's Swarm (it must be a manager)",
    )
    secrets_options(run)
    unenforced_option(run)

    submit = command("submit", "queue a job for the workers of a store and print its id")
    spec_options(submit)
    submit.add_argument(
        "--on-host", metavar="NAME", help="run it only on the workers' host of this name"
    )
    submit.add_argument(
        "--priority", type=int, default=0, metavar="N", help="higher runs first (default: 0)"
    )
    submit.add_argument(
        "--retries", type=int, default=0, metavar="N", help="attempts after a failed one"
    )
    submit.add_argument(
        "--wait", action="store_true", help="follow its output and exit with its exit code"
    )

    worker = command("worker", "run the jobs of a shared store until SIGTERM or SIGINT")
    hosts_options(worker, "DOCKER_HOST, else the local socket")
    worker.add_argument(
        "--max-jobs", type=int, default=10, metavar="N", help="jobs at once per host (default: 10)"
    )
    worker.add_argument(
        "--on-exit",
        choices=["detach", "cancel", "wait"],
        default="detach",
        help="what stopping does to running jobs (default: detach, so the next worker adopts them)",
    )
    worker.add_argument(
        "--lease-ttl",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="a worker silent this long is presumed dead (default: 15)",
    )
    unenforced_option(worker)
    worker.add_argument(
        "--allow-mount",
        action="append",
        default=[],
        metavar="DIR",
        help="a host folder jobs may mount, with what is in it (repeatable)",
    )
    secrets_options(worker)

    jobs = command("jobs", "list jobs, newest first")
    jobs.add_argument("--status", choices=[s.value for s in JobStatus], help="only these")
    jobs.add_argument("--limit", type=int, default=20, metavar="N", help="at most N (default: 20)")
    output_option(jobs)
    jobs.add_argument("-q", "--quiet", action="store_true", help="print full job ids only")
    jobs.add_argument(
        "-w", "--watch", action="store_true", help="then print each change, until Ctrl+C"
    )

    show = command("show", "print a job's whole record as JSON")
    show.add_argument("job_id", metavar="JOB", help="a job id, or its unique beginning")
    logs = command("logs", "print a job's output, following it while it runs")
    logs.add_argument("job_id", metavar="JOB", help="a job id, or its unique beginning")
    logs.add_argument("--no-follow", action="store_true", help="print what is stored and stop")
    cancel = command(
        "cancel",
        "cancel jobs: a pending one at once, a running one by its manager (waits for it)",
    )
    cancel.add_argument("job_ids", nargs="+", metavar="JOB", help="job ids, or unique beginnings")

    hosts = command("hosts", "check the health of Docker hosts", store=False)
    hosts_options(hosts, "DOCKER_HOST, else the local socket")
    output_option(hosts)

    summary = command("summary", "jobs per status, and the workers of a store")
    output_option(summary)

    prune = command("prune", "delete finished jobs (and their output) completed long ago")
    prune.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="AGE",
        help="completed longer ago than this: 90s, 15m, 24h, 7d, 2w (0 for all)",
    )

    templates = command("templates", "list, save or delete environment templates")
    output_option(templates)
    actions = templates.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("ls", help="list templates (the default)", parents=[with_store])
    save = actions.add_parser(
        "save", help="save a template from a file of KEY=VALUE lines", parents=[with_store]
    )
    save.add_argument("name", help="the template's name")
    save.add_argument("file", help="a file of KEY=VALUE lines, # comments; - for stdin")
    save.add_argument("--description", default="", help="what it is for")
    remove = actions.add_parser("rm", help="delete a template", parents=[with_store])
    remove.add_argument("name", help="the template's name")

    completion = command("completion", "print a shell completion script", store=False)
    completion.add_argument("shell", choices=["bash", "zsh"])
    return parser


# --- output ----------------------------------------------------------------------------


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to stderr, and never lets a closed pipe break the job it reports on."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass  # a closed or broken stderr: nothing to report to, and nothing to stop


class _ReportedHere(logging.Filter):
    """Drops the library's word on what the command itself reports, once, better: a
    spec the policy refuses, a job that could not start, a host that does not answer
    (a worker, which runs on while jobs and hosts come and go, keeps them)."""

    events = frozenset({"security.refused", "job.launch_failed", "host.unhealthy"})

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "event", None) not in self.events


def _configure_logging(verbose: bool, command: str) -> None:
    # The job's own output owns stdout; the library speaks on stderr, and only when
    # something is wrong unless asked.
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("containerjobs: %(levelname)s %(message)s"))
    if not verbose and command != "worker":
        handler.addFilter(_ReportedHere())
    logger = logging.getLogger("containerjobs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def _say(message: str) -> None:
    print(f"containerjobs: {message}", file=sys.stderr, flush=True)


def _write(line: LogLine) -> bool:
    out = sys.stdout if line.stream == "stdout" else sys.stderr
    try:
        out.write(line.text + "\n")
        out.flush()
    except BrokenPipeError:
        # Point the stream at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return False
    return True


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = list(rows)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "   ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [headers, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _age(when: datetime | None, now: datetime) -> str:
    if when is None:
        return ""
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_JOB_COLUMNS = ("JOB ID", "NAME", "IMAGE", "STATUS", "HOST", "CREATED", "EXIT", "ERROR")


def _job_row(job: Job, now: datetime) -> tuple[str, ...]:
    return (
        job.id[:SHORT_ID],
        shorten(job.name or "", 24),
        shorten(job.spec.image, 40),
        str(job.status),
        job.host or "",
        _age(job.created_at, now),
        "" if job.exit_code is None else str(job.exit_code),
        shorten(job.error or "", 80),
    )


def _job_json(job: Job) -> dict[str, Any]:
    def at(when: datetime | None) -> str | None:
        return None if when is None else when.isoformat()

    return {
        "id": job.id,
        "name": job.name,
        "image": job.spec.image,
        "command": list(job.spec.command)
        if isinstance(job.spec.command, tuple)
        else job.spec.command,
        "status": str(job.status),
        "host": job.host,
        "created_at": at(job.created_at),
        "started_at": at(job.started_at),
        "completed_at": at(job.completed_at),
        "exit_code": job.exit_code,
        "attempts": job.attempts,
        "error": job.error,
    }


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


# --- stores, hosts, ids ------------------------------------------------------------------


def _storage(args: argparse.Namespace, *, create: bool, default_memory: bool = False) -> Storage:
    """The store `--db` (or CONTAINERJOBS_DB) names. Only the commands that run or
    queue jobs (`create`) may make a new SQLite file: for any other, a path that does
    not exist is a mistake, said as one, rather than an empty store made there."""
    url = args.db or os.environ.get(STORE_VARIABLE)
    if not url:
        if default_memory:
            return InMemoryStorage()
        raise CommandError(f"give the job store: --db URL, or set {STORE_VARIABLE}")
    storage = storage_from_url(url)
    if isinstance(storage, SQLiteStorage) and not create and not os.path.exists(storage.path):
        raise CommandError(
            f"no job store at {storage.path!r}: the file does not exist (check --db or "
            f"{STORE_VARIABLE}; `containerjobs worker`, `submit` and `run --db` create one)"
        )
    return storage


def _hosts(args: argparse.Namespace, max_jobs: int = 10) -> list[DockerHost | SwarmHost]:
    if not args.hosts and not args.swarms:
        return [DockerHost.from_env(max_concurrent_jobs=max_jobs)]
    tls = TLSConfig.from_cert_path(args.tls_dir) if args.tls_dir else None
    hosts: list[DockerHost | SwarmHost] = [
        DockerHost(
            name or f"host{i}",
            url,
            max_concurrent_jobs=max_jobs,
            tls=tls if url.startswith("tcp://") else None,
        )
        for i, (name, url) in enumerate(args.hosts, start=1)
    ]
    hosts += [
        SwarmHost(
            name or f"swarm{i}",
            url,
            max_concurrent_jobs=max_jobs,
            tls=tls if url.startswith("tcp://") else None,
        )
        for i, (name, url) in enumerate(args.swarms, start=1)
    ]
    return hosts


def _policy(args: argparse.Namespace) -> SecurityPolicy:
    return SecurityPolicy(
        allow_unenforced=tuple(getattr(args, "allow_unenforced", ())),
        allowed_mount_sources=tuple(getattr(args, "allow_mount", ())),
    )


def _secrets(args: argparse.Namespace, default: SecretSource | None) -> SecretSource | None:
    if args.secrets_dir:
        return FileSecrets(args.secrets_dir)
    if args.secrets_env is not None:
        return EnvSecrets(args.secrets_env)
    return default


def _client(args: argparse.Namespace, *, create: bool = False) -> JobManager:
    """A manager that runs nothing: for the commands that read and change a store."""
    return JobManager(hosts=[], storage=_storage(args, create=create))


async def _find(manager: JobManager, text: str) -> Job:
    """The job whose id is `text`, or the one job whose id begins with it."""
    try:
        return await manager.get(text)
    except JobNotFound:
        pass
    if text:
        # Only ids are wanted here (a listing reads no output).
        found = [job for job in await manager.storage.list(limit=None) if job.id.startswith(text)]
        if len(found) == 1:
            return await manager.get(found[0].id)  # whole, output included (for show)
        if found:
            ids = ", ".join(job.id[:SHORT_ID] for job in found[:5])
            more = f" and {len(found) - 5} more" if len(found) > 5 else ""
            raise CommandError(
                f"{text!r} is the beginning of {len(found)} job ids ({ids}{more}): "
                "give more of it"
            )
    raise CommandError(f"no job with id {text!r}")


def _spec(args: argparse.Namespace, **more: Any) -> JobSpec:
    return JobSpec(
        image=args.image,
        command=list(args.args) or None,
        name=args.name,
        memory_limit_mb=args.memory,
        cpu_limit=args.cpus,
        timeout_seconds=args.timeout,
        environment={**dict(args.env), **{key: Secret(name) for key, name in args.secret}},
        environment_template=args.env_template,
        user=args.user,
        working_directory=args.workdir,
        pull_policy=args.pull,
        placement=args.placement,
        **more,
    )


# --- following a job ---------------------------------------------------------------------


def _exit_code(job: Job) -> int:
    if job.status is JobStatus.COMPLETED:
        return 0
    if job.status is JobStatus.TIMEOUT:
        return EXIT_TIMEOUT
    if job.status is JobStatus.CANCELLED:
        return EXIT_INTERRUPTED
    if job.exit_code is None:
        error = job.error or ""
        if _NOT_FOUND.search(error):
            return EXIT_COMMAND_NOT_FOUND
        if _NOT_EXECUTABLE.search(error):
            return EXIT_CANNOT_EXECUTE
        return EXIT_NOT_STARTED
    return job.exit_code or 1


def _why_it_ended(job: Job) -> str | None:
    """One line on why the job did not complete, in plain words where the engine's are
    not; `None` for a job that completed."""
    if job.status is JobStatus.COMPLETED:
        return None
    error = job.error or ""
    if job.exit_code is None and job.status is JobStatus.FAILED:
        if found := _NOT_FOUND.search(error):
            return (
                f"job {job.id} could not start: command {found['command']!r} not found in "
                f"image {job.spec.image!r}"
            )
        if found := _NOT_EXECUTABLE.search(error):
            return (
                f"job {job.id} could not start: command {found['command']!r} in image "
                f"{job.spec.image!r} cannot be executed (permission denied: not an "
                "executable file)"
            )
    return f"job {job.id} {job.status}: {error or 'no error recorded'}"


async def _follow(manager: JobManager, job: Job, *, cancel_on_signal: bool) -> int:
    """Stream the job's output until it ends and return its exit code. A signal
    cancels the job (`run`) or stops following it (`submit --wait`); a reader gone
    (``| head``) does the same. Why the job still waits is said when it changes."""
    ended: Job | None = None
    stranded: NoWorkerAvailable | None = None
    failure: Exception | None = None
    interrupted = reader_gone = False
    streamed = anyio.Event()

    async with anyio.create_task_group() as tg:

        async def guarded(work: Callable[[], Awaitable[None]]) -> None:
            nonlocal failure
            try:
                await work()
            except Exception as exc:  # reported once, after the task group
                failure = exc
                tg.cancel_scope.cancel()

        async def stream() -> None:
            nonlocal reader_gone
            # Closed here, in this task, also when cancelled: a generator left to the
            # interpreter's shutdown would be closed outside its cancel scopes.
            async with aclosing(manager.logs(job.id)) as lines:
                async for line in lines:
                    if not _write(line):
                        reader_gone = True
                        if cancel_on_signal:
                            await manager.cancel(job.id)
                        tg.cancel_scope.cancel()
                        return
            streamed.set()

        async def finish() -> None:
            nonlocal ended, stranded
            try:
                ended = await manager.wait(job.id)
            except NoWorkerAvailable as exc:
                stranded = exc
                tg.cancel_scope.cancel()
                return
            await streamed.wait()
            tg.cancel_scope.cancel()

        async def on_signal() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    if cancel_on_signal:
                        await manager.cancel(job.id)  # then follow it to its end
                    else:
                        interrupted = True
                        tg.cancel_scope.cancel()
                        return

        async def reasons() -> None:
            said = None
            while True:
                current = await manager.get(job.id)
                if current.status is JobStatus.PENDING and current.error and current.error != said:
                    _say(f"job {job.id} is pending, {current.error}")
                    said = current.error
                await anyio.sleep(_REASON_INTERVAL)

        for work in (stream, finish, on_signal, reasons):
            tg.start_soon(guarded, work)

    if failure is not None:
        raise failure
    if reader_gone:
        return EXIT_BROKEN_PIPE
    if stranded is not None:
        await _report_stranded(manager, job, stranded, own=cancel_on_signal)
        return EXIT_NOT_STARTED
    if interrupted or ended is None:
        _say(f"stopped following job {job.id}; it goes on (containerjobs cancel {job.id})")
        return EXIT_INTERRUPTED
    why = _why_it_ended(ended)
    if why is not None:
        _say(why)
    return _exit_code(ended)


async def _report_stranded(
    manager: JobManager, job: Job, stranded: NoWorkerAvailable, *, own: bool
) -> None:
    if not own:
        # A client: the job waits for a worker, and the user is told how to get one.
        _say(
            f"nothing ran job {job.id}: no worker holds a lease on {manager.storage!r}. "
            f"The job stays pending: start a worker on that store (containerjobs worker), "
            f"or cancel it (containerjobs cancel {job.id})."
        )
        return
    # run: the job was to run here, and cannot; it must not run later, elsewhere.
    health = await manager.health()
    errors = "; ".join(state.error for state in health.values() if state.error)
    await manager.cancel(job.id)
    _say(f"job {job.id} could not start, and is cancelled: {errors or stranded}")


# --- the commands ------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> int:
    spec = _spec(args)
    host: DockerHost | SwarmHost = (
        DockerHost("local", args.host) if args.host else DockerHost.from_env()
    )
    if args.swarm:
        host = SwarmHost("swarm", host.url, tls=host.tls)
    # Only its own job: a run that shares a store with workers takes none of their
    # queue, adopts none of their jobs, and leaves nothing of its own running.
    async with JobManager(
        hosts=[host],
        storage=_storage(args, create=True, default_memory=True),
        policy=_policy(args),
        secrets=_secrets(args, EnvSecrets()),
        own_jobs_only=True,
        on_exit="cancel",
    ) as manager:
        health = (await manager.health())[host.name]
        if not health.healthy:
            raise CommandError(health.error or f"{host.url} does not answer", EXIT_NOT_STARTED)
        job = await manager.submit(spec)
        return await _follow(manager, job, cancel_on_signal=True)


async def _submit(args: argparse.Namespace) -> int:
    spec = _spec(args, host=args.on_host, priority=args.priority, max_retries=args.retries)
    async with _client(args, create=True) as manager:
        job = await manager.submit(spec)
        if not args.wait:
            print(job.id)
            return 0
        _say(f"submitted job {job.id}")
        return await _follow(manager, job, cancel_on_signal=False)


async def _work(args: argparse.Namespace) -> int:
    manager = JobManager(
        hosts=_hosts(args, args.max_jobs),
        storage=_storage(args, create=True),
        policy=_policy(args),
        secrets=_secrets(args, None),
        on_exit=args.on_exit,
        lease_ttl=args.lease_ttl,
    )
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with manager:
            health = await manager.health()
            for name, state in health.items():
                status = "healthy" if state.healthy else f"unhealthy: {state.error}"
                print(f"containerjobs worker {manager.id}: host {name} {status}", file=sys.stderr)
            async for received in signals:
                print(
                    f"containerjobs worker {manager.id}: {signal.Signals(received).name}, "
                    f"stopping ({manager.exit_mode} running jobs)",
                    file=sys.stderr,
                )
                break
    return 0


async def _jobs(args: argparse.Namespace) -> int:
    async with _client(args) as manager:
        listed = await manager.list_jobs(status=args.status, limit=args.limit)
        if args.quiet:
            for job in listed:
                print(job.id)
        elif args.output == "json":
            print(json.dumps([_job_json(job) for job in listed], indent=None if args.watch else 2))
        else:
            now = datetime.now(UTC)
            print(_table(_JOB_COLUMNS, [_job_row(job, now) for job in listed]))
        sys.stdout.flush()
        if not args.watch:
            return 0
        # As kubectl get -w: after the list, a line for each job that appears or changes.
        seen = {job.id: _job_json(job) for job in listed}
        while True:
            await anyio.sleep(_WATCH_INTERVAL)
            now = datetime.now(UTC)
            for job in reversed(await manager.list_jobs(status=args.status, limit=args.limit)):
                record = _job_json(job)
                if seen.get(job.id) == record:
                    continue
                seen[job.id] = record
                if args.quiet:
                    print(job.id)
                elif args.output == "json":
                    print(json.dumps(record))
                else:
                    print("   ".join(_job_row(job, now)).rstrip())
            sys.stdout.flush()


async def _show(args: argparse.Namespace) -> int:
    async with _client(args) as manager:
        job = await _find(manager, args.job_id)
        _print_json(converter.unstructure(job))
    return 0


async def _logs(args: argparse.Namespace) -> int:
    async with _client(args) as manager:
        job = await _find(manager, args.job_id)
        if not args.no_follow and not job.status.is_terminal:
            await _say_who_runs(manager, job)
        async with aclosing(manager.logs(job.id, follow=not args.no_follow)) as lines:
            async for line in lines:
                if not _write(line):
                    return EXIT_BROKEN_PIPE
    return 0


async def _say_who_runs(manager: JobManager, job: Job) -> None:
    """Before following a job: say so when nothing runs it (and so nothing may come)."""
    live = await manager.storage.live_managers()
    store = repr(manager.storage)
    if job.status is JobStatus.PENDING:
        if job.error:
            _say(f"job {job.id} is pending, {job.error}")
        if not live:
            _say(
                f"job {job.id} is pending and no worker holds a lease on {store}: nothing "
                "runs it. Following it until a worker takes it and it ends "
                "(containerjobs worker starts one; Ctrl+C stops following)."
            )
    elif job.owner not in live:
        _say(
            f"job {job.id} is {job.status} under manager {job.owner}, which is gone; "
            + (
                "a worker on the store adopts it soon."
                if live
                else f"no worker holds a lease on {store} to adopt it. Following it until "
                "one does and it ends (Ctrl+C stops following)."
            )
        )


async def _cancel(args: argparse.Namespace) -> int:
    code = 0
    async with _client(args) as manager:
        for text in args.job_ids:
            try:
                job = await _find(manager, text)
            except CommandError as exc:
                _say(str(exc))
                code = exc.code
                continue
            if job.status.is_terminal:
                print(f"{job.id}  {job.status}")
                continue
            if job.status is JobStatus.PENDING:
                print(f"{job.id}  {(await manager.cancel(job.id)).status}")
                continue
            live = await manager.storage.live_managers()
            if job.owner in live:
                _say(f"job {job.id} is {job.status}; asking its manager {job.owner} to cancel it")
                print(f"{job.id}  {(await manager.cancel(job.id)).status}")
                continue
            # Its manager is gone: the request waits in the store for the one that
            # adopts the job; no reason to wait for that here.
            with anyio.move_on_after(_LEFT_CANCEL_WAIT):
                print(f"{job.id}  {(await manager.cancel(job.id)).status}")
                continue
            _say(
                f"job {job.id} is {job.status} under manager {job.owner}, which is gone: "
                "the manager that adopts it will cancel it"
            )
            print(f"{job.id}  {job.status}")
    return code


async def _hosts_command(args: argparse.Namespace) -> int:
    hosts = _hosts(args)
    async with JobManager(hosts=hosts, storage=InMemoryStorage()) as manager:
        health = await manager.health()
    if args.output == "json":
        _print_json(
            [
                {
                    "name": host.name,
                    "url": host.url,
                    "swarm": isinstance(host, SwarmHost),
                    "healthy": health[host.name].healthy,
                    "response_time": health[host.name].response_time,
                    "error": health[host.name].error,
                }
                for host in hosts
            ]
        )
    else:
        rows = []
        for host in hosts:
            state = health[host.name]
            took = state.response_time
            rows.append(
                (
                    host.name,
                    host.url,
                    "yes" if state.healthy else "no",
                    "" if took is None else f"{took * 1000:.0f} ms",
                    state.error or "",
                )
            )
        print(_table(("NAME", "URL", "HEALTHY", "RESPONSE", "ERROR"), rows))
    return 0 if all(state.healthy for state in health.values()) else EXIT_FAILURE


async def _summary(args: argparse.Namespace) -> int:
    async with _client(args) as manager:
        counts = (await manager.summary())["jobs"]
        workers = sorted(await manager.storage.live_managers())
    if args.output == "json":
        _print_json({"jobs": counts, "workers": workers})
        return 0
    print(_table(("STATUS", "JOBS"), [(status, str(n)) for status, n in counts.items()]))
    print()
    if workers:
        print(f"workers: {len(workers)} with a live lease ({', '.join(workers)})")
    else:
        print("workers: none with a live lease: nothing runs the pending jobs")
    return 0


async def _prune(args: argparse.Namespace) -> int:
    async with _client(args) as manager:
        deleted = await manager.prune(older_than=args.older_than)
    print(f"deleted {deleted} finished job{'' if deleted == 1 else 's'}")
    return 0


async def _templates(args: argparse.Namespace) -> int:
    async with _client(args) as manager:
        if args.action == "save":
            try:
                if args.file == "-":
                    text = await anyio.to_thread.run_sync(sys.stdin.read)
                else:
                    text = await anyio.Path(args.file).read_text(encoding="utf-8")
            except OSError as exc:
                raise CommandError(f"cannot read {args.file!r}: {exc.strerror}") from None
            await manager.save_template(
                EnvironmentTemplate(args.name, text, description=args.description)
            )
            print(args.name)
            return 0
        if args.action == "rm":
            await manager.delete_template(args.name)
            print(args.name)
            return 0
        listed = await manager.list_templates()
    # Names of variables only: values may be secrets.
    if args.output == "json":
        _print_json(
            [
                {"name": t.name, "description": t.description, "variables": sorted(t.variables)}
                for t in listed
            ]
        )
    else:
        rows = [(t.name, ", ".join(sorted(t.variables)), t.description) for t in listed]
        print(_table(("NAME", "VARIABLES", "DESCRIPTION"), rows))
    return 0


async def _completion(args: argparse.Namespace) -> int:
    from ._completion import bash_script, zsh_script

    parser = _parser()
    print(bash_script(parser) if args.shell == "bash" else zsh_script(parser), end="")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "run": _run,
    "submit": _submit,
    "worker": _work,
    "jobs": _jobs,
    "show": _show,
    "logs": _logs,
    "cancel": _cancel,
    "hosts": _hosts_command,
    "summary": _summary,
    "prune": _prune,
    "templates": _templates,
    "completion": _completion,
}
# These handle SIGINT and SIGTERM themselves: run cancels its job, worker stops.
_OWN_SIGNALS = {"run", "worker"}


async def _until_interrupted(command: Callable[[], Awaitable[int]]) -> int:
    """The command's exit code, or 130 when SIGINT or SIGTERM ends it first."""
    code = EXIT_INTERRUPTED
    failure: BaseException | None = None
    async with anyio.create_task_group() as tg:

        async def body() -> None:
            nonlocal code, failure
            try:
                code = await command()
            except Exception as exc:  # raised after the task group, alone
                failure = exc
            finally:
                tg.cancel_scope.cancel()

        async def interrupted() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(interrupted)
        await anyio.lowlevel.checkpoint()  # the receiver is in place before any work
        tg.start_soon(body)
    if failure is not None:
        raise failure
    return code


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        _configure_logging(args.verbose, args.command)
        command = _COMMANDS[args.command]
        if args.command in _OWN_SIGNALS:
            return anyio.run(command, args)
        return anyio.run(_until_interrupted, lambda: command(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # before the command's own handling was in place
    except CommandError as exc:
        _say(str(exc))
        return exc.code
    except (
        InvalidJobSpec,
        PolicyViolation,
        JobNotFound,
        TemplateNotFound,
        ValueError,
        TypeError,
    ) as exc:
        _say(str(exc))
        return EXIT_USAGE
    except ContainerJobsError as exc:
        _say(str(exc))
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
