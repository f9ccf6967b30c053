"""A free TCP port on loopback, for the servers FaithForge starts itself (Prefect's embedded server, torchrun's
rendezvous, the llama.cpp server of an export check)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice; another process may take it before
    the caller binds it, so a server that cannot bind it is started again on another)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
