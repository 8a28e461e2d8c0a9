"""The ``containerjobs`` command.

``containerjobs run IMAGE [COMMAND...]`` runs one job and streams its output live,
stdout to stdout and stderr to stderr, then exits with the job's exit code (124 on
timeout, 130 when cancelled, 125 when the job could not start, as ``timeout`` and
``docker run`` do). The other commands read a job store (``--db``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from ._errors import ContainerJobsError
from ._hosts import DockerHost, Host, SwarmHost, TLSConfig
from ._manager import JobManager
from ._models import PULL_POLICIES, Job, JobSpec, JobStatus, LogLine
from ._policy import SecurityPolicy
from ._secrets import EnvSecrets, FileSecrets, Secret, SecretSource
from .executors import UNENFORCEABLE
from .storage import InMemoryStorage, Storage
from .storage._codec import converter
from .storage._url import storage_from_url

STORE_VARIABLE = "CONTAINERJOBS_DB"  # the store, when --db is not given
EXIT_TIMEOUT = 124
EXIT_NOT_STARTED = 125
EXIT_CANCELLED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer killed by it


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    # Never echo the argument: whoever forgot the key may have typed a secret.
    if not sep:
        raise argparse.ArgumentTypeError("expected KEY=VALUE; the argument has no '='")
    if not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE; the argument has no KEY before '='")
    return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="containerjobs", description="Run jobs as Docker containers, tracked."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log the library's lifecycle events to stderr"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def store_option(p: argparse.ArgumentParser, required: bool) -> None:
        # Not argparse's required: CONTAINERJOBS_DB may stand in for it (see _store).
        p.set_defaults(db_required=required)
        p.add_argument(
            "--db",
            metavar="URL",
            help="the job store: a SQLite file (a path, or sqlite:///PATH), "
            "postgresql://USER:PASSWORD@HOST:PORT/DB, or memory:// (default: "
            "$CONTAINERJOBS_DB" + (")" if required else ", else in memory)"),
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

    def mounts_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--allow-mount",
            action="append",
            default=[],
            metavar="DIR",
            help="a host folder jobs may mount, with what is in it (repeatable; the "
            "policy's allowed_mount_sources)",
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

    run = commands.add_parser("run", help="run a job and stream its output")
    run.add_argument("image")
    run.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="COMMAND...",
        help="the command and its arguments, run without a shell "
        "(use: sh -c '...' for shell features)",
    )
    run.add_argument("--memory", type=int, metavar="MB", help="memory limit in MB")
    run.add_argument("--cpus", type=float, help="CPU limit in cores")
    run.add_argument("--timeout", type=float, metavar="SECONDS", help="kill after this long")
    run.add_argument(
        "-e",
        "--env",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable (repeatable)",
    )
    run.add_argument(
        "--secret",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=NAME",
        help="environment variable KEY from secret NAME: stored by name, masked as *** in "
        "the output (repeatable)",
    )
    secrets_options(run)
    run.add_argument("--env-template", metavar="NAME", help="a stored environment template")
    run.add_argument("--name", help="the job's name")
    run.add_argument("--user", help="user[:group] inside the container")
    run.add_argument("-w", "--workdir", help="working directory inside the container")
    run.add_argument(
        "--pull",
        choices=PULL_POLICIES,
        default="if-not-present",
        help="when to pull the image",
    )
    run.add_argument(
        "--host", metavar="URL", help="Docker daemon (default: DOCKER_HOST, else the local socket)"
    )
    run.add_argument(
        "--swarm",
        action="store_true",
        help="run the job as a one-shot service on the daemon's Swarm (it must be a manager)",
    )
    run.add_argument(
        "--placement",
        action="append",
        default=[],
        metavar="CONSTRAINT",
        help="a Swarm constraint such as node.labels.zone==a (repeatable; needs --swarm)",
    )
    unenforced_option(run)
    store_option(run, required=False)

    worker = commands.add_parser(
        "worker", help="run the jobs of a shared store until SIGTERM or SIGINT"
    )
    worker.add_argument(
        "--host",
        dest="hosts",
        action="append",
        default=[],
        type=_host,
        metavar="[NAME=]URL",
        help="a Docker daemon to run jobs on (repeatable; default: DOCKER_HOST, else the "
        "local socket)",
    )
    worker.add_argument(
        "--tls-dir", metavar="DIR", help="ca.pem, cert.pem and key.pem for the tcp:// hosts"
    )
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
    store_option(worker, required=True)

    worker.add_argument(
        "--swarm",
        dest="swarms",
        action="append",
        default=[],
        type=_host,
        metavar="[NAME=]URL",
        help="a Swarm manager to run jobs on, the whole cluster as one host (repeatable)",
    )
    unenforced_option(worker)
    mounts_option(worker)
    secrets_options(worker)

    jobs = commands.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--status", choices=[s.value for s in JobStatus])
    jobs.add_argument("--limit", type=int, default=20)
    store_option(jobs, required=True)

    for name, text in (
        ("show", "print a job's record as JSON"),
        ("logs", "print a job's output"),
        ("cancel", "cancel a pending job (a running one needs its manager)"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("job_id")
        if name == "logs":
            sub.add_argument(
                "--no-follow", action="store_true", help="print what is stored and stop"
            )
        store_option(sub, required=True)
    return parser


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to stderr, and never lets a closed pipe break the job it reports on."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass  # a closed or broken stderr: nothing to report to, and nothing to stop


def _host(text: str) -> tuple[str | None, str]:
    name, sep, url = text.partition("=")
    if sep and "://" not in name:
        return name, url
    return None, text


def _worker_hosts(args: argparse.Namespace) -> list[Host]:
    if not args.hosts and not args.swarms:
        return [DockerHost.from_env(max_concurrent_jobs=args.max_jobs)]
    tls = TLSConfig.from_cert_path(args.tls_dir) if args.tls_dir else None
    hosts: list[Host] = [
        DockerHost(
            name or f"host{i}",
            url,
            max_concurrent_jobs=args.max_jobs,
            tls=tls if url.startswith("tcp://") else None,
        )
        for i, (name, url) in enumerate(args.hosts, start=1)
    ]
    hosts += [
        SwarmHost(
            name or f"swarm{i}",
            url,
            max_concurrent_jobs=args.max_jobs,
            tls=tls if url.startswith("tcp://") else None,
        )
        for i, (name, url) in enumerate(args.swarms, start=1)
    ]
    return hosts


def _policy(args: argparse.Namespace) -> SecurityPolicy:
    return SecurityPolicy(
        allow_unenforced=tuple(args.allow_unenforced),
        allowed_mount_sources=tuple(getattr(args, "allow_mount", ())),
    )


def _secrets(args: argparse.Namespace, default: SecretSource | None) -> SecretSource | None:
    if args.secrets_dir:
        return FileSecrets(args.secrets_dir)
    if args.secrets_env is not None:
        return EnvSecrets(args.secrets_env)
    return default


async def _work(args: argparse.Namespace) -> int:
    manager = JobManager(
        hosts=_worker_hosts(args),
        storage=_storage(args),
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


def _configure_logging(verbose: bool) -> None:
    # The job's own output owns stdout; the library speaks on stderr, and only when
    # something is wrong unless asked.
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("containerjobs: %(levelname)s %(message)s"))
    logger = logging.getLogger("containerjobs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def _storage(args: argparse.Namespace) -> Storage:
    url = args.db or os.environ.get(STORE_VARIABLE)
    if url:
        return storage_from_url(url)
    if args.db_required:
        raise ValueError(f"give the job store: --db URL, or set {STORE_VARIABLE}")
    return InMemoryStorage()


def _exit_code(job: Job) -> int:
    if job.status is JobStatus.COMPLETED:
        return 0
    if job.status is JobStatus.TIMEOUT:
        return EXIT_TIMEOUT
    if job.status is JobStatus.CANCELLED:
        return EXIT_CANCELLED
    if job.exit_code is None:
        return EXIT_NOT_STARTED
    return job.exit_code or 1


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


async def _run(args: argparse.Namespace) -> int:
    spec = JobSpec(
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
    )
    host: Host = DockerHost("local", args.host) if args.host else DockerHost.from_env()
    if args.swarm:
        assert isinstance(host, DockerHost)
        host = SwarmHost("swarm", host.url, tls=host.tls)
    async with JobManager(
        hosts=[host],
        storage=_storage(args),
        policy=_policy(args),
        secrets=_secrets(args, EnvSecrets()),
    ) as manager:
        health = (await manager.health())[host.name]
        if not health.healthy:
            print(f"containerjobs: {health.error}", file=sys.stderr)
            return EXIT_NOT_STARTED
        job = await manager.submit(spec)
        async with anyio.create_task_group() as tg:

            async def cancel_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        await manager.cancel(job.id)

            tg.start_soon(cancel_on_signal)
            reader_gone = False
            async for line in manager.logs(job.id):
                if not _write(line):
                    # Whoever read our output is gone (`| head`): stop the job too.
                    reader_gone = True
                    await manager.cancel(job.id)
                    break
            tg.cancel_scope.cancel()
        if reader_gone:
            return EXIT_BROKEN_PIPE
        done = await manager.wait(job.id)
    if done.status is not JobStatus.COMPLETED and done.error:
        print(f"containerjobs: job {done.id} {done.status}: {done.error}", file=sys.stderr)
    return _exit_code(done)


async def _read(args: argparse.Namespace) -> int:
    async with JobManager(hosts=[], storage=_storage(args)) as manager:
        if args.command == "jobs":
            for job in await manager.list_jobs(status=args.status, limit=args.limit):
                print(
                    f"{job.id}  {job.status:<9}  {job.created_at:%Y-%m-%d %H:%M:%S}  "
                    f"{job.host or '-':<10}  {job.spec.image}  {job.name or ''}"
                )
        elif args.command == "show":
            record: dict[str, Any] = converter.unstructure(await manager.get(args.job_id))
            print(json.dumps(record, indent=2))
        elif args.command == "logs":
            async for line in manager.logs(args.job_id, follow=not args.no_follow):
                if not _write(line):
                    return EXIT_BROKEN_PIPE
        elif args.command == "cancel":
            job = await manager.get(args.job_id)
            if job.status is not JobStatus.PENDING and not job.status.is_terminal:
                print(
                    f"containerjobs: job {job.id} is {job.status}; its manager will be asked "
                    "to cancel it",
                    file=sys.stderr,
                )
            print((await manager.cancel(args.job_id)).status)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        if args.command == "run":
            return anyio.run(_run, args)
        if args.command == "worker":
            return anyio.run(_work, args)
        return anyio.run(_read, args)
    except (ContainerJobsError, ValueError, TypeError) as exc:
        print(f"containerjobs: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
