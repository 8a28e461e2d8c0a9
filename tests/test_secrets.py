"""Secrets that are never stored, masked output, and a worker that applies its own
policy: on the FakeCluster, then on the test bed's real dockerd and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import containerjobs as cj
from containerjobs.storage import storage_from_url
from containerjobs.testing import FakeCluster, FakeRun
from tests.conftest import LOCAL_SOCKET, Bed, fresh_postgres_database

VALUE = "tok-3f9Qz7-never-stored"  # a secret's value: it must appear nowhere it is kept
IMAGE = "example/image:1"


def fake_host(name: str = "a") -> cj.DockerHost:
    return cj.DockerHost(name, f"unix:///fake/{name}.sock", max_concurrent_jobs=4)


class Values:
    """A secret source from a dict, counting what it was asked."""

    def __init__(self, **values: str) -> None:
        self.values = values
        self.asked: list[str] = []

    async def resolve(self, name: str) -> str:
        self.asked.append(name)
        try:
            return self.values[name]
        except KeyError:
            raise cj.SecretNotFound(f"secret {name!r} is not in the test's dict") from None


# --- the surface -----------------------------------------------------------------------


def test_a_secret_is_a_name_and_shows_no_value() -> None:
    secret = cj.Secret("API_TOKEN")
    spec = cj.JobSpec(IMAGE, environment={"API_TOKEN": secret, "MODE": "fast"})
    assert spec.environment["API_TOKEN"] == secret
    assert "API_TOKEN" in repr(spec) and "fast" not in repr(spec)
    for bad in ("", "a/b", "../x", "-x", "x" * 256, "a b"):
        with pytest.raises(ValueError, match="secret name"):
            cj.Secret(bad)
    with pytest.raises(TypeError, match=r"str or a cj\.Secret"):
        cj.JobSpec(IMAGE, environment={"N": 5})  # type: ignore[dict-item]


def test_templates_name_secrets_whole_values_only() -> None:
    template = cj.EnvironmentTemplate(
        "prod", "API_TOKEN=${secret:api-token}\nQUOTED='${secret:db.pass}'\nPLAIN=x\n"
    )
    assert template.variables == {
        "API_TOKEN": cj.Secret("api-token"), "QUOTED": cj.Secret("db.pass"), "PLAIN": "x",
    }
    with pytest.raises(cj.InvalidJobSpec, match=r"line 2: a .* reference must be the whole"):
        cj.EnvironmentTemplate("bad", "A=1\nAUTH=Bearer ${secret:t}\n")
    with pytest.raises(cj.InvalidJobSpec, match="line 1: secret name"):
        cj.EnvironmentTemplate("bad", "A=${secret:a/b}\n")


async def test_env_and_file_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CJ_TEST_TOKEN", VALUE)
    assert await cj.EnvSecrets("CJ_TEST_").resolve("TOKEN") == VALUE
    with pytest.raises(cj.SecretNotFound, match="'CJ_TEST_OTHER'"):
        await cj.EnvSecrets("CJ_TEST_").resolve("OTHER")
    (tmp_path / "token").write_text(VALUE + "\n")
    (tmp_path / "pem").write_text("line one\nline two\n\n")
    files = cj.FileSecrets(tmp_path)
    assert await files.resolve("token") == VALUE  # the newline echo adds is not part of it
    assert await files.resolve("pem") == "line one\nline two\n"
    with pytest.raises(cj.SecretNotFound, match="no file"):
        await files.resolve("absent")
    assert isinstance(files, cj.SecretSource) and isinstance(Values(), cj.SecretSource)


# --- resolved at launch, stored by name, masked in the output ---------------------------


async def test_the_container_gets_the_value_and_the_record_only_the_name(tmp_path: Path) -> None:
    cluster = FakeCluster(lambda job: FakeRun(
        stdout="start\n", print_environment=("TOKEN", "SHORT", "FROM_TEMPLATE", "PLAIN")
    ))
    source = Values(api=VALUE, short="abc")
    db = tmp_path / "jobs.db"
    async with cj.JobManager(hosts=[fake_host()], storage=cj.SQLiteStorage(db),
                             executor_factory=cluster, secrets=source) as manager:
        await manager.save_template(cj.EnvironmentTemplate("t", "FROM_TEMPLATE=${secret:api}"))
        job = await manager.run(cj.JobSpec(
            IMAGE, "print",
            environment={"TOKEN": cj.Secret("api"), "SHORT": cj.Secret("short"),
                         "PLAIN": "shown as given"},
            environment_template="t",
        ))
        lines = [line.text async for line in manager.logs(job.id, follow=False)]
    [request] = cluster.executors["a"].requests
    assert dict(request.environment) == {
        "FROM_TEMPLATE": VALUE, "TOKEN": VALUE, "SHORT": "abc", "PLAIN": "shown as given"
    }
    assert VALUE not in repr(request)
    # Printed, the values show as ***; a value of 3 characters is not masked.
    expected = "start\nTOKEN=***\nSHORT=abc\nFROM_TEMPLATE=***\nPLAIN=shown as given\n"
    assert job.stdout == expected
    assert lines == expected.splitlines()
    assert job.spec.environment == {
        "FROM_TEMPLATE": cj.Secret("api"), "TOKEN": cj.Secret("api"),
        "SHORT": cj.Secret("short"), "PLAIN": "shown as given",
    }
    assert VALUE.encode() not in db.read_bytes()


async def test_a_missing_secret_fails_the_job_before_anything_starts() -> None:
    cluster = FakeCluster()
    async with cj.JobManager(hosts=[fake_host()], executor_factory=cluster,
                             secrets=Values()) as manager:
        job = await manager.run(cj.JobSpec(
            IMAGE, "x", environment={"TOKEN": cj.Secret("absent")}, max_retries=3
        ))
    assert (job.status, job.attempts, job.container_id) == (cj.JobStatus.FAILED, 1, None)
    assert job.error == "secret 'absent' is not in the test's dict"
    assert cluster.executors["a"].requests == []


async def test_a_manager_without_a_source_says_how_to_give_one() -> None:
    async with cj.JobManager(hosts=[fake_host()], executor_factory=FakeCluster()) as manager:
        job = await manager.run(cj.JobSpec(IMAGE, "x", environment={"T": cj.Secret("t")}))
    assert job.status is cj.JobStatus.FAILED
    assert job.error is not None and "JobManager(secrets=" in job.error


async def test_an_adopting_manager_masks_with_its_own_source(tmp_path: Path) -> None:
    cluster = FakeCluster(lambda job: FakeRun(stdout=f"{VALUE}\n", duration=1.5))
    store = cj.SQLiteStorage(tmp_path / "jobs.db")
    first = cj.JobManager(hosts=[fake_host()], storage=store, executor_factory=cluster,
                          secrets=Values(api=VALUE), on_exit="detach", lease_ttl=0.5)
    async with first:
        job = await first.submit(
            cj.JobSpec(IMAGE, "x", environment={"TOKEN": cj.Secret("api")})
        )
        async for _ in first.logs(job.id):
            break
    async with cj.JobManager(hosts=[fake_host()], storage=cj.SQLiteStorage(tmp_path / "jobs.db"),
                             executor_factory=cluster, secrets=Values(api=VALUE),
                             lease_ttl=0.5) as adopter:
        done = await adopter.wait(job.id, timeout=20)
    assert done.stdout == "***\n"


# --- the worker is the trust boundary ---------------------------------------------------


LAX = cj.SecurityPolicy(allow_root=True, max_memory_mb=8192, default_memory_mb=4096)


async def test_a_strict_worker_refuses_what_a_lax_client_stored(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    cluster = FakeCluster()
    async with cj.JobManager(hosts=[], storage=cj.SQLiteStorage(db), policy=LAX) as client:
        as_root = await client.submit(cj.JobSpec(IMAGE, "x", user="0:0", memory_limit_mb=256))
        big = await client.submit(cj.JobSpec(IMAGE, "x", memory_limit_mb=4096))
        fine = await client.submit(cj.JobSpec(IMAGE, "x", memory_limit_mb=256))
    async with cj.JobManager(hosts=[fake_host()], storage=cj.SQLiteStorage(db),
                             executor_factory=cluster) as worker:
        jobs = [await worker.wait(job.id, timeout=10) for job in (as_root, big, fine)]
    refused_root, refused_big, ran = jobs
    for job, field in ((refused_root, "user='0:0'"), (refused_big, "memory_limit_mb=4096")):
        assert (job.status, job.container_id) == (cj.JobStatus.FAILED, None)
        assert job.error is not None and job.error.startswith("refused at launch by the policy")
        assert f"{field} refused" in job.error
    assert ran.status is cj.JobStatus.COMPLETED
    assert [request.job_id for request in cluster.executors["a"].requests] == [fine.id]


async def test_a_spec_written_straight_into_the_store_meets_the_worker_s_policy(
    tmp_path: Path,
) -> None:
    store = cj.SQLiteStorage(tmp_path / "jobs.db")
    raw = [
        cj.Job(id="root", spec=cj.JobSpec(IMAGE, "x", user="root")),
        cj.Job(id="registry", spec=cj.JobSpec("evil.example/x:1", "x")),
        # Nothing filled in: the worker's defaults apply, not the image's user.
        cj.Job(id="bare", spec=cj.JobSpec(IMAGE, "x")),
    ]
    await store.open()
    try:
        await store.create(raw)
    finally:
        await store.close()
    cluster = FakeCluster()
    policy = cj.SecurityPolicy(allowed_registries=("docker.io",))
    async with cj.JobManager(hosts=[fake_host()], storage=cj.SQLiteStorage(tmp_path / "jobs.db"),
                             executor_factory=cluster, policy=policy) as worker:
        root, registry, bare = [await worker.wait(job.id, timeout=10) for job in raw]
    assert root.status is registry.status is cj.JobStatus.FAILED
    assert root.error is not None and "user='root' refused" in root.error
    assert registry.error is not None and "allowed_registries" in registry.error
    assert bare.status is cj.JobStatus.COMPLETED
    [request] = cluster.executors["a"].requests
    assert (request.user, request.memory_bytes) == ("65534:65534", 512 * 1024 * 1024)
    assert (bare.spec.user, bare.spec.memory_limit_mb, bare.spec.timeout_seconds) == (
        "65534:65534", 512, 3600.0
    )


async def test_a_secret_too_large_for_the_worker_s_policy_is_refused_at_launch() -> None:
    cluster = FakeCluster()
    policy = cj.SecurityPolicy(max_environment_bytes=1000)
    async with cj.JobManager(hosts=[fake_host()], executor_factory=cluster, policy=policy,
                             secrets=Values(big="x" * 2000)) as manager:
        job = await manager.run(cj.JobSpec(IMAGE, "x", environment={"B": cj.Secret("big")}))
    assert job.status is cj.JobStatus.FAILED
    assert job.error is not None and "max_environment_bytes=1000" in job.error
    assert "x" * 100 not in job.error
    assert cluster.executors["a"].requests == []


# --- Hypothesis: no value reaches the record -----------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
keys = st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True)
plain = st.text(st.characters(categories=("L", "N", "P", "S", "Zs"), exclude_characters="$"),
               max_size=12)


@st.composite
def secret_specs(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, str | cj.Secret], str]:
    """Secret values, a spec environment and a template text, with references to
    the secrets in every position either may hold them."""
    secret_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    values = {name: f"V4L-{name}-{draw(st.integers(1000, 9999))}" for name in secret_names}
    environment: dict[str, str | cj.Secret] = draw(st.dictionaries(
        keys, st.one_of(plain, st.sampled_from(secret_names).map(cj.Secret)), max_size=6
    ))
    template_vars = draw(st.dictionaries(
        keys, st.one_of(plain, st.sampled_from(secret_names).map(lambda n: f"${{secret:{n}}}")),
        max_size=6,
    ))
    template = "".join(f"{key}={value}\n" for key, value in template_vars.items())
    return values, environment, template


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=secret_specs())
async def test_no_secret_value_ever_reaches_the_record(
    case: tuple[dict[str, str], dict[str, str | cj.Secret], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    values, environment, template = case
    db = tmp_path_factory.mktemp("hyp") / "jobs.db"
    # The job prints every variable it was given: values of secrets come out masked.
    variables = {**cj.EnvironmentTemplate("t", template).variables, **environment}
    named = {value.name for value in variables.values() if isinstance(value, cj.Secret)}
    # (A secret the job does not name is not its to mask: the stderr prints only those.)
    cluster = FakeCluster(lambda job: FakeRun(
        print_environment=tuple(variables), stderr=" ".join(values[name] for name in named)
    ))
    async with cj.JobManager(hosts=[fake_host()], storage=cj.SQLiteStorage(db),
                             executor_factory=cluster, secrets=Values(**values)) as manager:
        await manager.save_template(cj.EnvironmentTemplate("t", template))
        job = await manager.run(cj.JobSpec(IMAGE, "x", environment=environment,
                                           environment_template="t"))
        assert job.status is cj.JobStatus.COMPLETED, job.error
        record = json.dumps(attrs.asdict(await manager.get(job.id)), default=str)
    stored = db.read_bytes()
    for value in values.values():
        assert value not in record and value not in job.stdout and value not in job.stderr
        assert value.encode() not in stored


# --- logging at DEBUG, everywhere ------------------------------------------------------------


@pytest.fixture
def every_log_record() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    handler, level = Keep(logging.DEBUG), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    levels = [(logger, logger.level) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for logger, old in levels:
            logger.setLevel(old)


def leaks(records: list[logging.LogRecord], value: str) -> list[str]:
    found = []
    for record in records:
        text = record.getMessage() + repr(record.args) + repr(vars(record))
        if value in text:
            found.append(f"{record.name}: {record.getMessage()[:200]}")
    return found


@pytest.mark.docker
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_on_a_real_daemon_the_value_reaches_the_container_and_nothing_else(
    kind: str, testbed: Bed, tmp_path: Path, no_leftovers: None,
    every_log_record: list[logging.LogRecord],
) -> None:
    digest = hashlib.sha256(VALUE.encode()).hexdigest()
    script = (
        'printf %s "$TOKEN" | sha256sum | cut -d" " -f1; '
        'echo "the token is $TOKEN"; echo "$TOKEN" >&2; exit 3'
    )

    async def run(url: str) -> cj.Job:
        host = cj.DockerHost("local", LOCAL_SOCKET)
        async with cj.JobManager(hosts=[host], storage=storage_from_url(url),
                                 secrets=Values(api=VALUE)) as manager:
            job = await manager.run(cj.JobSpec(
                testbed.image, script, environment={"TOKEN": cj.Secret("api")}
            ))
            streamed = [line async for line in manager.logs(job.id, follow=False)]
            # (Across the two streams the order is only as exact as Docker's stamps.)
            assert [line.text for line in streamed if line.stream == "stdout"] == [
                digest, "the token is ***"
            ]
            assert [line.text for line in streamed if line.stream == "stderr"] == ["***"]
            return job

    if kind == "sqlite":
        job = await run(f"sqlite://{tmp_path}/jobs.db")
        async for path in anyio.Path(tmp_path).iterdir():  # the file, and any journal
            assert VALUE.encode() not in await path.read_bytes(), path
    else:
        async with fresh_postgres_database(testbed, "cj_secrets") as url:
            job = await run(url)
            with anyio.fail_after(60):
                dump = await anyio.run_process(["pg_dump", "--data-only", url], check=False)
            assert dump.returncode == 0, dump.stderr.decode()
            text = dump.stdout.decode()
            assert "the token is ***" in text and VALUE not in text
    assert (job.status, job.exit_code) == (cj.JobStatus.FAILED, 3)
    assert job.stdout == f"{digest}\nthe token is ***\n" and job.stderr == "***\n"
    assert VALUE not in (job.error or "") and VALUE not in repr(job)
    assert not leaks(every_log_record, VALUE)
    if kind == "sqlite":  # (aiosqlite logs every statement at DEBUG: the net was open)
        assert any(record.levelno == logging.DEBUG for record in every_log_record)


@pytest.mark.docker
def test_the_cli_takes_a_secret_by_name_and_never_shows_it(
    testbed: Bed, tmp_path: Path, no_leftovers: None
) -> None:
    db = tmp_path / "cli.db"
    env = {**os.environ, "CJ_TEST_TOKEN": VALUE}
    command = [sys.executable, "-m", "containerjobs.cli"]
    done = subprocess.run(
        [*command, "-v", "run", "--db", str(db), "--secret", "TOKEN=CJ_TEST_TOKEN",
         testbed.image, "sh", "-c", 'echo "token: $TOKEN"; test ${#TOKEN} -eq 23'],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "token: ***\n" and VALUE not in done.stderr
    job_id = subprocess.run([*command, "jobs", "-q", "--db", str(db)], capture_output=True,
                            text=True, timeout=60).stdout.split()[0]
    shown = subprocess.run([*command, "show", job_id, "--db", str(db)], capture_output=True,
                           text=True, timeout=60).stdout
    assert json.loads(shown)["spec"]["environment"] == {"TOKEN": {"secret": "CJ_TEST_TOKEN"}}
    assert VALUE not in shown and VALUE.encode() not in db.read_bytes()
    missing = subprocess.run(
        [*command, "run", "--secret", "TOKEN=CJ_TEST_ABSENT", testbed.image, "true"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert missing.returncode == 125 and "CJ_TEST_ABSENT" in missing.stderr


@pytest.mark.docker
async def test_a_lax_client_and_a_strict_worker_on_one_store(
    testbed: Bed, tmp_path: Path, no_leftovers: None
) -> None:
    db = f"sqlite://{tmp_path}/jobs.db"
    async with cj.JobManager(hosts=[], storage=storage_from_url(db), policy=LAX) as client:
        job = await client.submit(cj.JobSpec(testbed.image, "id -u", user="0",
                                             memory_limit_mb=256))
    before = set(testbed.labelled_containers())
    async with cj.JobManager(hosts=[cj.DockerHost("local", LOCAL_SOCKET)],
                             storage=storage_from_url(db)) as worker:
        done = await worker.wait(job.id, timeout=30)
        assert set(testbed.labelled_containers()) == before  # no container, ever
    assert (done.status, done.container_id, done.stdout) == (cj.JobStatus.FAILED, None, "")
    assert done.error is not None
    assert "refused at launch by the policy" in done.error and "allow_root=False" in done.error
