"""The XAPI adapter family: XenServer and XCP-ng pools, through the XenAPI SDK."""

from dockvisor.drivers.xapi.driver import XapiDriver

__all__ = ["XapiDriver"]
