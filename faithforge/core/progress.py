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
