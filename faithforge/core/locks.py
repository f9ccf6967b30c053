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
