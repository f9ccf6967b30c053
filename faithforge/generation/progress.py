"""In-process progress listeners: the Prefect task reports each stored example here, and whoever
started the flow in this process (the CLI's rich progress bar) listens. Plain Python, no Prefect."""

from __future__ import annotations

import threading
from typing import Callable

Listener = Callable[[int, int], None]
"""Called with (examples stored, target)."""

_listeners: list[Listener] = []
_lock = threading.Lock()


def add_listener(listener: Listener) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def notify(done: int, target: int) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(done, target)


MessageListener = Callable[[str], None]
"""Called with one line of news from the run (e.g. that it waits for other workers)."""

_message_listeners: list[MessageListener] = []


def add_message_listener(listener: MessageListener) -> None:
    with _lock:
        _message_listeners.append(listener)


def remove_message_listener(listener: MessageListener) -> None:
    with _lock:
        if listener in _message_listeners:
            _message_listeners.remove(listener)


def notify_message(line: str) -> None:
    with _lock:
        listeners = list(_message_listeners)
    for listener in listeners:
        listener(line)
