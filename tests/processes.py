"""Processes the tests start: a free loopback port for a server, and stopping a process politely, then firmly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


#: Ports handed out on this machine, one empty file each: test workers start servers at the same time, and a port
#: free when one worker asked could be handed to another before the first server bound it. Two Prefect servers on
#: one port made a test's health check answer from another test's server (its `gpu` limit already existed).
_PORTS_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "faithforge-test-ports")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and no other test process was given."""
    os.makedirs(_PORTS_DIR, exist_ok=True)
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        try:
            os.close(os.open(os.path.join(_PORTS_DIR, str(port)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue  # given to another test already (this session or an earlier one): ask again
        return port
    raise RuntimeError(f"no unused port found; clear {_PORTS_DIR}")


def wait_healthy(url: str, proc: subprocess.Popen, log_tail, timeout_s: float = 120.0) -> None:
    """Wait until `url` answers 200 while `proc` (the server started for it) runs; then check that `proc` still
    runs a second later: the answer could have come from another test's server on the same port, and ours would
    have died on the taken port. `log_tail()` gives the server's log for the failure message."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, "the server exited:\n" + log_tail()
        assert time.monotonic() < deadline, "the server did not become healthy:\n" + log_tail()
        time.sleep(0.5)
    time.sleep(1.0)
    assert proc.poll() is None, "port taken by another server:\n" + log_tail()


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
