"""Engine levers a user can pick: a job without a network (JobSpec.network_mode) and
a host's OCI runtime (DockerHost.runtime: gVisor's runsc, crun), on the test bed's
real dockerd, where scripts/testbed registers runsc and crun."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator

import attrs
import pytest

import containerjobs as cj
from containerjobs.executors import DockerExecutor
from tests.conftest import LOCAL_SOCKET, Bed

docker = pytest.mark.docker

# The names of a job's network interfaces, one a line, sorted.
INTERFACES = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort"


def gateway(bed: Bed) -> str:
    """The default bridge's gateway: the host, as a bridged container sees it."""
    named = bed.docker(
        "network", "inspect", "bridge", "--format", "{{(index .IPAM.Config 0).Gateway}}"
    ).strip()
    if named:
        return named
    # A daemon that found its bridge already there records no gateway in its IPAM
    # config: the bridge's own address is the gateway then.
    name = '{{index .Options "com.docker.network.bridge.name"}}'
    bridge = bed.docker("network", "inspect", "bridge", "--format", name).strip() or "docker0"
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", bridge], capture_output=True, text=True, check=True
    ).stdout
    return shown.split(" inet ")[1].split("/")[0]


def cgroup_hybrid() -> bool:
    # cgroup v1 controllers with a cgroup v2 hierarchy beside them (systemd's
    # "hybrid" layout), which Debian's crun 1.8 refuses.
    return os.path.ismount("/sys/fs/cgroup/unified") and not os.path.exists(
        "/sys/fs/cgroup/cgroup.controllers"
    )


@pytest.fixture
async def runsc(no_leftovers: None) -> AsyncIterator[cj.JobManager]:
    host = cj.DockerHost("gvisor", LOCAL_SOCKET, max_concurrent_jobs=4, runtime="runsc")
    async with cj.JobManager(hosts=[host]) as manager:
        yield manager


# --- specs and policy, without Docker -------------------------------------------------


def test_network_mode_defaults_to_the_engines_default() -> None:
    assert cj.JobSpec("busybox").network_mode is None


@pytest.mark.parametrize("mode", ["none", "bridge"])
def test_network_mode_takes_none_and_bridge(mode: str) -> None:
    assert cj.JobSpec("busybox", network_mode=mode).network_mode == mode


@pytest.mark.parametrize("mode", ["host", "container:abc", "None", "", "default", "mynet"])
def test_other_network_modes_are_refused_naming_the_field(mode: str) -> None:
    with pytest.raises(cj.InvalidJobSpec, match=r"JobSpec\.network_mode must be None or one of"):
        cj.JobSpec("busybox", network_mode=mode)


def test_network_mode_must_be_a_str() -> None:
    with pytest.raises(TypeError, match=r"JobSpec\.network_mode must be a str or None"):
        cj.JobSpec("busybox", network_mode=0)  # type: ignore[arg-type]


def test_no_network_with_networks_is_refused() -> None:
    with pytest.raises(cj.InvalidJobSpec, match=r"network_mode='none' cannot go with networks"):
        cj.JobSpec("busybox", network_mode="none", networks=["backend"])


def test_bridge_with_networks_is_accepted() -> None:
    spec = cj.JobSpec("busybox", network_mode="bridge", networks=["backend"])
    assert spec.network_mode == "bridge" and spec.networks[0].name == "backend"


def test_the_policy_default_fills_a_spec_without_one() -> None:
    policy = cj.SecurityPolicy(default_network_mode="none")
    assert policy.apply(cj.JobSpec("busybox")).network_mode == "none"
    assert cj.SecurityPolicy().apply(cj.JobSpec("busybox")).network_mode is None


def test_a_specs_own_network_mode_overrides_the_policy() -> None:
    policy = cj.SecurityPolicy(default_network_mode="none")
    assert policy.apply(cj.JobSpec("busybox", network_mode="bridge")).network_mode == "bridge"
    assert (
        cj.SecurityPolicy(default_network_mode="bridge")
        .apply(cj.JobSpec("busybox", network_mode="none"))
        .network_mode
        == "none"
    )


def test_a_spec_with_networks_takes_its_network_from_them() -> None:
    # A policy default of "none" must not turn a spec naming networks invalid.
    policy = cj.SecurityPolicy(default_network_mode="none")
    applied = policy.apply(cj.JobSpec("busybox", networks=["backend"]))
    assert applied.network_mode is None
    assert [net.name for net in applied.networks] == ["backend"]


@pytest.mark.parametrize("mode", ["host", "", "None"])
def test_the_policy_refuses_an_unknown_default(mode: str) -> None:
    with pytest.raises(ValueError, match="default_network_mode must be None or one of"):
        cj.SecurityPolicy(default_network_mode=mode)


def test_the_network_mode_reaches_the_launch_request_and_the_host_config() -> None:
    policy = cj.SecurityPolicy(default_network_mode="none")
    job = cj.Job(id="j1", spec=policy.apply(cj.JobSpec("busybox", command="true")))
    request = policy.launch_request(job, labels={})
    assert request.network_mode == "none"
    host = cj.DockerHost("h", LOCAL_SOCKET, runtime="runsc")
    config = DockerExecutor(host)._container_config(request)
    assert config["HostConfig"]["NetworkMode"] == "none"
    assert config["HostConfig"]["Runtime"] == "runsc"
    assert "NetworkingConfig" not in config


def test_without_levers_the_host_config_says_nothing_of_them() -> None:
    policy = cj.SecurityPolicy()
    job = cj.Job(id="j1", spec=policy.apply(cj.JobSpec("busybox", command="true")))
    config = DockerExecutor(cj.DockerHost("h", LOCAL_SOCKET))._container_config(
        policy.launch_request(job, labels={})
    )
    assert "NetworkMode" not in config["HostConfig"]
    assert "Runtime" not in config["HostConfig"]


def test_bridge_with_networks_keeps_the_bridge_and_connects_the_networks_later() -> None:
    policy = cj.SecurityPolicy()
    spec = cj.JobSpec("busybox", network_mode="bridge", networks=["a", "b"])
    job = cj.Job(id="j1", spec=policy.apply(spec))
    config = DockerExecutor(cj.DockerHost("h", LOCAL_SOCKET))._container_config(
        policy.launch_request(job, labels={})
    )
    assert config["HostConfig"]["NetworkMode"] == "bridge"
    assert "NetworkingConfig" not in config


@pytest.mark.parametrize("runtime", ["", "  ", 3])
def test_a_host_runtime_must_be_a_name(runtime: object) -> None:
    with pytest.raises(ValueError, match="runtime must be None or a runtime's name"):
        cj.DockerHost("h", LOCAL_SOCKET, runtime=runtime)  # type: ignore[arg-type]


def test_a_host_runtime_defaults_to_the_daemons() -> None:
    assert cj.DockerHost("h", LOCAL_SOCKET).runtime is None
    assert not any(field.name == "runtime" for field in attrs.fields(cj.SwarmHost))


# --- network_mode on the daemon -------------------------------------------------------


@docker
async def test_a_job_without_network_has_only_loopback(
    manager: cj.JobManager, image: str, testbed: Bed
) -> None:
    job = await manager.run(
        cj.JobSpec(
            image=image,
            command=f"{INTERFACES}; nc -w 3 {gateway(testbed)} 9 </dev/null",
            network_mode="none",
        ),
        timeout=60,
    )
    assert job.stdout == "lo\n"
    assert job.stderr == (
        f"nc: can't connect to remote host ({gateway(testbed)}): Network is unreachable\n"
    )
    assert job.exit_code == 1
    assert job.spec.network_mode == "none"


@docker
async def test_a_default_job_has_eth0_and_reaches_the_gateway(
    manager: cj.JobManager, image: str, testbed: Bed
) -> None:
    job = await manager.run(
        cj.JobSpec(image=image, command=f"{INTERFACES}; nc -w 3 {gateway(testbed)} 9 </dev/null"),
        timeout=60,
    )
    assert job.stdout == "eth0\nlo\n"
    # Refused by the host: the packet got there (nothing listens on port 9).
    assert job.stderr == (
        f"nc: can't connect to remote host ({gateway(testbed)}): Connection refused\n"
    )
    assert job.spec.network_mode is None


@docker
async def test_the_policy_default_runs_and_is_recorded(
    local_host: cj.DockerHost, image: str, no_leftovers: None
) -> None:
    policy = cj.SecurityPolicy(default_network_mode="none")
    async with cj.JobManager(hosts=[local_host], policy=policy) as manager:
        submitted = await manager.submit(cj.JobSpec(image=image, command=INTERFACES))
        assert submitted.spec.network_mode == "none"  # stored as it will run
        done = await manager.wait(submitted.id, timeout=60)
        assert done.status is cj.JobStatus.COMPLETED
        assert done.stdout == "lo\n"
        assert (await manager.get(done.id)).spec.network_mode == "none"
        override = await manager.run(
            cj.JobSpec(image=image, command=INTERFACES, network_mode="bridge"), timeout=60
        )
        assert override.stdout == "eth0\nlo\n"
        assert override.spec.network_mode == "bridge"


@docker
async def test_a_swarm_host_refuses_a_job_without_network(
    image: str, no_services: None
) -> None:
    policy = cj.SecurityPolicy(allow_unenforced=("no-new-privileges",))
    host = cj.SwarmHost("swarm", LOCAL_SOCKET)
    async with cj.JobManager(hosts=[host], policy=policy) as manager:
        job = await manager.run(
            cj.JobSpec(image=image, command="true", network_mode="none", max_retries=2),
            timeout=60,
        )
    assert job.status is cj.JobStatus.FAILED
    assert job.attempts == 1
    assert job.error is not None
    assert "network_mode='none' cannot run on Swarm host 'swarm'" in job.error


# --- runtimes on the daemon -----------------------------------------------------------


@docker
async def test_a_job_on_runsc_runs_in_gvisor(runsc: cj.JobManager, image: str) -> None:
    job = await runsc.run(
        cj.JobSpec(
            image=image,
            command="dmesg | head -n 1 | sed 's/^\\[[^]]*\\] //'; echo out; echo err >&2; exit 7",
        ),
        timeout=60,
    )
    assert job.status is cj.JobStatus.FAILED
    assert job.exit_code == 7
    assert job.stdout == "Starting gVisor...\nout\n"
    assert job.stderr == "err\n"
    assert job.host == "gvisor"
    assert job.attempts == 1


@docker
async def test_the_hardening_holds_under_runsc(runsc: cj.JobManager, image: str) -> None:
    # What gVisor reports of it: the user, a read-only root with a writable /tmp, no
    # capabilities. (It shows no NoNewPrivs line in /proc/self/status.)
    job = await runsc.run(
        cj.JobSpec(
            image=image,
            command=(
                "id -u; id -g; awk '$2 == \"/\" {split($4, o, \",\"); print o[1]}' /proc/mounts; "
                "touch /tmp/x && echo tmp writable; "
                "grep -E '^Cap(Eff|Bnd)' /proc/self/status | tr -d '\\t'"
            ),
        ),
        timeout=60,
    )
    assert job.status is cj.JobStatus.COMPLETED, job.error
    assert job.stdout == (
        "65534\n65534\nro\ntmp writable\nCapEff:0000000000000000\nCapBnd:0000000000000000\n"
    )


@docker
async def test_runsc_without_network(runsc: cj.JobManager, image: str) -> None:
    job = await runsc.run(
        cj.JobSpec(image=image, command=INTERFACES, network_mode="none"), timeout=60
    )
    assert job.status is cj.JobStatus.COMPLETED, job.error
    assert job.stdout == "lo\n"


@docker
async def test_an_unknown_runtime_fails_the_job_once_naming_it(
    image: str, no_leftovers: None
) -> None:
    host = cj.DockerHost("odd", LOCAL_SOCKET, runtime="no-such-runtime")
    async with cj.JobManager(hosts=[host]) as manager:
        job = await manager.run(
            cj.JobSpec(image=image, command="true", max_retries=2), timeout=60
        )
    assert job.status is cj.JobStatus.FAILED
    assert job.attempts == 1  # not retried: every attempt would fail the same
    assert job.container_id is None
    assert job.error is not None
    assert "host 'odd' names runtime 'no-such-runtime', which its daemon does not know" in (
        job.error
    )
    assert "Unknown runtime specified no-such-runtime" in job.error


@docker
async def test_crun_on_this_machine(image: str, no_leftovers: None) -> None:
    host = cj.DockerHost("crun", LOCAL_SOCKET, runtime="crun")
    async with cj.JobManager(hosts=[host]) as manager:
        job = await manager.run(cj.JobSpec(image=image, command="echo hi"), timeout=60)
    if not cgroup_hybrid():
        assert job.status is cj.JobStatus.COMPLETED, job.error
        assert job.stdout == "hi\n"
        return
    # Debian's crun 1.8 cannot start a container under cgroup v1's hybrid layout:
    # the start fails at once, the error names the runtime, nothing is left behind.
    assert job.status is cj.JobStatus.FAILED
    assert job.attempts == 1
    assert job.exit_code is None
    assert job.stdout == ""
    assert job.error is not None
    assert "with runtime 'crun' on host 'crun' failed" in job.error
    assert "cgroups in hybrid mode not supported" in job.error
