"""bench/suite_cpu.py: a child's CPU is read from /proc while it runs, and counted under its kind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fixtures.bench_scripts import load_bench

#: Spins ~1 s of CPU, then starts a grandchild that spins ~0.6 s (a process the sampler has to find on its own).
SPIN = """
import subprocess, sys, time
def spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
spin(1.0)
grandchild = "import time\\nend = time.process_time() + 0.6\\nwhile time.process_time() < end: pass"
subprocess.run([sys.executable, "-c", grandchild])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_cpu_of_a_child_and_its_grandchild_is_read_while_they_run():
    bench = load_bench("suite_cpu")
    proc = subprocess.Popen([sys.executable, "-c", SPIN])
    seen = bench.sample_while(proc, every_s=0.1)
    # other tests' processes run beside it under xdist: ours are told by their code
    ours = [row for row in seen.values() if "def spin" in row["command"] or "process_time() + 0.6" in row["command"]]
    assert len(ours) == 2, [row["command"][:80] for row in seen.values()]
    spent = sorted(row["last_cpu_s"] - (0.0 if row["new"] else row["first_cpu_s"]) for row in ours)
    # the grandchild's 0.6 s and the child's 1.0 s (less up to one reading missed at the end of each)
    assert spent[0] >= 0.4 and spent[1] >= 0.8, spent
    rows = {kind: minutes for kind, minutes, _ in bench.summarize({key: row for key, row in seen.items()
                                                                    if row in ours})}
    assert rows == {"other Python process": pytest.approx(sum(spent) / 60)}, rows


def test_processes_are_counted_under_their_kind():
    bench = load_bench("suite_cpu")
    assert bench.kind_of("python -m uvicorn --app-dir x --factory prefect.server.api.server:create_app") \
        .startswith("Prefect server's API process")
    assert bench.kind_of("python -m faithforge.app.cli demo -w ws") == "`faithforge demo` process"
    assert bench.kind_of("python -m prefect.engine") == "Prefect flow-run process (started by a worker)"
    demo = "python -m faithforge.app.cli demo"
    seen = {"1:5": {"command": demo, "first_cpu_s": 0.5, "last_cpu_s": 30.5, "new": True},
            "2:7": {"command": "bash", "first_cpu_s": 100.0, "last_cpu_s": 106.0, "new": False}}
    # a new process counts all its CPU; one there before the run only what it spent during it
    assert bench.summarize(seen) == [("`faithforge demo` process", 30.5 / 60, 1), ("other", 6.0 / 60, 1)]


def test_the_machine_is_read_busy_minute_by_minute():
    bench = load_bench("suite_cpu")
    busy, total = bench.machine_jiffies()
    assert 0 <= busy <= total
    # 0-60 s: half the ticks busy; 60-90 s: all busy (a last part of 30 s counts)
    readings = [(0.0, 0, 0), (30.0, 50, 100), (60.0, 100, 200), (90.0, 200, 300)]
    assert bench.busy_by_minute(readings) == [0.5, 1.0]
    # a last part under 10 s is not a minute of its own
    assert bench.busy_by_minute([(0.0, 0, 0), (60.0, 30, 120), (65.0, 40, 130)]) == [0.25]
    assert bench.busy_by_minute([(0.0, 0, 0), (5.0, 1, 2)]) == []
