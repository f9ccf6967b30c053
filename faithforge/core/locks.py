"""One lock per stage output, so two runs in one workspace never compute (or write) the same output twice.

A lock is `fcntl.flock` on a small file beside the output (`.NAME.lock`). The kernel releases it when its
holder exits, killed or not, so a crashed run never leaves a stale lock behind. The file records who holds it
(pid, host, stage) so a waiting run can say whom it waits for. `flock` is advisory and local: on NFS it may not
exclude processes on other machines (see README, "What FaithForge guarantees").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

from faithforge.core.errors import UserError

#: How often a waiting run re-tries the lock, seconds (a stage takes seconds to hours; 0.2 s costs nothing).
POLL_S = 0.2
#: How often a waiting run says again that it waits (with how long), seconds.
REPORT_S = 30.0


def lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another process"
    return f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('stage', 'a stage')})"


@contextlib.contextmanager
def output_lock(output: Path, stage: str, *, wait_s: float | None = None,
                on_wait: Callable[[str], None] | None = None, report_s: float = REPORT_S) -> Iterator[None]:
    """Hold the lock of `output` for the block. Another holder: call `on_wait` with who it is, then again every
    `report_s` seconds of waiting (with how long), until the lock is free.

    `wait_s=None` waits as long as the other run takes (it is computing what this run needs); a number of
    seconds gives up with a `UserError` naming the other process.
    """
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        started = time.monotonic()
        told = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            holder = describe_holder(_holder(path))
            now = time.monotonic()
            if on_wait is not None and (told is None or now - told >= report_s):
                waited = f" (waited {now - started:.0f} s)" if told is not None else ""
                on_wait(f"waiting for {holder}, which is computing {output.name}{waited}")
                told = now
            if wait_s is not None and time.monotonic() - started > wait_s:
                raise UserError(f"{output} is being computed by {holder}; wait for it to finish "
                                f"or stop it, then run again")
            time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "stage": stage,
                                  "since": time.time()}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


#: The workspace's run lock: every `faithforge demo` holds it shared for its whole life; `--fresh` needs it alone.
RUN_LOCK = ".faithforge-run.lock"
_held: dict[str, int] = {}  # workspace root → the descriptor this process holds its run lock by (open till exit)


def hold_workspace(root: Path) -> int:
    """Mark this process as a run using the workspace (a shared `flock`, released by the kernel when it exits);
    returns the lock's descriptor. Waits while a `--fresh` of another process is removing outputs there (seconds)."""
    key = str(Path(root).resolve())
    if key not in _held:
        fd = os.open(Path(root) / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _held[key] = fd
    return _held[key]


@contextlib.contextmanager
def sole_user(root: Path, derived: tuple[str, ...]) -> Iterator[None]:
    """For `--fresh`: hold the workspace alone while the block removes outputs, or refuse in one line while another
    run uses it (an attack's `--fresh` deleted the models a running demo was reading, which then died with a
    traceback). Also refuses while any output lock in `derived` folders is held (a run started some other way,
    e.g. by a Prefect worker). This process's own run lock goes back to shared afterwards."""
    fd = hold_workspace(root)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        fcntl.flock(fd, fcntl.LOCK_SH)  # a refused conversion may have dropped the shared lock (flock(2)): retake it
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise UserError(f"--fresh would delete outputs another FaithForge run is using in {root}; wait for it to "
                        "finish or stop it, then run again (nothing was deleted)") from None
    try:
        for sub in derived:
            for lock in sorted((Path(root) / sub).glob(".*.lock")):
                holder = _busy(lock)
                if holder is not None:
                    raise UserError(f"--fresh would delete outputs that {describe_holder(holder)} is computing in "
                                    f"{root}; wait for it to finish or stop it, then run again (nothing was deleted)")
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_SH)


def _busy(lock: Path) -> dict | None:
    """The holder of an output lock someone holds now, or None (free, or gone)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError:
        return _holder(lock)
    finally:
        os.close(fd)
