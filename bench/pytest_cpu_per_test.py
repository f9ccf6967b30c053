"""A pytest plugin that writes each test's CPU time, so the costliest tests are known before any is cut (issue 28).

    PYTHONPATH=bench python -m pytest -p pytest_cpu_per_test ...          # writes bench/out/cpu_per_test/*.jsonl
    python bench/pytest_cpu_per_test.py [--top 40] [FOLDER]                # the costliest tests and modules

A test's CPU is what its process spent (user + system) while the test ran - setup, call and teardown - plus what its
reaped children spent (`RUSAGE_CHILDREN`), plus what its live descendants spent (servers and workers a fixture
keeps, read through psutil). A module-scoped fixture's cost lands on the test that first asked for it, so the module
totals are the fairer figure. Wall-clock time on 2 cores says little here: under xdist two tests share the
cores, so CPU is what one test takes from the others.

`FAITHFORGE_TEST_CPU_DIR` names the output folder (default `bench/out/cpu_per_test`); each xdist worker
writes its own `<worker>.jsonl`, one line per test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections import defaultdict
from pathlib import Path

import pytest

_DEFAULT_DIR = Path(__file__).resolve().parent / "out" / "cpu_per_test"  # bench/out/ is git-ignored


def _descendants_cpu_s() -> dict[tuple[int, float], float]:
    """CPU seconds of every live descendant, keyed by (pid, start time) so a reused pid is a new process."""
    import psutil

    readings: dict[tuple[int, float], float] = {}
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return readings
    for child in children:
        try:
            times = child.cpu_times()
            readings[(child.pid, child.create_time())] = times.user + times.system
        except psutil.Error:
            continue
    return readings


def _own_cpu_s() -> float:
    """This process's CPU plus its reaped children's, seconds."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime


class _CpuPerTest:
    def __init__(self, folder: Path, worker: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._handle = open(folder / f"{worker}.jsonl", "a", encoding="utf-8")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        own_before = _own_cpu_s()
        live_before = _descendants_cpu_s()
        wall_before = time.monotonic()
        yield
        own_after = _own_cpu_s()
        live_after = _descendants_cpu_s()
        # A descendant that still lives counts what it spent during the test; one that died in between was either
        # reaped by this process (in RUSAGE_CHILDREN) or by another descendant (in that one's reading once reaped).
        live_s = sum(cpu_s - live_before.get(key, 0.0) for key, cpu_s in live_after.items())
        record = {
            "test": item.nodeid,
            "cpu_s": round(own_after - own_before + max(live_s, 0.0), 2),
            "wall_s": round(time.monotonic() - wall_before, 2),
        }
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()


def pytest_configure(config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    folder = Path(os.environ.get("FAITHFORGE_TEST_CPU_DIR", _DEFAULT_DIR))
    config.pluginmanager.register(_CpuPerTest(folder, worker), "faithforge-cpu-per-test")


def _summarize(folder: Path, top: int) -> None:
    records = [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]
    if not records:
        raise SystemExit(f"no *.jsonl under {folder}: run pytest with -p pytest_cpu_per_test first")
    total_s = sum(record["cpu_s"] for record in records)
    by_module: dict[str, float] = defaultdict(float)
    for record in records:
        by_module[record["test"].split("::")[0]] += record["cpu_s"]
    print(f"{len(records)} tests, {total_s / 60:.2f} CPU-min in all")
    print(f"\ncostliest {top} tests (CPU s, wall s):")
    for record in sorted(records, key=lambda r: -r["cpu_s"])[:top]:
        print(f"{record['cpu_s']:8.1f} {record['wall_s']:8.1f}  {record['test']}")
    print(f"\ncostliest {top} modules (CPU s, share):")
    for module, cpu_s in sorted(by_module.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{cpu_s:8.1f} {100 * cpu_s / total_s:5.1f}%  {module}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=_DEFAULT_DIR)
    parser.add_argument("--top", type=int, default=40)
    arguments = parser.parse_args()
    _summarize(arguments.folder, arguments.top)
