from dockvisor.domain.model import VM, Capability, DiskMode, DockerEndpoint, PowerState
from dockvisor.domain.sizes import GiB


def test_docker_host_for_ipv4_and_names():
    assert DockerEndpoint("127.0.0.1", 41007).docker_host == "tcp://127.0.0.1:41007"
    assert DockerEndpoint("web.local", 2375).docker_host == "tcp://web.local:2375"


def test_docker_host_brackets_ipv6():
    assert DockerEndpoint("::1", 2375).docker_host == "tcp://[::1]:2375"
    assert DockerEndpoint("fe80::1", 2376, tls=True).base_url == "https://[fe80::1]:2376"


def test_base_url_scheme_follows_tls():
    assert DockerEndpoint("10.0.0.5", 2375).base_url == "http://10.0.0.5:2375"
    assert DockerEndpoint("10.0.0.5", 2376, tls=True).base_url == "https://10.0.0.5:2376"


def vm(**pending):
    return VM("web", "uuid", PowerState.RUNNING, 2, 4, GiB, 2 * GiB, "docker-ready",
              DiskMode.LINKED, 8 * GiB, **pending)  # fmt: skip


def test_pending_changes():
    assert not vm().has_pending_changes
    assert vm(pending_vcpus=6).has_pending_changes
    assert vm(pending_max_memory=4 * GiB).has_pending_changes
    assert vm(pending_memory=0).has_pending_changes


def test_capability_names():
    assert Capability.NONE.names() == []
    assert (Capability.LIVE_VCPUS | Capability.LOOPBACK_FORWARD).names() == [
        "live-vcpus",
        "loopback-forward",
    ]
    assert "memory-snapshots" in Capability(~Capability.NONE).names()
