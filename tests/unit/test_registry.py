"""The adapter families, chosen by URI scheme (drivers/registry.py)."""

from __future__ import annotations

import pytest

from dockvisor.drivers.registry import HostCredentials, family_of, open_driver
from dockvisor.errors import InvalidInput


@pytest.mark.parametrize(
    ("uri", "family"),
    [
        ("qemu:///system", "libvirt"),
        ("qemu+ssh://node/system", "libvirt"),
        ("xen:///system", "libvirt"),
        ("test:///default", "libvirt"),
        ("xapi://pool.example", "xapi"),
        ("https://pool.example:443", "xapi"),
    ],
)
def test_each_scheme_has_one_family(uri: str, family: str) -> None:
    assert family_of(uri).name == family
    assert family_of(uri).needs_credentials is (family == "xapi")


def test_an_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(InvalidInput, match=r"unknown hypervisor URI scheme \(known: qemu://"):
        family_of("vbox:///session")


def test_credentials_go_only_where_they_are_needed() -> None:
    secret = HostCredentials("root", "pw")
    with pytest.raises(InvalidInput, match="take no user or password"):
        open_driver("test:///default", secret)
    with pytest.raises(InvalidInput, match="needs a user and a password"):
        open_driver("xapi://pool.example")


def test_credentials_never_show_their_password() -> None:
    shown = repr(HostCredentials("root", "hunter2-secret", "-----BEGIN CERTIFICATE-----"))
    assert "hunter2-secret" not in shown and "root" in shown
