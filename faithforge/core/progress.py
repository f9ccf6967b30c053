"""Where long work reports progress: any number of sinks (a rich bar in the CLI, a Prefect artifact in a task).

Stage logic calls `progress(stage, done, total, message)`; it never knows who listens.
"""

from __future__ import annotations

from typing import Callable

Sink = Callable[[str, int, int, str], None]
_sinks: list[Sink] = []


def add_sink(sink: Sink) -> None:
    _sinks.append(sink)


def remove_sink(sink: Sink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def report(stage: str, done: int, total: int, message: str = "") -> None:
    for sink in list(_sinks):
        sink(stage, done, total, message)


def fan_out(*extra: Sink) -> Sink:
    """A progress function that feeds the process-wide sinks and `extra` ones."""

    def progress(stage: str, done: int, total: int, message: str = "") -> None:
        report(stage, done, total, message)
        for sink in extra:
            sink(stage, done, total, message)

    return progress
