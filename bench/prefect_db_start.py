"""A Prefect server's start on a new database against one on a copy of a migrated database, side by side.

    python bench/prefect_db_start.py [--repeats 3] [--out FILE.json]

The suite starts about eight Prefect servers on new SQLite databases; `tests/fixtures/prefect_db.py` copies one
migrated database into each instead. This starts `prefect server start` (UI off) alternately on a new database and
on a copy, and prints, per start, the CPU seconds of the server's process tree until `/api/health` answers
(user + system, from `/proc`, its children included) and the wall seconds to that answer; then the medians and
their ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.prefect_db import migrated_database, start_bare_server  # noqa: E402
from tests.fixtures.processes import stop_process  # noqa: E402

def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and its living descendants, plus what their reaped children spent."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def start_once(home: Path, migrated: bool) -> dict:
    """Start a server under `home` (on a copy of the migrated database if `migrated`), wait for its health answer,
    read its CPU, stop it."""
    import httpx

    home.mkdir(parents=True)
    if migrated:
        migrated_database(home / "prefect.db")
    started = time.perf_counter()
    proc, health = start_bare_server(home, subprocess.DEVNULL)
    try:
        # polled here every 0.1 s, not by the fixtures' `wait_healthy` (0.5 s, then 1 s more): the time is the figure
        while True:
            try:
                if httpx.get(health, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:  # not listening yet
                pass
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}")
            time.sleep(0.1)
        wall_s = time.perf_counter() - started
        cpu_s = tree_cpu_s(proc.pid)
    finally:
        stop_process(proc, group=True, timeout_s=30)
    return {"database": "migrated copy" if migrated else "new", "cpu_s": round(cpu_s, 2), "wall_s": round(wall_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    migrated_database(Path(tempfile.mkdtemp()) / "warm.db")  # the template is made before anything is timed
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for migrated in (False, True):
                run = start_once(Path(scratch) / f"{repeat}-{int(migrated)}", migrated)
                runs.append(run)
                print(f"{run['database']:>13}: {run['cpu_s']:5.1f} CPU-s, {run['wall_s']:5.1f} s to answer", flush=True)
    summary = {}
    for name in ("new", "migrated copy"):
        mine = [r for r in runs if r["database"] == name]
        summary[name] = {"cpu_s": statistics.median(r["cpu_s"] for r in mine),
                         "wall_s": statistics.median(r["wall_s"] for r in mine)}
    cpu_ratio = summary["new"]["cpu_s"] / summary["migrated copy"]["cpu_s"]
    wall_ratio = summary["new"]["wall_s"] / summary["migrated copy"]["wall_s"]
    print(f"medians: new {summary['new']['cpu_s']:.1f} CPU-s / {summary['new']['wall_s']:.1f} s, migrated copy "
          f"{summary['migrated copy']['cpu_s']:.1f} CPU-s / {summary['migrated copy']['wall_s']:.1f} s: "
          f"{cpu_ratio:.2f}x less CPU, {wall_ratio:.2f}x sooner")
    if args.out:
        args.out.write_text(json.dumps({"runs": runs, "medians": summary, "cpu_ratio": cpu_ratio,
                                        "wall_ratio": wall_ratio}, indent=1))


if __name__ == "__main__":
    main()
