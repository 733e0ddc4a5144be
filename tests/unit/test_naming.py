import pytest

from dockvisor.domain.naming import (
    validate_snapshot_name,
    validate_template_name,
    validate_vm_name,
)
from dockvisor.errors import InvalidInput


@pytest.mark.parametrize("name", ["web", "a", "9", "web-1", "a1b2", "x" * 63, "a-b-c"])
def test_dns_labels_are_valid_vm_names(name):
    assert validate_vm_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "Web", "web_1", "-web", "web-", "web.local", "x" * 64, "we b", "wéb"],
)
def test_other_vm_names_are_refused_naming_the_value(name):
    with pytest.raises(InvalidInput) as info:
        validate_vm_name(name)
    assert repr(name) in str(info.value)
    assert str(info.value).startswith("VM name ")


def test_template_names_follow_vm_rules_but_say_template():
    assert validate_template_name("docker-ready") == "docker-ready"
    with pytest.raises(InvalidInput, match=r"^template name 'Docker_Ready' is not valid"):
        validate_template_name("Docker_Ready")


@pytest.mark.parametrize("name", ["before-upgrade", "Snap_1", "v1.2.3", "0", "x" * 64, "A.b-C_d"])
def test_valid_snapshot_names(name):
    assert validate_snapshot_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "_x", "a b", "a/b", "x" * 65, "$(rm)"])
def test_invalid_snapshot_names_are_refused_naming_the_value(name):
    with pytest.raises(InvalidInput) as info:
        validate_snapshot_name(name)
    assert f"snapshot name {name!r} is not valid" in str(info.value)


def test_a_trailing_newline_does_not_sneak_into_a_name():
    # `$` in a regex also matches before a final "\n"; a name is one line.
    with pytest.raises(InvalidInput):
        validate_vm_name("web\n")
    with pytest.raises(InvalidInput):
        validate_template_name("base\n")
    with pytest.raises(InvalidInput):
        validate_snapshot_name("snap\n")


def test_a_name_shaped_like_a_vm_id_is_refused() -> None:
    with pytest.raises(InvalidInput, match="shaped like a VM id"):
        validate_vm_name("0b1f2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d")
    assert validate_vm_name("0b1f2c3d-4e5f") == "0b1f2c3d-4e5f"
