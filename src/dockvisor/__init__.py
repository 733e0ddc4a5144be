"""dockvisor: Docker-ready VMs of an exact size, delegated to the developers who use them."""

__version__ = "0.1.0"
