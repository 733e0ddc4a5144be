"""Which hypervisor URIs a host may be added with (domain/host_uri.py)."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from dockvisor.domain.host_uri import check_host_uri
from dockvisor.errors import InvalidInput

ACCEPTED = [
    "qemu:///system",
    "qemu:///session",
    "qemu+unix:///system",
    "xen:///system",
    "qemu+ssh://root@node2.example/system",
    "qemu+ssh://node2.example:2222/system",
    "qemu+ssh://admin@[2001:db8::7]:22/system",
    "qemu+tls://node2.example/system",
    "xen+ssh://node3/system",
    "test:///default",
    "xapi://pool1.example",
    "xapi://192.0.2.10:8443",
    "https://pool1.example/",
    "https://[2001:db8::9]:443",
]

REFUSED = {
    "qemu+ext:///system?command=/tmp/x": "parameters",
    "qemu+ssh://h/system?command=/tmp/x": "parameters",
    "qemu+ssh://h/system?netcat=/tmp/nc": "parameters",
    "qemu+ssh://h/system?keyfile=/etc/shadow": "parameters",
    "qemu+unix:///system?socket=/tmp/evil.sock": "parameters",
    "qemu+tls://h/system?pkipath=/root": "parameters",
    "qemu+tls://h/system?no_verify=1": "parameters",
    "qemu+ext:///system": "transport",
    "qemu+tcp://h/system": "transport",
    "qemu+libssh2://h/system": "transport",
    "test:///etc/shadow": "test suite only",
    "test:///default#x": "parameters",
    "test+ssh://h/default": "no transport",
    "vbox:///session": "unknown hypervisor",
    "https://root:secret@pool1.example": "not in the URI",
    "xapi://root@pool1.example": "not in the URI",
    "xapi://pool1.example/jsonrpc": "no path",
    "xapi+ssh://pool1.example": "without a transport",
    "xapi://pool1.example?verify=0": "parameters",
    "xapi://": "DNS name or an address",
    "xapi://pool1.example:99999": "port",
    "lxc:///": "unknown hypervisor",
    "qemu:///embed?root=/tmp": "parameters",
    "qemu:///embed": "path must be",
    "qemu://host/system": "ssh or tls",
    "qemu+ssh://-oProxyCommand=x/system": "DNS name",
    "qemu+ssh://-oProxyCommand=x@h/system": "user name",
    "qemu+tls://user@h/system": "ssh only",
    "qemu+ssh://h:99999/system": "port",
    "qemu+ssh:///system": "DNS name",
    "qemu:///system\n": "control characters",
    "qemu+ssh://h /system": "control characters",
    "": "unknown hypervisor",
}


@pytest.mark.parametrize("uri", ACCEPTED)
def test_supported_shapes_are_accepted(uri: str) -> None:
    assert check_host_uri(uri) == uri


@pytest.mark.parametrize(("uri", "why"), REFUSED.items())
def test_other_shapes_are_refused_saying_why(uri: str, why: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_host_uri(uri)
    assert why in str(refused.value)
    assert "supported:" in str(refused.value)


def test_test_hosts_from_files_only_inside_the_test_directory() -> None:
    allowed = PurePosixPath("/srv/test-hosts")
    assert check_host_uri("test:///srv/test-hosts/node.xml", test_files=allowed)
    for uri in (
        "test:///srv/test-hosts/../../etc/shadow",
        "test:///srv/test-hosts/sub/node.xml",
        "test:///etc/shadow",
        "test:///srv/test-hostsX/node.xml",
    ):
        with pytest.raises(InvalidInput):
            check_host_uri(uri, test_files=allowed)
