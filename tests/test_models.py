"""Specs, templates and output parsing: validation and parsers, without Docker."""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import containerjobs as cj
from containerjobs._output import clean_output, parse_output
from containerjobs._templates import parse_environment


def test_spec_defaults_and_conversions() -> None:
    spec = cj.JobSpec(image="alpine:3.18", command=["echo", "hi"], networks=["net"],
                      memory_limit_mb=64.0)
    assert spec.command == ("echo", "hi")
    assert spec.networks == (cj.NetworkAttachment("net"),)
    assert spec.memory_limit_mb == 64 and isinstance(spec.memory_limit_mb, int)
    assert spec.pull_policy == "if-not-present"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image": ""},
        {"image": "Not A Reference"},
        {"image": "alpine", "memory_limit_mb": 0},
        {"image": "alpine", "memory_limit_mb": -5},
        {"image": "alpine", "memory_limit_mb": 10.5},
        {"image": "alpine", "cpu_limit": math.nan},
        {"image": "alpine", "cpu_limit": math.inf},
        {"image": "alpine", "timeout_seconds": -1},
        {"image": "alpine", "environment": {"": "x"}},
        {"image": "alpine", "environment": {"A=B": "x"}},
        {"image": "alpine", "environment": {"A\x00": "x"}},
        {"image": "alpine", "environment": {"A": "x\x00y"}},
        {"image": "alpine", "labels": {"": "x"}},
        {"image": "alpine", "pull_policy": "sometimes"},
        {"image": "alpine", "working_directory": "relative/dir"},
        {"image": "alpine", "command": ""},
        {"image": "alpine", "max_retries": -1},
    ],
)
def test_invalid_values_raise_invalid_job_spec(kwargs: dict[str, object]) -> None:
    with pytest.raises(cj.InvalidJobSpec) as refused:
        cj.JobSpec(**kwargs)  # type: ignore[arg-type]
    assert isinstance(refused.value, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image": 5},
        {"image": "alpine", "memory_limit_mb": "64"},
        {"image": "alpine", "cpu_limit": True},
        {"image": "alpine", "environment": {"A": 1}},
        {"image": "alpine", "environment": ["A=1"]},
        {"image": "alpine", "command": 42},
        {"image": "alpine", "command": ["echo", 1]},
        {"image": "alpine", "max_retries": 1.0},
    ],
)
def test_wrong_types_raise_type_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        cj.JobSpec(**kwargs)  # type: ignore[arg-type]


def test_environment_values_stay_out_of_repr() -> None:
    spec = cj.JobSpec(image="alpine", environment={"API_TOKEN": "s3cr3t-value"})
    job = cj.Job(id="x", spec=spec)
    assert "s3cr3t-value" not in repr(spec)
    assert "s3cr3t-value" not in repr(job)
    assert "API_TOKEN" in repr(spec)


def test_status_machine() -> None:
    assert cj.JobStatus.PENDING.can_become(cj.JobStatus.LAUNCHING)
    assert not cj.JobStatus.COMPLETED.can_become(cj.JobStatus.RUNNING)
    assert not cj.JobStatus.PENDING.can_become(cj.JobStatus.COMPLETED)
    job = cj.Job(id="x", spec=cj.JobSpec(image="alpine"))
    with pytest.raises(cj.ContainerJobsError):
        job.advance(cj.JobStatus.COMPLETED)
    assert {s for s in cj.JobStatus if s.is_terminal} == {
        cj.JobStatus.COMPLETED, cj.JobStatus.FAILED, cj.JobStatus.TIMEOUT, cj.JobStatus.CANCELLED
    }
    assert cj.JobStatus("running") is cj.JobStatus.RUNNING and cj.JobStatus.RUNNING == "running"


def test_template_parsing() -> None:
    text = '# c\nexport A=1\nB="two words"\nC=x=y\nA=3\n  D = spaced \n\nE=\'single\'\n'
    assert parse_environment(text) == {
        "A": "3", "B": "two words", "C": "x=y", "D": "spaced", "E": "single"
    }
    with pytest.raises(cj.InvalidJobSpec, match="line 2"):
        parse_environment("A=1\nnot a pair\n")
    with pytest.raises(cj.InvalidJobSpec):
        cj.EnvironmentTemplate("t", "SECRET=hunter2\nbroken")
    assert cj.EnvironmentTemplate("t", "A=1").variables == {"A": "1"}


@given(st.dictionaries(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True),
    st.text(st.characters(blacklist_characters="\n\r\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
            max_size=30).map(str.strip).filter(lambda v: not (v[:1] in "'\"" and v[-1:] == v[:1])),
))
def test_templates_round_trip(variables: dict[str, str]) -> None:
    text = "\n".join(f"{key}={value}" for key, value in variables.items())
    assert parse_environment(text) == variables


def test_template_repr_shows_names_only() -> None:
    template = cj.EnvironmentTemplate(
        "prod", "TOKEN=hunter2\n# OLD_TOKEN=hunter1\nURL=https://x", description="keys"
    )
    assert repr(template) == str(template) == (
        "EnvironmentTemplate(name='prod', variables={'TOKEN': '***', 'URL': '***'}, "
        "description='keys')"
    )


@given(
    st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True), unique=True),
    st.text(st.characters(categories=["L", "N"]), max_size=10),
)
def test_no_template_repr_shows_a_value(keys: list[str], tail: str) -> None:
    text = "\n".join(f"{key}=v4lue-{tail}" for key in keys)
    shown = repr(cj.EnvironmentTemplate("t", text + "\n# OLD=v4lue-old"))
    assert "v4lue-" not in shown
    assert all(f"{key!r}: '***'" in shown for key in keys)


@given(st.text())
def test_template_parser_never_crashes(text: str) -> None:
    try:
        parse_environment(text)
    except cj.InvalidJobSpec:
        pass


def test_clean_output() -> None:
    assert clean_output("\x1b[1;31mred\x1b[0m\n") == "red\n"
    assert clean_output("10%\r50%\r100%\ndone\n") == "100%\ndone\n"
    assert clean_output("windows\r\n") == "windows\n"
    assert clean_output("\x1b]0;title\x07text") == "text"


@given(st.text())
def test_clean_output_has_no_escapes_or_returns(text: str) -> None:
    cleaned = clean_output(text)
    assert "\r" not in cleaned
    assert "\x1b[" not in cleaned or "\x1b[" not in text


def test_parsed_output() -> None:
    assert parse_output('{"a": 1}') == {"a": 1}
    assert parse_output('working...\n{"result": [1, 2]}\n') == {"result": [1, 2]}
    assert parse_output("plain text\n") is None
    assert parse_output("") is None
    job = cj.Job(id="x", spec=cj.JobSpec(image="a"), stdout='\x1b[32m{"ok": true}\x1b[0m\n')
    assert job.clean_output == '{"ok": true}\n' and job.parsed_output == {"ok": True}


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=10,
))
def test_any_json_value_round_trips_through_output(value: object) -> None:
    import json

    assert parse_output("log line\n" + json.dumps(value) + "\n") == value


def test_host_validation() -> None:
    with pytest.raises(ValueError, match="must start with"):
        cj.DockerHost("h", "/var/run/docker.sock")
    with pytest.raises(ValueError, match="max_concurrent_jobs"):
        cj.DockerHost("h", "unix:///x", max_concurrent_jobs=0)
    auth = cj.RegistryAuth("user", "pa55word")
    assert "pa55word" not in repr(cj.DockerHost("h", "unix:///x", registry_auth={"r:5000": auth}))


def test_host_from_env() -> None:
    host = cj.DockerHost.from_env(environ={})
    assert host.url == "unix:///var/run/docker.sock" and host.tls is None
    tls = cj.DockerHost.from_env(environ={"DOCKER_HOST": "tcp://h:2376", "DOCKER_TLS_VERIFY": "1",
                                          "DOCKER_CERT_PATH": "/certs"})
    assert tls.tls is not None and str(tls.tls.ca_cert) == "/certs/ca.pem" and tls.tls.verify
    plain = cj.DockerHost.from_env(environ={"DOCKER_HOST": "tcp://h:2375"})
    assert plain.tls is None


def test_policy_defaults_and_refusals(tmp_path: object) -> None:
    policy = cj.SecurityPolicy()
    spec = policy.apply(cj.JobSpec(image="alpine"))
    assert (spec.memory_limit_mb, spec.cpu_limit, spec.timeout_seconds, spec.user) == (
        512, 1.0, 3600.0, "65534:65534")
    for bad in (
        cj.JobSpec(image="alpine", memory_limit_mb=4096),
        cj.JobSpec(image="alpine", cpu_limit=3),
        cj.JobSpec(image="alpine", timeout_seconds=7200),
        cj.JobSpec(image="alpine", user="root"),
        cj.JobSpec(image="alpine", user="0:0"),
        cj.JobSpec(image="alpine", networks=["host"]),
    ):
        with pytest.raises(cj.PolicyViolation):
            policy.apply(bad)
    strict = attrs.evolve(policy, allowed_registries=["127.0.0.1:5000"])
    with pytest.raises(cj.PolicyViolation, match="registry"):
        strict.apply(cj.JobSpec(image="alpine"))
    strict.apply(cj.JobSpec(image="127.0.0.1:5000/team/tool:1"))
    hub = attrs.evolve(policy, allowed_registries=["docker.io"])
    hub.apply(cj.JobSpec(image="alpine"))


def test_image_and_command_may_be_positional() -> None:
    assert cj.JobSpec("alpine:3.18", "echo hi") == cj.JobSpec(image="alpine:3.18",
                                                            command="echo hi")
    with pytest.raises(TypeError):
        cj.JobSpec("alpine", "echo hi", 64)  # type: ignore[misc]
