"""Children die with their parent (issue 29; the embedded-server leftover of issue 25). Plain OS calls, no Prefect.

Two mechanisms, one per direction:

- `watch_parent(on_death)`: a daemon thread in *this* process that notices when the process that started it is
  gone (Linux re-parents an orphan, so `os.getppid()` changes) and calls `on_death`. A flow run started by a
  Prefect process worker uses it: when the worker dies, the flow process reports the death and exits instead of
  training on unsupervised (and dying later of a BrokenPipeError on the dead worker's pipe).
- `start_reaper()`: a tiny watcher process (this file, run by path: it imports nothing of FaithForge) that keeps
  a list of this process's descendants and, when this process dies — SIGKILL included — terminates them. The
  demo and `generate` use it for every child (Prefect's embedded server, a `uvicorn` child, also dies with its
  parent through `prctl(PR_SET_PDEATHSIG)`, which covers the first 0.5 s the reaper has not yet seen it: see
  app/embedded_server.py); a flow process uses it for whatever it started.

Both work from `/proc` (Linux). Elsewhere `watch_parent` still works (getppid) and `start_reaper` does nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

#: How often the watchers look, seconds (reading one number or a few hundred tiny files: negligible).
POLL_S = 0.5
#: How long a reaped descendant gets between SIGTERM and SIGKILL.
TERM_GRACE_S = 3.0


def dies_with_this_process() -> Callable[[], None] | None:
    """For `subprocess.Popen(preexec_fn=...)` on Linux: the child gets SIGTERM when this process dies, SIGKILL
    included (`prctl(PR_SET_PDEATHSIG)`), from its first instruction on (the reaper looks only every `POLL_S`).
    If this process died between the fork and the call, the child ends itself. The kernel signals when the *thread*
    that forked ends: start such children from a thread that lives as long as they should. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def in_child() -> None:
        prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died between the fork and the call: no signal will come
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()  # fields from the state (field 3) on


def _start_time(pid: int) -> str:
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else ""


def _alive(pid: int, start: str) -> bool:
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X") and (not start or fields[19] == start)


def descendants(pid: int) -> dict[int, str]:
    """Every descendant of `pid` with its start time (to tell it from a later process that reuses the pid)."""
    parents: dict[int, int] = {}
    starts: dict[int, str] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and len(fields) > 19:
                parents[int(entry)] = int(fields[1])
                starts[int(entry)] = fields[19]
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found[child] = starts[child]
                frontier.append(child)
    return found


def terminate(processes: dict[int, str], grace_s: float = TERM_GRACE_S) -> list[int]:
    """SIGTERM each process that is still the one recorded (pid and start time), SIGKILL what is left after
    `grace_s`. Returns the pids signalled."""
    live = {pid: start for pid, start in processes.items() if _alive(pid, start)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in list(live):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline:
            live = {pid: start for pid, start in live.items() if _alive(pid, start)}
            if not live:
                break
            time.sleep(0.05)
        if not live:
            break
    return list(processes)


def watch_parent(on_death: Callable[[int], None], poll_s: float = POLL_S) -> threading.Thread:
    """Call `on_death(old_parent_pid)` (once, in a daemon thread) when the process that started this one ends."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        on_death(parent)

    thread = threading.Thread(target=watch, name="faithforge-parent-watch", daemon=True)
    thread.start()
    return thread


def start_reaper(pid: int | None = None, after_death: list[str] | None = None) -> subprocess.Popen | None:
    """Start the watcher process for `pid` (default: this process); None where /proc is missing.

    The watcher runs in its own session (a Ctrl-C to the terminal's group does not stop it first) and ends by
    itself once `pid` is gone and its descendants are stopped. `after_death`: a command it then runs (in this
    process's directory and environment) unless `pid` first called `exited_cleanly()` — how a flow process killed
    without warning (SIGKILL, or its worker's shutdown) still gets its death reported."""
    if not os.path.isdir("/proc"):
        return None
    pid = os.getpid() if pid is None else pid
    return subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), str(pid), _start_time(pid),
                             _clean_marker(pid), *(after_death or [])],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def _clean_marker(pid: int) -> str:
    return os.path.join(os.environ.get("TMPDIR", "/tmp"), f"faithforge-clean-exit-{pid}-{_start_time(pid)}")


def exited_cleanly() -> None:
    """Tell this process's reaper not to run its after-death command (call at a normal exit, e.g. atexit)."""
    with contextlib.suppress(OSError), open(_clean_marker(os.getpid()), "w"):
        pass


def reap_after(pid: int, start: str, poll_s: float = POLL_S) -> list[int]:
    """The watcher's loop: track `pid`'s descendants; once `pid` is gone, stop the last ones seen."""
    me = os.getpid()
    seen: dict[int, str] = {}
    while _alive(pid, start):
        seen.update(descendants(pid))
        seen.pop(me, None)
        time.sleep(poll_s)
    return terminate(seen)


if __name__ == "__main__":  # the watcher process: python -I -S orphans.py PID START [MARKER [COMMAND...]]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reap_after(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
    marker, command = (sys.argv[3], sys.argv[4:]) if len(sys.argv) > 3 else ("", [])
    if marker and os.path.exists(marker):
        os.unlink(marker)
    elif command:
        subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=300, check=False)
