"""An XCP-ng/XenServer XenAPI (XAPI) simulator for tests: see simulator.XapiSimulator."""

from .simulator import XapiSimulator

__all__ = ["XapiSimulator"]
