"""A pytest plugin that writes each test's CPU time, so the costliest tests are known before any is cut (issue 28).

    PYTHONPATH=bench python -m pytest -p pytest_cpu_per_test ...          # writes bench/out/cpu_per_test/*.jsonl
    python bench/pytest_cpu_per_test.py [--top 40] [FOLDER]                # the costliest tests and modules

A test's CPU is what its process and every process it started spent (user + system) while the test ran - setup,
call and teardown - servers and workers a fixture keeps included (`_tree_cpu_s`). A module-scoped fixture's start
lands on the test that first asked for it, so the module totals are the fairer figure. Wall-clock time says little
here: under xdist the tests share the cores, so CPU is what one test takes from the others.

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


def _tree_cpu_s() -> float:
    """CPU seconds spent so far by this process and every process it started, alive or reaped.

    This process's own time, plus its reaped children's (`RUSAGE_CHILDREN`), plus each live descendant's own time
    and its reaped children's. A process's time moves between these terms without being counted twice: a live
    child's is in the sum until this process reaps it, then in `RUSAGE_CHILDREN`; a grandchild's is in the sum
    until its parent reaps it, then in that parent's children's time. Only an orphan handed to init drops out.
    The difference across a test is what the test cost; a module fixture's server is charged to each test for
    what it spent meanwhile."""
    import psutil

    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    try:
        descendants = psutil.Process().children(recursive=True)
    except psutil.Error:
        return total
    for process in descendants:
        try:
            times = process.cpu_times()
        except psutil.Error:  # gone meanwhile: its time is in its reaper's figure (or lost to init)
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


class _CpuPerTest:
    def __init__(self, folder: Path, worker: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._handle = open(folder / f"{worker}.jsonl", "a", encoding="utf-8")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        cpu_before, wall_before = _tree_cpu_s(), time.monotonic()
        yield
        cpu_s = _tree_cpu_s() - cpu_before
        record = {
            "test": item.nodeid,
            "cpu_s": round(cpu_s, 2),
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
