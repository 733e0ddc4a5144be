import libvirt
import pytest

from dockvisor import errors
from dockvisor.drivers.libvirt.errors import ERROR_CLASSES, libvirt_errors, translate


def libvirt_error(code, message):
    exc = libvirt.libvirtError(message)
    exc.err = (code, libvirt.VIR_FROM_QEMU, message, libvirt.VIR_ERR_ERROR, "", None, None, 0, 0)
    return exc


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (libvirt.VIR_ERR_NO_DOMAIN, errors.NotFound),
        (libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT, errors.NotFound),
        (libvirt.VIR_ERR_NO_STORAGE_VOL, errors.NotFound),
        (libvirt.VIR_ERR_DOM_EXIST, errors.AlreadyExists),
        (libvirt.VIR_ERR_STORAGE_VOL_EXIST, errors.AlreadyExists),
        (libvirt.VIR_ERR_OPERATION_INVALID, errors.BadPowerState),
        (libvirt.VIR_ERR_NO_SUPPORT, errors.Unsupported),
        (libvirt.VIR_ERR_INVALID_ARG, errors.InvalidInput),
        (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, errors.GuestTimeout),
        (libvirt.VIR_ERR_NO_CONNECT, errors.HypervisorUnreachable),
        (libvirt.VIR_ERR_AUTH_FAILED, errors.HypervisorUnreachable),
        (libvirt.VIR_ERR_INTERNAL_ERROR, errors.HypervisorError),
        (99999, errors.HypervisorError),
    ],
)
def test_error_code_picks_the_class(code, cls):
    assert type(translate(libvirt_error(code, "boom"), "doing it")) is cls


def test_message_says_what_we_were_doing_then_libvirts_words():
    exc = libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found: no domain named 'web'")
    assert str(translate(exc, "starting VM web")) == (
        "starting VM web: Domain not found: no domain named 'web'"
    )


@pytest.mark.parametrize(
    "prefix", ["internal error: ", "operation failed: ", "Requested operation is not valid: "]
)
def test_generic_prefixes_are_dropped(prefix):
    exc = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, prefix + "qemu closed the monitor")
    assert str(translate(exc, "starting VM web")) == "starting VM web: qemu closed the monitor"


def test_only_the_first_line_is_kept():
    exc = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "  first line\nsecond line\n")
    assert str(translate(exc, "x")) == "x: first line"


def test_error_without_libvirt_details_uses_the_exception_text():
    exc = libvirt.libvirtError("plain failure")
    exc.err = None
    translated = translate(exc, "listing VMs")
    assert type(translated) is errors.HypervisorError
    assert str(translated) == "listing VMs: plain failure"


def test_context_manager_raises_the_translation_chained_to_the_original():
    original = libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found")
    expected = "^looking up VM web: Domain not found$"
    with (
        pytest.raises(errors.NotFound, match=expected) as info,
        libvirt_errors("looking up VM web"),
    ):
        raise original
    assert info.value.__cause__ is original


def test_context_manager_lets_other_exceptions_through():
    with pytest.raises(KeyError), libvirt_errors("anything"):
        raise KeyError("x")


def test_every_mapped_class_is_a_dockvisor_error():
    for cls in ERROR_CLASSES.values():
        assert issubclass(cls, errors.DockvisorError)
        assert cls is not errors.DockvisorError


def test_every_missing_domain_snapshot_pool_or_volume_code_is_not_found():
    # Any VIR_ERR_NO_DOMAIN* / VIR_ERR_NO_STORAGE* code, including ones a newer libvirt adds.
    lookups = [n for n in dir(libvirt) if n.startswith(("VIR_ERR_NO_DOMAIN", "VIR_ERR_NO_STORAGE"))]
    assert {"VIR_ERR_NO_DOMAIN", "VIR_ERR_NO_DOMAIN_SNAPSHOT", "VIR_ERR_NO_STORAGE_POOL"} <= set(
        lookups
    )
    unmapped = [n for n in lookups if ERROR_CLASSES.get(getattr(libvirt, n)) is not errors.NotFound]
    assert unmapped == []
