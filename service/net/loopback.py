"""A free TCP port on the loopback address, for a server started for a moment: the CLI's own
in-process service, the bench's, the tests'."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port() -> int:
    """A port nothing listens on now (the system picks it; it is free until someone binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
