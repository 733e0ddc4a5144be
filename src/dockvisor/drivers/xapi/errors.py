"""XAPI's error codes as the contract's typed errors.

A XAPI failure is a list: its code, then the code's parameters (ocaml/xapi-consts/
api_errors.ml names them; ocaml/idl/datamodel*.ml says which call raises which). The
user sees the pool, what dockvisor was doing, XAPI's own code and its parameters, e.g.

    pool xapi://xcp1: starting VM web: XAPI VM_BAD_POWER_STATE (expected halted, actual running)
"""

from __future__ import annotations

import http.client
import ssl
import xmlrpc.client
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import XenAPI

from dockvisor import errors

__all__ = ["XapiRefused", "describe", "translate", "xapi_errors"]


class XapiRefused(errors.HypervisorError):
    """A XAPI failure with no closer meaning in the contract; `code` and `params` kept."""


# The contract's error for each code (the rest: HypervisorError).
_KINDS: dict[str, type[errors.DockvisorError]] = {
    "HANDLE_INVALID": errors.NotFound,
    "UUID_INVALID": errors.NotFound,
    "VM_BAD_POWER_STATE": errors.BadPowerState,
    "VM_IS_TEMPLATE": errors.BadPowerState,
    "VM_IS_SNAPSHOT": errors.BadPowerState,
    "OPERATION_NOT_ALLOWED": errors.BadPowerState,
    "OPERATION_BLOCKED": errors.BadPowerState,
    "VDI_IN_USE": errors.BadPowerState,
    "OTHER_OPERATION_IN_PROGRESS": errors.Busy,
    "LICENCE_RESTRICTION": errors.Unsupported,
    "FEATURE_RESTRICTED": errors.Unsupported,
    "VM_LACKS_FEATURE": errors.Unsupported,
    "VM_MISSING_PV_DRIVERS": errors.Unsupported,
    "SR_OPERATION_NOT_SUPPORTED": errors.Unsupported,
    "MEMORY_CONSTRAINT_VIOLATION": errors.InvalidInput,
    "MEMORY_CONSTRAINT_VIOLATION_ORDER": errors.InvalidInput,
    "MEMORY_CONSTRAINT_VIOLATION_MAXPIN": errors.Unsupported,
    "INVALID_VALUE": errors.InvalidInput,
    "FIELD_TYPE_ERROR": errors.InvalidInput,
    "SR_FULL": errors.OutOfCapacity,
    # What a full SR answers in practice: the storage manager's error 44, "There is
    # insufficient space" (xapi-project/sm, XE_SR_ERRORCODES.xml; xapi's sm_exec.ml).
    "SR_BACKEND_FAILURE_44": errors.OutOfCapacity,
    # The storage manager's VDISize, error 79 ("VDI Invalid size"): a disk asked
    # smaller than it is, or beyond the largest VHD (xapi-project/sm LVHDSR.py and
    # FileSR.py resize, vhdutil.py validate_and_round_vhd_size).
    "SR_BACKEND_FAILURE_79": errors.InvalidInput,
    "HOST_NOT_ENOUGH_FREE_MEMORY": errors.OutOfCapacity,
    "HOST_NOT_ENOUGH_PCPUS": errors.OutOfCapacity,
    "SESSION_AUTHENTICATION_FAILED": errors.HypervisorUnreachable,
    "HOST_IS_SLAVE": errors.HypervisorUnreachable,
    "EVENTS_LOST": errors.HypervisorError,
}


def describe(details: Sequence[object]) -> str:
    """`CODE (param, param)` as XAPI gave it."""
    code = str(details[0]) if details else "UNKNOWN_ERROR"
    params = ", ".join(str(p) for p in details[1:])
    return f"XAPI {code} ({params})" if params else f"XAPI {code}"


def translate(pool: str, doing: str, details: Sequence[object]) -> errors.DockvisorError:
    code = str(details[0]) if details else "UNKNOWN_ERROR"
    kind = _KINDS.get(code, XapiRefused)
    error = kind(f"pool {pool}: {doing}: {describe(details)}")
    error.xapi_code = code  # type: ignore[attr-defined]
    error.xapi_params = [str(p) for p in details[1:]]  # type: ignore[attr-defined]
    return error


@contextmanager
def xapi_errors(pool: str, doing: str) -> Iterator[None]:
    """Turn what the SDK and the network raise into the contract's errors."""
    try:
        yield
    except XenAPI.Failure as exc:
        raise translate(pool, doing, list(exc.details)) from None
    except ssl.SSLCertVerificationError as exc:
        raise errors.HypervisorUnreachable(
            f"pool {pool}: its HTTPS certificate is not trusted ({exc.verify_message}); "
            "give the pool's certificate (PEM) to trust it: `host add --certificate FILE`, or "
            "DOCKVISOR_HOST_CERTIFICATE for the CLI without a server"
        ) from None
    except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as exc:
        raise errors.HypervisorUnreachable(
            f"pool {pool} does not answer ({type(exc).__name__}: {exc}) while {doing}"
        ) from None
    except xmlrpc.client.Fault as exc:
        raise errors.HypervisorError(f"pool {pool}: {doing}: {exc.faultString}") from None
