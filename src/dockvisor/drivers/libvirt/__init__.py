"""The libvirt adapter family: QEMU/KVM, Xen (libxl) and the in-process test driver."""

from dockvisor.drivers.libvirt.driver import DEFAULT_URI, LibvirtDriver

__all__ = ["DEFAULT_URI", "LibvirtDriver"]
