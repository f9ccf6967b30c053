"""Where long work reports progress: any number of sinks (a rich bar in the CLI, a Prefect artifact in a task).

Stage logic calls `progress(stage, done, total, message)`; it never knows who listens. The one registry of the
process: the pipeline's stages and the generation run (stage `"generate"`) both report here, and whoever
started the work in this process (the demo's bars, `faithforge generate`'s bar) adds a sink.

A report's `message` is a line the user should see; a line of news (e.g. that a run waits for other workers)
is a report whose counts are the ones last reported, so a bar stays where it is. Sinks may be added, removed
and reported to from any thread; each is called outside the lock, so a sink may itself add or remove sinks.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

Sink = Callable[[str, int, int, str], None]
"""Called with (stage, done, total, message)."""

_sinks: list[Sink] = []
_lock = threading.Lock()


def add_sink(sink: Sink) -> None:
    with _lock:
        _sinks.append(sink)


def remove_sink(sink: Sink) -> None:
    with _lock:
        if sink in _sinks:
            _sinks.remove(sink)


def report(stage: str, done: int, total: int, message: str = "") -> None:
    with _lock:
        sinks = list(_sinks)
    for sink in sinks:
        sink(stage, done, total, message)


def fan_out(*extra: Sink) -> Sink:
    """A progress function that feeds the process-wide sinks and `extra` ones."""

    def progress(stage: str, done: int, total: int, message: str = "") -> None:
        report(stage, done, total, message)
        for sink in extra:
            sink(stage, done, total, message)

    return progress


class StageReporter:
    """Count reports and news lines of one stage, for work that reports through two callbacks (counts, lines):
    `counts(done, total)` reports with no message; `news(line)` reports the line with the last counts."""

    def __init__(self, stage: str, progress: Sink = report):
        self.stage, self._progress = stage, progress
        self._last = (0, 0)

    def counts(self, done: int, total: int) -> None:
        self._last = (done, total)  # one tuple assignment: a news line from another thread sees old or new
        self._progress(self.stage, done, total, "")

    def news(self, line: str) -> None:
        done, total = self._last
        self._progress(self.stage, done, total, line)


STARTED = "started"
"""The message of a stage's first report (`begin`): a listener starts that stage's clock here."""

_ended: set[str] = set()


def begin(stage: str) -> None:
    """Say that `stage` starts now (counts 0/1, message `STARTED`), before its first report of its own."""
    with _lock:
        _ended.discard(stage)
    report(stage, 0, 1, STARTED)


def end(stage: str, message: str) -> None:
    """Say that `stage` is over (counts 1/1, `message`); while the sinks hear it, `has_ended(stage)` is true.

    A stage's own reports may reach done == total before it ends (evaluation counts each model's answers to
    the full total): only this report ends it, so a bar's clock stops here and not at the first full count.
    The mark is cleared once the sinks have heard it, so a stage of the same name in a later run (or test)
    in this process starts with a clean slate."""
    with _lock:
        _ended.add(stage)
    try:
        report(stage, 1, 1, message)
    finally:
        with _lock:
            _ended.discard(stage)


def has_ended(stage: str) -> bool:
    with _lock:
        return stage in _ended


def clock_text(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PlainLines:
    """Progress as plain lines, for output that is a file or a pipe (where a live bar shows nothing until the
    end): a line when a stage starts, one every `every_s` seconds while it runs (done/total, rate, elapsed)
    and one when it ends. A news line (a report with a message) is printed as it comes.

    The every-`every_s` lines come from a timer thread, so a stage that reports nothing for minutes (a model
    load, a slow training step) still shows that it is alive. Use as a context manager around the work and
    add `self` as a sink."""

    def __init__(self, write: Callable[[str], None], labels: dict[str, str] | None = None,
                 every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self._write, self._labels, self.every_s, self._now = write, labels or {}, every_s, clock
        self._stages: dict[str, dict] = {}  # stage -> started, done, total, first_done, first_at, last_line
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _label(self, stage: str) -> str:
        return self._labels.get(stage, stage)

    def _status(self, stage: str, st: dict, now: float) -> str:
        elapsed = now - st["started"]
        parts = [f"{st['done']}/{st['total']}"] if st["total"] > 1 else []
        counted = st["done"] - (st["done"] if st["first_done"] is None else st["first_done"])
        span = now - st["first_at"]
        if counted > 0 and span > 0:
            rate = counted / span
            parts.append(f"{rate:.2f}/s" if rate >= 0.1 else f"{60 * rate:.2f}/min")
            if st["total"] > st["done"]:
                parts.append(f"~{clock_text((st['total'] - st['done']) / rate)} left")
        parts.append(f"{clock_text(elapsed)} elapsed")
        return f"{self._label(stage)}: " + ", ".join(parts)

    def __call__(self, stage: str, done: int, total: int, message: str) -> None:
        now = self._now()
        lines = []
        with self._state_lock:
            st = self._stages.get(stage)
            if st is None or message == STARTED:
                st = self._stages[stage] = {"started": now, "done": 0, "total": 0, "first_done": None,
                                            "first_at": now, "last_line": now}
                lines.append(f"{self._label(stage)}: started")
            ending = has_ended(stage)
            if not ending and message != STARTED:
                if st["first_done"] is None or total != st["total"]:  # the rate counts from the first count
                    st["first_done"], st["first_at"] = done, now
                st["done"], st["total"] = done, total
                if message:
                    lines.append(f"{self._label(stage)}: {message}")
            if ending:
                lines.append(f"{self._label(stage)}: {message} ({clock_text(now - st['started'])} elapsed)")
                del self._stages[stage]
        for line in lines:
            self._write(line)

    def tick(self) -> None:
        """Print a status line for every running stage that printed nothing for `every_s` seconds."""
        now = self._now()
        lines = []
        with self._state_lock:
            for stage, st in self._stages.items():
                if now - st["last_line"] >= self.every_s:
                    st["last_line"] = now
                    lines.append(self._status(stage, st, now))
        for line in lines:
            self._write(line)

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.every_s)):
            self.tick()

    def __enter__(self) -> "PlainLines":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="plain-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
