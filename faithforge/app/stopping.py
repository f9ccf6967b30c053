"""Ctrl-C and SIGTERM stop a run within seconds, say where, and leave no process behind (issue 25, item 2).

Ctrl-C sends SIGINT to the whole process group, so Prefect's embedded server (a `uvicorn` child) dies at once
while the stage in this process goes on; every call to the server after that waits and retries, and the run
used to end minutes later with "Connection refused". Here the first signal:

- prints one line: which stage it stopped in (from the progress reports) and that a rerun resumes;
- raises `KeyboardInterrupt` in the main thread, so the stage stops at its next bytecode. Every write is atomic
  (a temporary file renamed into place, `faithforge/core/workspace.py`), so the current step's checkpoint is
  whole or absent — the same guarantee a SIGKILL at any moment has (`tests/stages/test_kill_resume.py`);
- marks the run `cancelled` in the run store (not through Prefect: its server may be gone), stops every child
  process (the embedded server included) and exits with status 130 — at the latest `GRACE_S` seconds after the
  signal, whatever Prefect's clean-up is waiting for, and `SERVER_GONE_S` after this process's embedded Prefect
  server has died of the stop: Prefect's flow engine then only proposes the final state to a dead server,
  retrying with sleeps (`_send_with_retry`), which was where half of the stops spent their 5 s (a stack dumped
  when the watchdog fired: 5 of 10 stops, every one there).

A second signal exits at once (children killed, run marked). Work reporting progress from another thread stops
at its next report.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Iterator, NoReturn

from faithforge.core.liveness import process_alive
from faithforge.core.progress import add_sink, remove_sink

#: Seconds Prefect's own clean-up gets after the first signal before the process exits anyway.
GRACE_S = 5.0
#: How often the watchdog looks whether the embedded Prefect server is still there, seconds.
SERVER_POLL_S = 0.05
#: Seconds the main thread still gets once the embedded server is gone, for its own clean-up (a temporary folder
#: removed, a progress bar closed, the cursor shown again): it takes 0.3-0.5 s in a stop that does not meet
#: Prefect's retries.
SERVER_GONE_S = 1.0
#: Seconds between two looks for the embedded server while the run reports progress (a /proc scan, ~5-10 ms).
SERVER_LOOK_EVERY_S = 2.0
#: The exit status of a stopped command (128 + SIGINT, what shells report), a stop before any command started too.
EXIT_STATUS = 130
#: What a stop before any command started says: nothing has been written by then.
STOPPED_BEFORE_START_LINE = "interrupted before the command started; nothing was written"


def exit_stopped_before_start() -> NoReturn:
    """For a Ctrl-C while the command line loads (the console script's imports, `cli.main` importing the
    subcommands, ~1-2 s on 2 cores), before this module's `Stopper` exists: say so and exit at once. The
    interpreter's own shutdown would run for nothing, and a second Ctrl-C during it would end the process by
    SIGINT instead of `EXIT_STATUS`."""
    try:
        sys.stderr.write(STOPPED_BEFORE_START_LINE + "\n")
        sys.stderr.flush()
    finally:
        os._exit(EXIT_STATUS)


interrupted = False
"""True once Ctrl-C or SIGTERM reached this process outside a `Stopper`: Typer turns that `KeyboardInterrupt` into
a silent exit status 130, so the CLI asks this to say its one line (`cli.main`)."""


def take_stop_signals() -> None:
    """Until a command installs its own handling (a `Stopper`), Ctrl-C and SIGTERM raise `KeyboardInterrupt` and
    are noted (`interrupted`). At Python's default a SIGTERM in a command's first ~0.5 s (what `timeout` sends, or
    a service manager) ended it silently with status 143, and a Ctrl-C in `faithforge label` ended it with 130 and
    no line (Typer's doing; an attack, 2026-12-07). A handler someone else installed (an embedding program's) is
    left alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _noted_interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _noted_interrupt)


def _noted_interrupt(signum: int, frame) -> None:  # noqa: ARG001
    global interrupted
    interrupted = True
    raise KeyboardInterrupt


class StopRequested(KeyboardInterrupt):
    """Raised in the stage that was running when Ctrl-C or SIGTERM came."""


stop_handled = False
"""True once a `Stopper` in this process took a signal: the CLI then leaves without the interpreter's teardown
(`cli._exit_now`), whichever way the command returns (Click may turn the stop into an exit status)."""


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (Linux `/proc`; elsewhere none are found)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    stat = handle.read().decode(errors="replace")
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found.append(child)
                frontier.append(child)
    return found


def embedded_servers(pid: int) -> list[int]:
    """The Prefect API servers among the descendants of `pid`: the embedded server Prefect starts for a run
    without `PREFECT_API_URL` is a `uvicorn … prefect.server.api.server:create_app` child (Linux `/proc`)."""
    found = []
    for child in _children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ")
        except OSError:
            continue
        if b"uvicorn" in command and b"prefect.server" in command:
            found.append(child)
    return found


def _flush() -> None:
    """Flush stdout and stderr before an `os._exit` (which skips it), whatever state they are in."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()


def stop_children(wait_s: float = 3.0) -> None:
    """SIGTERM every descendant process, wait up to `wait_s`, then SIGKILL those left, and reap them."""
    children = _children(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for child in children:
            with contextlib.suppress(OSError):
                os.kill(child, sig)
        deadline = time.monotonic() + (wait_s if sig == signal.SIGTERM else min(1.0, wait_s + 0.2))
        while children and time.monotonic() < deadline:
            for child in list(children):
                try:
                    done, _ = os.waitpid(child, os.WNOHANG)
                except ChildProcessError:  # not our direct child (a grandchild) or already reaped
                    done = child if not os.path.exists(f"/proc/{child}") else 0
                if done:
                    children.remove(child)
            time.sleep(0.05)
        if not children:
            return


class Stopper:
    """Installed around a pipeline run in the CLI: turns Ctrl-C and SIGTERM into a prompt, clean stop."""

    def __init__(self, database_url: str | None, labels: dict[str, str], say: Callable[[str], None] | None = None):
        """`database_url`: the run store whose runs of this process are marked cancelled (None: no run store,
        e.g. `faithforge generate`, whose progress lives in its coverage database and its example files)."""
        self.database_url, self.labels = database_url, labels
        self.say = say or (lambda line: (sys.stderr.write(line + "\n"), sys.stderr.flush()))
        self.signals = 0
        self.where = "before the first stage started"
        self.stopped_at: datetime | None = None
        """When the first signal came (UTC): runs this process marked `failed` after it were stopped, not failed
        (`Store.cancel_runs_of_this_process`)."""
        self.last: tuple[str, int, int] | None = None
        self._finishing = threading.RLock()
        """Held through the whole of `finish`: a second caller (the watchdog) waits for the first's clean-up."""
        self._done = False
        self._marked = False
        """The run store was marked (at least once) since the signal."""
        self._marking_thread: int | None = None
        """The thread writing the mark right now (None: nobody is)."""
        self.servers: set[int] = set()
        """Embedded Prefect servers of this process seen so far (pids): a server already dead at the signal is a
        zombie whose command line reads empty, so it is noted while the run reports progress."""
        self._looked_at = 0.0
        self._redelivering = False
        self._in_hook = False
        """The main thread is inside `_unraisable`: a stop raised there would be swallowed again."""
        self._asked = False
        """A stop waits to be raised again in the main thread, outside the hook (`_redeliver_loop` does it)."""
        self._raised: StopRequested | None = None
        """The stop the signal handler raised last (the one `_unraisable` may deliver again)."""
        self._previous_unraisable = sys.unraisablehook

    # progress: where the run is -----------------------------------------------------------------------
    def _sink(self, stage: str, done: int, total: int, message: str) -> None:  # noqa: ARG002
        self.last = (stage, done, total)
        if threading.current_thread() is not threading.main_thread():
            if self.signals:
                raise StopRequested(self.where)  # work in another thread stops at its next report
            return
        if not self.signals and time.monotonic() - self._looked_at >= SERVER_LOOK_EVERY_S:
            self._looked_at = time.monotonic()
            self.servers.update(embedded_servers(os.getpid()))
        # Prefect's flow engine swaps in its own SIGTERM handler (it turns SIGTERM into a crash that first talks
        # to the server); a stage's progress report takes SIGTERM back, so it stops like Ctrl-C.
        if signal.getsignal(signal.SIGTERM) != self._handle:  # bound methods compare equal, never identical
            signal.signal(signal.SIGTERM, self._handle)

    def _describe(self) -> str:
        if self.last is None:
            return "before the first stage started"
        stage, done, total = self.last
        label = self.labels.get(stage, stage)
        if done >= total:
            return f"after {label}"
        return f"during {label} (past {done} of {total})"

    # the signal ------------------------------------------------------------------------------------------
    def _handle(self, signum: int, frame) -> None:  # noqa: ARG002
        global stop_handled
        stop_handled = True
        if self._redelivering:  # the stop already counted, swallowed where Python cannot raise (`_unraisable`)
            if self._in_hook:  # still inside the hook: raising here is swallowed again, so ask once more
                self._asked = True  # a plain flag: a handler must not take a lock the main thread may hold
                return
            self._redelivering = False
            self._raised = StopRequested(self.where)
            raise self._raised
        self.signals += 1
        self.stopped_at = self.stopped_at or datetime.now(timezone.utc)
        name = signal.Signals(signum).name
        if self.signals > 1:
            self.say(f"{name} again: stopping now")
            self._mark_once_more()  # whatever the first signal's clean-up is doing (it may be waiting on children)
            stop_children(0.0)  # even while the first signal's clean-up is still waiting on them
            _flush()
            os._exit(EXIT_STATUS)
        self.where = self._describe()
        self.say(f"stopped on {name} {self.where}; every finished stage and checkpoint is kept whole: rerun the "
                 "same command to resume")
        # What the stop tears down (connections of Prefect's client and server, cancelled mid-rollback) is not the
        # user's to fix: SQLAlchemy's pool would print its reset traceback under the stop line (a Ctrl-C test run,
        # 2026-12-07)
        logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
        threading.Thread(target=self._watchdog, name="faithforge-stop", daemon=True).start()
        threading.Thread(target=self._redeliver_loop, name="faithforge-stop-redeliver", daemon=True).start()
        self._raised = StopRequested(self.where)
        if self._in_hook:  # it landed in the hook itself (an unrelated unraisable): raise it once the hook is left
            self._redelivering = self._asked = True
            return
        raise self._raised

    def _unraisable(self, unraisable) -> None:
        """A signal that lands while Python runs a weakref callback or a `__del__` raises the stop there, where
        Python prints it as "Exception ignored" and goes on (seen in the suite: a stop swallowed inside
        `WeakValueDictionary`'s callback, the run carrying on until the watchdog). Deliver it again to the main
        thread instead, as the stop already announced (not a second Ctrl-C). Only the very stop this handler
        raised: a stop a worker thread raised at its progress report (`_sink`) and a generator dropped later must
        not interrupt the main thread's clean-up."""
        self._in_hook = True  # the whole hook: a redelivered stop that lands anywhere in it asks again
        try:
            if self._raised is not None and unraisable.exc_value is self._raised:
                # Deliver it again from another thread once this hook has returned; a delivery that still lands
                # in here only asks again. Nothing here blocks or starts a thread: it once started a
                # `threading.Timer(0.01, interrupt_main)`, which on a loaded machine fired while this hook still
                # waited in the timer's `start()`, and the redelivered stop was swallowed too.
                self._redelivering = self._asked = True
                return
            self._previous_unraisable(unraisable)
        finally:
            self._in_hook = False

    def _redeliver_loop(self) -> None:
        """After the first signal: whenever a stop asks to be raised again, interrupt the main thread once it is
        out of the hook. Polls plain flags (no lock a signal handler could meet held); the process ends within
        `GRACE_S` anyway."""
        while True:
            time.sleep(0.005)
            if self._asked and not self._in_hook:
                self._asked = False
                _thread.interrupt_main(signal.SIGINT)

    def _watchdog(self) -> None:
        """Exit `GRACE_S` after the first signal, or `SERVER_GONE_S` after the embedded Prefect servers this
        process had are all gone (a stop sent to the process group kills them): from then on nothing Prefect's
        clean-up waits for can succeed, while the main thread's own clean-up has had its second. A stop sent to
        this process alone leaves its server up, and Prefect reports the run's end to it within the grace."""
        deadline = time.monotonic() + GRACE_S
        servers = self.servers | set(embedded_servers(os.getpid()))
        gone_since = None
        while time.monotonic() < deadline:
            time.sleep(SERVER_POLL_S)
            if servers and not any(process_alive(pid) for pid in servers):  # a zombie is gone too
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since >= SERVER_GONE_S:
                    break
        by_main = self._done  # the main thread's clean-up got there: it exits on its own in a moment
        self.finish(lock_wait_s=max(0.0, deadline - time.monotonic()) + 3.0)
        if by_main:
            time.sleep(max(0.0, min(SERVER_GONE_S, deadline - time.monotonic())))
        os._exit(EXIT_STATUS)

    def finish(self, wait_s: float = 3.0, lock_wait_s: float = -1) -> None:
        """Mark this process's running runs cancelled and stop its children (once). A caller that finds another
        thread finishing waits for it (at most `lock_wait_s`; -1: as long as it takes), so the process never
        exits in the middle of the other's clean-up; one that waited in vain still marks the store."""
        if not self._finishing.acquire(timeout=lock_wait_s):
            self._mark_once_more()
            return
        try:
            if self._done:
                return
            self._done = True
            # The store first (milliseconds), so a stop cut short while children are stopped has still marked it;
            # and again after: a `failed` the main thread's flow wrote meanwhile (a stop handed back as a
            # library's error) becomes `cancelled`.
            self._mark()
            stop_children(wait_s)
            self._mark()
            _flush()
        finally:
            self._finishing.release()

    def _mark(self) -> None:
        """Mark this process's runs cancelled in the run store (repeatable: a second mark changes only what was
        written since)."""
        if self.database_url is None:
            self._marked = True
            return
        self._marking_thread = threading.get_ident()
        try:
            from faithforge.core.store import Store

            store = Store(self.database_url)
            store.cancel_runs_of_this_process(self.where, self.stopped_at)
            store.engine.dispose()
            self._marked = True
        except Exception:  # noqa: BLE001 - stopping must not fail on a store problem; the run then shows crashed
            pass
        finally:
            self._marking_thread = None

    def _mark_once_more(self, wait_s: float = 1.0) -> None:
        """For a caller that does not wait for `finish` (a second signal): mark the store unless it was marked.
        Another thread marking right now is given `wait_s`; a mark this very thread was in the middle of (the
        handler interrupted it) is left alone: its own connection holds the database."""
        deadline = time.monotonic() + wait_s
        while self._marking_thread not in (None, threading.get_ident()) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._marked and self._marking_thread is None:
            self._mark()

    @contextlib.contextmanager
    def owning_sigterm_in_flows(self) -> Iterator[None]:
        """Within the block, flows run in this process leave SIGTERM to this Stopper.

        Prefect's flow engine installs its own SIGTERM handler as each flow and subflow starts
        (`prefect.utilities.engine.capture_sigterm`): SIGTERM becomes a crash that Prefect first reports to its
        server. A stage's progress report takes SIGTERM back (`_sink`), but a SIGTERM to the process group before
        that (2.7 s after the demo's flow starts, 0.8 s in `generate`) met Prefect's handler while the same signal
        killed the embedded server: the stop took ~10 s and the run was marked `failed`, not `cancelled` (a
        review's repro, 2026-12-07). Prefect's bridge serves its runners' cancellation of a flow process, which a
        command running its flows in process has none of. Prefect without that name: nothing is changed (the
        progress reports still take SIGTERM back)."""
        import prefect.flow_engine as engine

        bridge = getattr(engine, "capture_sigterm", None)
        if bridge is None or threading.current_thread() is not threading.main_thread():
            yield
            return
        engine.capture_sigterm = contextlib.nullcontext  # `capture_sigterm()` takes no argument; neither need this
        try:
            yield
        finally:
            engine.capture_sigterm = bridge

    @contextlib.contextmanager
    def installed(self) -> Iterator["Stopper"]:
        """Handle SIGINT and SIGTERM while the block runs (main thread only); restore the old handlers after."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._previous_unraisable, sys.unraisablehook = sys.unraisablehook, self._unraisable
        add_sink(self._sink)
        try:
            yield self
        except BaseException as exc:
            # A library may hand the stop back as its own error (see `Store.cancel_runs_of_this_process`): once a
            # signal came, whatever ends the block is the stop, and the run is marked and the children stopped.
            if self.signals or isinstance(exc, KeyboardInterrupt):
                self.finish()
            raise
        finally:
            remove_sink(self._sink)
            sys.unraisablehook = self._previous_unraisable
            if not self.signals:  # a stop under way keeps this handler: a second Ctrl-C still exits at once, 130
                for sig, handler in old.items():
                    signal.signal(sig, handler)
