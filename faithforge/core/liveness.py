"""Is a process on this host still alive? (Plain OS calls; no database.) Used by the run store (a run whose
process is gone is marked crashed) and by generation claims.

A claim records its worker; the worker's row records host, pid and the process's start time. On the same
host, a claim whose process is gone (or is a zombie, or whose pid now belongs to a newer process) is taken
back at once instead of waiting for its lease to run out. Other hosts cannot be inspected: their claims
expire when their heartbeats stop renewing the lease.
"""

from __future__ import annotations

import os
import socket


def this_host() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str:
    """The start time of `pid` in clock ticks since boot (Linux `/proc/<pid>/stat` field 22), or "" elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else ""


def process_alive(pid: int, start: str = "") -> bool:
    """False when `pid` is gone, a zombie, or (with `start`) a different process that reused the pid."""
    if pid <= 0:
        return False
    if os.path.isdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            return False
        fields = stat[stat.rfind(")") + 2:].split()
        if fields and fields[0] in ("Z", "X"):  # zombie / dead: killed, not yet reaped by its parent
            return False
        return not start or (len(fields) > 19 and fields[19] == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
