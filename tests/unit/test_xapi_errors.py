"""XAPI's error codes as the contract's errors (drivers/xapi/errors.py): the user sees the
pool, what was being done, XAPI's code and its parameters."""

from __future__ import annotations

import pytest

from dockvisor import errors
from dockvisor.drivers.xapi.errors import XapiRefused, translate


@pytest.mark.parametrize(
    ("details", "kind"),
    [
        (["VM_BAD_POWER_STATE", "OpaqueRef:1", "halted", "running"], errors.BadPowerState),
        (["OPERATION_NOT_ALLOWED", "VM is a snapshot"], errors.BadPowerState),
        (["HANDLE_INVALID", "VM", "OpaqueRef:9"], errors.NotFound),
        (["UUID_INVALID", "VM", "0000"], errors.NotFound),
        (["LICENCE_RESTRICTION", "Live_set_vcpus"], errors.Unsupported),
        (["MEMORY_CONSTRAINT_VIOLATION_ORDER"], errors.InvalidInput),
        (["SR_FULL", "1073741824", "0"], errors.OutOfCapacity),
        (["HOST_NOT_ENOUGH_FREE_MEMORY", "2147483648", "1024"], errors.OutOfCapacity),
        (["OTHER_OPERATION_IN_PROGRESS", "VM", "OpaqueRef:1", "clone", "t"], errors.Busy),
        (["SESSION_AUTHENTICATION_FAILED", "root", "bad password"], errors.HypervisorUnreachable),
        (["SOMETHING_NEW", "x"], XapiRefused),
    ],
)
def test_codes_become_the_contracts_errors(details: list[str], kind: type[Exception]) -> None:
    error = translate("xapi://pool1", "starting VM web", details)
    assert type(error) is kind
    text = str(error)
    assert text.startswith("pool xapi://pool1: starting VM web: XAPI " + details[0])
    for param in details[1:]:
        assert param in text
    assert error.xapi_code == details[0]  # type: ignore[attr-defined]
