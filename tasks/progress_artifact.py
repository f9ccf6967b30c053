"""A stage's Prefect progress artifact, sent by a thread of its own so that showing progress never holds up the work.

Each new percent was one HTTP call to the Prefect API made by the stage's own thread, inside its training or
sampling loop. While the embedded server was started again after it died, each such call waited out the
client's retries: the warm start stood still for ~10 s (a loss line every ~1.5 s, then none for 10 s; a stack
dump showed the loop inside `update_progress_artifact`, 2026-12-07). Against a server far away every call costs
its round trip. Here the stage's loop only hands over the latest value; a daemon thread sends it, skipping values
that were superseded while a call was on its way. When a stage has ended well it waits up to `FLUSH_S` for its
last value to be sent; a stage that failed or was stopped waits for nothing.

The thread runs in a copy of the stage's context, so Prefect ties the artifact to the stage's task run (its
`TaskRunContext`) and reuses that run's API client.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Callable

#: Longest wait, seconds, for the last value to reach the server when a stage ends well (the server may be away).
FLUSH_S = 5.0


def is_wait(message: str) -> bool:
    """A progress message that says the stage waits for someone else (a lock, a `gpu` slot, a worker)."""
    return "waiting" in message[:80]


def _send_with_prefect(artifact_id, key: str | None, percent: float, description: str):
    """Create the artifact (first call, `artifact_id` None) or update it; its id."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    if artifact_id is None:
        return create_progress_artifact(progress=percent, key=key, description=description)
    return update_progress_artifact(artifact_id, progress=percent, description=description)


class ProgressArtifact:
    """One progress artifact, as a progress sink `(stage, done, total, message)`: one value per percent, and every
    message that says what the stage waits for (issue 29: waits were only in the worker's stdout)."""

    def __init__(self, key: str | None, label: str,
                 send: Callable[..., object] = _send_with_prefect) -> None:
        self.key = key
        """The artifact's key (a stage's is `progress-<stage>`); None: Prefect's unnamed artifact."""
        self.label = label
        """What starts the description (the stage's name, a spec's)."""
        self._send = send
        self._context = contextvars.copy_context()  # the caller's: Prefect's run context
        self._changed = threading.Condition()
        self._pending: tuple[float, str] | None = None
        self._sending = False
        self._last_percent = -1.0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._id = None

    def __call__(self, _stage: str, done: int, total: int, message: str) -> None:
        percent = round(100.0 * done / max(total, 1), 0)
        if percent == self._last_percent and not is_wait(message):
            return
        self._last_percent = percent
        self.set(percent, f"{self.label}: {message}")

    def set(self, percent: float, description: str) -> None:
        """Hand over a value: it replaces any value not yet sent. Never waits on the server."""
        with self._changed:
            if self._closed:
                return
            self._pending = (percent, description)
            if self._thread is None:
                thread = threading.Thread(target=self._context.run, args=(self._run,), daemon=True,
                                          name=f"faithforge-progress-{self.label}")
                try:
                    thread.start()
                except RuntimeError:  # no thread to be had: progress display must never fail a stage
                    self._pending = None
                    return
                self._thread = thread
            self._changed.notify()

    def close(self, flush_s: float = FLUSH_S) -> None:
        """No more values; wait up to `flush_s` seconds for the last one to be sent (0: none)."""
        with self._changed:
            self._closed = True
            self._changed.notify()
            if flush_s > 0:
                self._changed.wait_for(lambda: self._pending is None and not self._sending, timeout=flush_s)

    def __enter__(self) -> "ProgressArtifact":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(FLUSH_S if exc_type is None else 0.0)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:  # closed, nothing left
                    return
                (percent, description), self._pending = self._pending, None
                self._sending = True
            try:
                self._id = self._send(self._id, self.key, percent, description)
            except Exception:  # noqa: BLE001 - progress display must never fail a stage; the next value retries
                pass
            finally:
                with self._changed:
                    self._sending = False
                    self._changed.notify_all()


def stage_progress_artifact(stage: str) -> ProgressArtifact:
    """The progress artifact of a pipeline stage, keyed `progress-<stage>` (underscores become dashes)."""
    return ProgressArtifact(f"progress-{stage}".replace("_", "-"), stage)
