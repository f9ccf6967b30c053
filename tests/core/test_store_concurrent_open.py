"""Processes opening a new run store at the same moment all get it (a worker and its flow, two runs started
together). The supervision integration test failed once in the suite with "table stage_outputs already exists":
two processes both saw the table missing and both created it; then "database is locked" from switching a new
database to WAL before the busy timeout was set. The full suite of 2026-12-05 then saw one process of 32 refused
("cannot be used"), its reason cut off: SQLite answers "database is locked" at once, busy timeout or not, when a
schema read turns into a write after another process committed; that is now looked at again too."""

from __future__ import annotations

import multiprocessing

PROCESSES, ROUNDS = 4, 8


def _open(url: str, barrier, results) -> None:
    from faithforge.core.store import Store

    barrier.wait()
    try:
        Store(url).engine.dispose()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - the failure is the result
        results.put(str(exc)[:600])  # the reason is in the message's parentheses: keep it whole


def test_processes_opening_a_new_store_at_once_all_get_it(tmp_path):
    # A fork server: a fresh process (no inherited SQLite connections or locks) that imports the store once and
    # forks each opener from there. With "spawn" each of the 32 openers imported it itself: ~0.7 CPU-s apiece,
    # 22 CPU-s of a suite that is CPU-bound on 2 cores (2026-12-06).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["faithforge.core.store", _open.__module__])
    failures = []
    for round_ in range(ROUNDS):
        url = f"sqlite:///{tmp_path / f'store-{round_}.db'}"
        barrier, results = context.Barrier(PROCESSES), context.Queue()
        procs = [context.Process(target=_open, args=(url, barrier, results)) for _ in range(PROCESSES)]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(30)
        failures += [outcome for outcome in outcomes if outcome != "ok"]
    assert failures == []
