"""The security policy, bad input and secrets: refusals leave nothing behind."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import containerjobs as cj
from containerjobs import cli
from containerjobs._users import parse_user_spec, resolve
from containerjobs.testing import FakeCluster
from tests.conftest import Bed
from tests.strategies import id_spellings, user_names, wild_spec_kwargs, zero_spellings


@pytest.fixture
async def client() -> AsyncIterator[cj.JobManager]:
    # A client manager stores jobs and runs none: refusals are all that can happen.
    async with cj.JobManager(hosts=[]) as manager:
        yield manager


@pytest.mark.parametrize(
    "spec",
    [
        cj.JobSpec(image="alpine", memory_limit_mb=2049),
        cj.JobSpec(image="alpine", cpu_limit=2.5),
        cj.JobSpec(image="alpine", timeout_seconds=3601),
        cj.JobSpec(image="alpine", networks=["host"]),
        cj.JobSpec(image="alpine", user="0"),
        cj.JobSpec(image="alpine", user="root"),
        cj.JobSpec(image="alpine", user="0:0"),
        cj.JobSpec(image="alpine", mounts=[cj.Mount("/etc", "/data")]),
        cj.JobSpec(image="alpine", mounts=[cj.Mount("/var/run/docker.sock", "/s")]),
    ],
    ids=["memory", "cpu", "timeout", "host-network", "uid-0", "root", "0:0", "etc", "socket"],
)
async def test_refusals_name_the_field_and_store_nothing(
    client: cj.JobManager, spec: cj.JobSpec
) -> None:
    with pytest.raises(cj.PolicyViolation) as refused:
        await client.submit(spec)
    assert isinstance(refused.value, ValueError)
    message = str(refused.value)
    assert any(
        field in message
        for field in (
            "memory_limit_mb",
            "cpu_limit",
            "timeout_seconds",
            "networks",
            "user",
            "mounts",
        )
    )
    assert await client.list_jobs() == []


async def test_registry_allow_list(tmp_path: Path) -> None:
    policy = cj.SecurityPolicy(allowed_registries=["127.0.0.1:5000"])
    async with cj.JobManager(hosts=[], policy=policy) as client:
        with pytest.raises(cj.PolicyViolation, match=r"docker\.io"):
            await client.submit(cj.JobSpec(image="alpine"))
        await client.submit(cj.JobSpec(image="127.0.0.1:5000/team/tool:1"))
        assert len(await client.list_jobs()) == 1


async def test_mount_sources_are_resolved_before_they_are_checked(tmp_path: Path) -> None:
    allowed = tmp_path / "shared"
    (allowed / "data").mkdir(parents=True)
    (allowed / "to-etc").symlink_to("/etc")
    policy = cj.SecurityPolicy(allowed_mount_sources=[str(allowed)])
    async with cj.JobManager(hosts=[], policy=policy) as client:
        ok = await client.submit(
            cj.JobSpec(image="alpine", mounts=[cj.Mount(str(allowed / "data"), "/data")])
        )
        assert ok.spec.mounts[0].read_only is True
        for source in (
            allowed / "to-etc",
            f"{allowed}/data/../../..{tmp_path}",
            f"{allowed}/../outside",
        ):
            with pytest.raises((cj.PolicyViolation, cj.InvalidJobSpec)):
                await client.submit(
                    cj.JobSpec(image="alpine", mounts=[cj.Mount(str(source), "/x")])
                )
        assert len(await client.list_jobs()) == 1


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kwargs=wild_spec_kwargs)
async def test_any_input_is_stored_or_refused_cleanly(kwargs: dict[str, Any]) -> None:
    async with cj.JobManager(hosts=[], executor_factory=FakeCluster()) as client:
        try:
            spec = cj.JobSpec(**kwargs)
            job = await client.submit(spec)
        except (cj.ContainerJobsError, ValueError, TypeError):
            assert await client.list_jobs() == []
        else:
            assert [j.id for j in await client.list_jobs()] == [job.id]
            assert job.status is cj.JobStatus.PENDING


@pytest.mark.docker
async def test_allowed_folder_mounts_read_only(
    image: str, tmp_path: Path, no_leftovers: None
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "input.txt").write_text("from the host\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(shared, 0o777)
    policy = cj.SecurityPolicy(allowed_mount_sources=[str(tmp_path)])
    local = cj.DockerHost("local", "unix:///var/run/docker.sock")
    async with cj.JobManager(hosts=[local], policy=policy) as manager:
        read = await manager.run(
            cj.JobSpec(
                image=image,
                command="cat /data/input.txt; touch /data/new && echo wrote || echo ro",
                mounts=[cj.Mount(str(shared), "/data")],
            )
        )
        writable = await manager.run(
            cj.JobSpec(
                image=image,
                command="echo out > /data/made.txt",
                mounts=[cj.Mount(str(shared), "/data", read_only=False)],
            )
        )
    assert read.stdout == "from the host\nro\n"
    assert writable.status is cj.JobStatus.COMPLETED
    assert (shared / "made.txt").read_text() == "out\n"


@pytest.mark.docker
async def test_secrets_stay_out_of_logs_errors_and_reprs(
    testbed: Bed,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    no_leftovers: None,
) -> None:
    secret = "tok-3f9a1c5e7b-very-secret"
    caplog.set_level(logging.DEBUG)
    async with cj.JobManager(
        hosts=[cj.DockerHost("local", "unix:///var/run/docker.sock")]
    ) as manager:
        job = await manager.run(
            cj.JobSpec(
                image=testbed.image,
                command='test -n "$API_TOKEN" && exit 5',
                environment={"API_TOKEN": secret},
            )
        )
    assert job.status is cj.JobStatus.FAILED and job.exit_code == 5
    assert job.spec.environment["API_TOKEN"] == secret  # stored: it must run with it
    names = [getattr(record, "event", "") for record in caplog.records]
    assert "job.submitted" in names and "job.running" in names and "job.finished" in names
    everything = (
        caplog.text
        + repr([record.__dict__ for record in caplog.records])
        + "".join(capsys.readouterr())
        + repr(job)
        + str(job.error)
    )
    assert secret not in everything


# --- root, in every spelling ---------------------------------------------------------

ISSUE_SPELLINGS = ["00", "0000", "+0", "000:000", "65534:0", "65534:root", "root", "0"]


@given(zero=zero_spellings(), other=id_spellings())
def test_every_spelling_of_root_is_refused_at_submit(zero: str, other: str) -> None:
    policy = cj.SecurityPolicy()
    for user in (zero, f"{zero}:{other}", f"{other}:{zero}", f"{other}:root", "root"):
        with pytest.raises(cj.PolicyViolation, match=r"^user=.* refused: .*allow_root=False"):
            policy.apply(cj.JobSpec("alpine", user=user))
    assert cj.SecurityPolicy(allow_root=True).apply(cj.JobSpec("alpine", user=zero)).user == zero


@given(user=id_spellings() | user_names(), group=st.none() | id_spellings() | user_names())
def test_other_users_pass_submit_as_written(user: str, group: str | None) -> None:
    # Names (and a uid without a group) are resolved in the image at launch.
    text = user if group is None else f"{user}:{group}"
    assert cj.SecurityPolicy().apply(cj.JobSpec("alpine", user=text)).user == text


@pytest.mark.parametrize("user", [":", ":65534", "65534:", "1:2:3", " 0", "65534 ", "4294967296"])
@pytest.mark.parametrize("allow_root", [False, True])
def test_users_docker_would_read_oddly_are_refused(user: str, allow_root: bool) -> None:
    with pytest.raises(cj.InvalidJobSpec, match=r"^user=.* cannot be used: "):
        cj.SecurityPolicy(allow_root=allow_root).apply(cj.JobSpec("alpine", user=user))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"default_user": "0"},
        {"default_user": "+0:65534"},
        {"default_user": "65534:root"},
        {"default_user": " 65534"},
        {"default_user": "65534:"},
    ],
)
def test_a_policy_whose_default_user_is_root_or_odd_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="SecurityPolicy"):
        cj.SecurityPolicy(**kwargs)


def test_a_policy_that_allows_root_may_default_to_it() -> None:
    assert cj.SecurityPolicy(allow_root=True, default_user="root").default_user == "root"


@pytest.mark.docker
@pytest.mark.parametrize("user", ISSUE_SPELLINGS)
async def test_issue_spellings_of_root_are_refused_at_submit_on_a_real_host(
    manager: cj.JobManager, image: str, user: str
) -> None:
    with pytest.raises(cj.PolicyViolation, match=rf"^user={re.escape(repr(user))} refused"):
        await manager.submit(cj.JobSpec(image, ["id"], user=user))
    assert await manager.list_jobs() == []


@pytest.mark.docker
def test_the_cli_refuses_root_spellings(image: str, no_leftovers: None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "containerjobs", "run", "--user", "00", image, "id"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "user='00' refused: '00' is uid 0 (root)" in done.stderr
    assert done.stdout == ""


# An image whose /etc/passwd and /etc/group turn names into root in the ways Docker
# reads them: a uid that is 2**32, one out of int64's range, one that is not a number.
QUIRKY_PASSWD = """root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/sh
toor:x:0:0::/:/bin/sh
wrap:x:4294967296:65534::/:/bin/sh
clamp:x:-99999999999999999999:65534::/:/bin/sh
word:x:zero:65534::/:/bin/sh
staff:x:4000:0::/:/bin/sh
member:x:4001:4001::/:/bin/sh
padded:x:4002:4002::/:/bin/sh
commented:x:4003:4003::/:/bin/sh
plain:x:4004:4004::/:/bin/sh
"""
QUIRKY_GROUP = """root:x:0:
nobody:x:65534:
wheel:x:0:member
  wheel2:x:0:other,padded  
#wheel3:x:0:commented
team:x:4242:plain
"""
QUIRKY_ROOTS = ["toor", "wrap", "clamp", "word", "staff", "member", "padded", "commented",
                "nobody:wheel", "4242"]
QUIRKY_USERS = ["nobody", "plain", "plain:team", "65534", "member:4001", "4004:4004"]


@pytest.fixture(scope="module")
def quirky_image(testbed: Bed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("quirky")
    (folder / "passwd").write_text(QUIRKY_PASSWD)
    (folder / "group").write_text(QUIRKY_GROUP)
    tag = f"containerjobs-test/quirky-users:{uuid.uuid4().hex[:12]}"
    container = testbed.docker("create", testbed.image, "true").strip()
    try:
        for name in ("passwd", "group"):
            testbed.docker("cp", str(folder / name), f"{container}:/etc/{name}")
        testbed.docker("commit", container, tag)
    finally:
        testbed.docker("rm", "-f", container)
    yield tag
    testbed.docker("rmi", tag)


@pytest.mark.docker
async def test_users_that_the_image_makes_root_are_refused_at_launch(
    manager: cj.JobManager, quirky_image: str
) -> None:
    jobs = await manager.submit_many(
        cj.JobSpec(quirky_image, ["id"], user=user) for user in QUIRKY_ROOTS
    )
    for user, job in zip(QUIRKY_ROOTS, jobs, strict=True):
        done = await manager.wait(job.id, timeout=60)
        assert done.status is cj.JobStatus.FAILED, (user, done.stdout)
        assert done.stdout == "" and done.exit_code is None
        assert done.error is not None
        assert done.error.startswith(f"user={user!r} on image {quirky_image!r} refused"), done.error
        assert "root" in done.error and "give " in done.error


@pytest.mark.docker
async def test_users_that_the_image_makes_root_would_really_run_as_root(
    local_host: cj.DockerHost, quirky_image: str, no_leftovers: None
) -> None:
    # The refusals above are not guesses: with root allowed, Docker runs each user
    # with the ids that _users.resolve predicts under one of the two readings of
    # /etc/group that Docker versions have used, and each refused user has a 0 there.
    passwd, group = QUIRKY_PASSWD.encode(), QUIRKY_GROUP.encode()
    users = QUIRKY_ROOTS + QUIRKY_USERS
    policy = cj.SecurityPolicy(allow_root=True)
    async with cj.JobManager(hosts=[local_host], policy=policy) as manager:
        jobs = await manager.submit_many(
            cj.JobSpec(quirky_image, "id -u; id -g; id -G", user=user) for user in users
        )
        for user, job in zip(users, jobs, strict=True):
            done = await manager.wait(job.id, timeout=60)
            assert done.status is cj.JobStatus.COMPLETED, (user, done.error)
            uid, gid, groups = done.stdout.splitlines()
            ran = (int(uid), int(gid), {int(g) for g in groups.split()})
            predicted = [
                (who.uid, who.gid, {who.gid, *who.supplementary})
                for who in (
                    resolve(parse_user_spec(user), passwd, group, trim_group=trim)
                    for trim in (True, False)
                )
            ]
            assert ran in predicted, (user, ran, predicted)
            refused = any(0 in (u, g, *others) for u, g, others in predicted)
            assert refused == (user in QUIRKY_ROOTS), (user, predicted)


@pytest.mark.docker
async def test_named_and_numeric_users_run_as_themselves(
    manager: cj.JobManager, image: str, quirky_image: str
) -> None:
    cases = [
        (image, "nobody", "uid=65534(nobody) gid=65534(nobody) groups=65534(nobody)"),
        (image, "4242:4242", "uid=4242 gid=4242 groups=4242"),
        (quirky_image, "plain", "uid=4004(plain) gid=4004 groups=4004,4242(team)"),
    ]
    for where, user, expected in cases:
        done = await manager.run(cj.JobSpec(where, ["id"], user=user), timeout=60)
        assert (done.status, done.stdout) == (cj.JobStatus.COMPLETED, expected + "\n"), done.error


@pytest.mark.docker
async def test_a_uid_without_group_or_entry_is_refused_as_it_would_run_with_gid_0(
    manager: cj.JobManager, image: str
) -> None:
    done = await manager.run(cj.JobSpec(image, ["id"], user="4242"), timeout=60)
    assert done.status is cj.JobStatus.FAILED and done.stdout == ""
    assert done.error is not None and "gid 0" in done.error and "'4242:4242'" in done.error


@pytest.mark.docker
async def test_an_unknown_name_fails_clearly(manager: cj.JobManager, image: str) -> None:
    done = await manager.run(cj.JobSpec(image, ["id"], user="bob"), timeout=60)
    assert done.status is cj.JobStatus.FAILED
    assert done.error is not None and "'bob' is not in the image's /etc/passwd" in done.error


@pytest.mark.docker
async def test_a_job_with_mounts_must_give_a_numeric_user(
    local_host: cj.DockerHost, image: str, tmp_path: Path, no_leftovers: None
) -> None:
    # Docker resolves names beneath the mounts, where the archive endpoint cannot see.
    (tmp_path / "data").mkdir()
    os.chmod(tmp_path, 0o755)
    policy = cj.SecurityPolicy(allowed_mount_sources=[str(tmp_path)])
    mounts = [cj.Mount(str(tmp_path / "data"), "/data")]
    async with cj.JobManager(hosts=[local_host], policy=policy) as manager:
        named = await manager.run(cj.JobSpec(image, ["id"], user="nobody", mounts=mounts))
        numeric = await manager.run(cj.JobSpec(image, ["id"], user="65534:65534", mounts=mounts))
    assert named.status is cj.JobStatus.FAILED
    assert named.error is not None and "mounts must give a numeric user:group" in named.error
    assert numeric.status is cj.JobStatus.COMPLETED


@pytest.mark.docker
def test_the_cli_reports_a_user_the_image_makes_root(
    quirky_image: str, no_leftovers: None
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "containerjobs", "run", "--user", "toor", quirky_image, "id"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 125 and done.stdout == ""
    assert "makes 'toor' uid 0 (root)" in done.stderr


# --- limits Docker or Linux would only refuse at start -------------------------------


@pytest.mark.parametrize(
    "kwargs", [{"default_memory_mb": 5}, {"max_retries": -1}, {"max_environment_bytes": 0}]
)
def test_a_policy_with_inconsistent_limits_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="SecurityPolicy"):
        cj.SecurityPolicy(**kwargs)


def test_memory_below_dockers_minimum_is_refused_at_submit() -> None:
    with pytest.raises(cj.InvalidJobSpec, match=r"memory_limit_mb=5 .*minimum of 6 MB"):
        cj.SecurityPolicy().apply(cj.JobSpec("alpine", memory_limit_mb=5))
    assert cj.SecurityPolicy().apply(cj.JobSpec("alpine", memory_limit_mb=6)).memory_limit_mb == 6


@pytest.mark.docker
async def test_the_smallest_memory_docker_allows_runs(manager: cj.JobManager, image: str) -> None:
    with pytest.raises(cj.InvalidJobSpec, match="memory_limit_mb"):
        await manager.submit(cj.JobSpec(image, ["true"], memory_limit_mb=5))
    done = await manager.run(cj.JobSpec(image, ["true"], memory_limit_mb=6), timeout=60)
    assert done.status is cj.JobStatus.COMPLETED, done.error
    assert len(await manager.list_jobs()) == 1


def test_retries_are_bounded_by_the_policy() -> None:
    with pytest.raises(cj.PolicyViolation, match=r"^max_retries=10{30} refused: .* maximum is 10$"):
        cj.SecurityPolicy().apply(cj.JobSpec("alpine", max_retries=10**30))
    assert cj.SecurityPolicy().apply(cj.JobSpec("alpine", max_retries=10)).max_retries == 10
    loose = cj.SecurityPolicy(max_retries=100)
    assert loose.apply(cj.JobSpec("alpine", max_retries=50)).max_retries == 50


def test_one_variable_above_linuxs_limit_is_refused_without_its_value() -> None:
    policy = cj.SecurityPolicy()
    # "K=" + value + NUL: 131072 bytes is the most exec takes.
    fits = "v" * (131072 - 3)
    assert policy.apply(cj.JobSpec("alpine", environment={"K": fits})).environment["K"] == fits
    secret = "s3cret" + "v" * (131072 - 8)
    with pytest.raises(cj.PolicyViolation) as refused:
        policy.apply(cj.JobSpec("alpine", environment={"K": secret}))
    message = str(refused.value)
    assert message.startswith("environment['K'] refused: it takes 131073 bytes")
    assert "MAX_ARG_STRLEN" in message and "s3cret" not in message


def test_the_environment_is_bounded_with_the_template_merged_in() -> None:
    policy = cj.SecurityPolicy(max_environment_bytes=1000)
    template = {"FROM_TEMPLATE": "t-secret" * 70}
    with pytest.raises(cj.PolicyViolation) as refused:
        policy.apply(
            cj.JobSpec("alpine", environment={"OWN": "o-secret" * 70}), template=template
        )
    message = str(refused.value)
    # 13 + 1 + 560 + 1 for the template's variable, 3 + 1 + 560 + 1 for the spec's.
    assert message.startswith("environment refused: its 2 variables take 1140 bytes")
    assert "max_environment_bytes=1000" in message
    assert "'FROM_TEMPLATE'" in message and "'OWN'" in message
    assert "secret" not in message
    policy.apply(cj.JobSpec("alpine", environment={"OWN": "x" * 900}))


def test_a_thirty_megabyte_environment_is_refused_at_submit() -> None:
    policy = cj.SecurityPolicy()
    with pytest.raises(cj.PolicyViolation, match=r"^environment\['BLOB'\] refused"):
        policy.apply(cj.JobSpec("alpine", environment={"BLOB": "x" * 30_000_000}))
    many = {f"VAR{i}": "x" * 100_000 for i in range(11)}
    with pytest.raises(cj.PolicyViolation, match=r"^environment refused: its 11 variables"):
        policy.apply(cj.JobSpec("alpine", environment=many))


# --- secrets in templates and in the CLI's errors ------------------------------------


async def test_templates_show_variable_names_but_no_values(client: cj.JobManager) -> None:
    text = "API_TOKEN=tok-7e2d-secret\n# OLD_TOKEN=tok-0000-secret\nREGION=eu\n"
    await client.save_template(cj.EnvironmentTemplate("prod", text, description="prod keys"))
    for shown in (
        repr(await client.get_template("prod")),
        str(await client.get_template("prod")),
        repr(await client.list_templates()),
    ):
        assert "secret" not in shown and "'eu'" not in shown
        assert "'API_TOKEN': '***'" in shown and "'REGION': '***'" in shown
        assert "name='prod'" in shown and "description='prod keys'" in shown


@pytest.mark.parametrize("argument", ["tok-7e2d-secret", "=tok-7e2d-secret"])
def test_a_mistyped_env_option_does_not_echo_the_value(
    argument: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "-e", argument, "alpine", "true"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "expected KEY=VALUE" in err and "tok-7e2d" not in err
