"""Processes the tests start: a free loopback port for a server, and stopping a process politely, then firmly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen, *, group: bool = False, timeout_s: float = 15.0) -> None:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL and wait again.

    `group`: signal the process group `proc` leads (started with `start_new_session=True`), so its children stop
    with it; a leader that already exited may have left children running, and they are killed."""

    def send(sig: signal.Signals) -> None:
        (os.killpg if group else os.kill)(proc.pid, sig)

    if proc.poll() is None:
        send(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait(timeout=timeout_s)
    elif group:
        try:
            send(signal.SIGKILL)
        except ProcessLookupError:
            pass
