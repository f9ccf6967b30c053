"""Where the test suite's CPU goes, by kind of process (issue 28: measure which tests cost most before cutting).

    python bench/suite_cpu.py [--out FILE.json] [-- PYTEST ARGS...]     # runs `python -m pytest -q ARGS`
    python bench/suite_cpu.py --summarize FILE.json                     # the table of a saved run

Runs the suite as a child and, every 0.5 s, reads every process's CPU time (user + system, from `/proc/PID/stat`)
and command line. A process is known by its pid and start time, so a reused pid is a new process; its CPU is its
last reading less its first (a process that existed before the suite, such as a kernel thread, then counts only
what it spent during the run). A process that lived less than 0.5 s may be missed; one that ran on after its last
reading loses at most 0.5 s. Prints CPU-minutes and process counts per kind (Prefect servers, flow-run processes,
demo CLIs, ...), and the suite's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICKS_PER_S = os.sysconf("SC_CLK_TCK")

#: (pattern in the command line, kind), first match wins.
KINDS = [
    (r"uvicorn", "Prefect server's API process (uvicorn: embedded or started)"),
    (r"prefect server start", "Prefect server started by a test (its parent process and services)"),
    (r"prefect worker start", "Prefect worker"),
    (r"prefect\.engine|_workspace_supervisor", "Prefect flow-run process (started by a worker)"),
    (r"llama_cpp\.server", "llama.cpp server"),
    (r"faithforge\.app\.cli demo|main\(\) demo", "`faithforge demo` process"),
    (r"faithforge\.app\.cli", "other `faithforge` command"),
    (r"faithforge\.training\.distributed|torch\.distributed\.run", "distributed training (launcher and ranks)"),
    (r"pipeline_driver", "kill-and-resume pipeline driver"),
    (r"generation\.worker", "generation worker"),
    (r"multiprocessing\.spawn|multiprocessing-fork", "multiprocessing child"),
    (r"exec\(eval\(sys\.stdin", "pytest-xdist worker (tests run in process)"),
    (r"chrom", "Chromium"),
    (r"postgres", "PostgreSQL"),
    (r"pytest", "pytest's main process"),
    (r"orphans", "FaithForge's reaper"),
    (r"python", "other Python process"),
]


def kind_of(command: str) -> str:
    for pattern, kind in KINDS:
        if re.search(pattern, command):
            return kind
    return "other"


def _reading(entry: str) -> tuple[str, float, str] | None:
    """(key pid:start, CPU seconds, command line) of one /proc entry, or None if it is gone or a kernel thread."""
    try:
        with open(f"/proc/{entry}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        if fields[1] == "2":  # a kernel thread (its parent is kthreadd)
            return None
        with open(f"/proc/{entry}/cmdline", "rb") as handle:
            command = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()[:240]
    except (OSError, IndexError):
        return None
    return f"{entry}:{fields[19]}", (int(fields[11]) + int(fields[12])) / TICKS_PER_S, command


def sample_while(proc: subprocess.Popen, every_s: float = 0.5) -> dict[str, dict]:
    """Read every process each `every_s` until `proc` ends: key -> {command, first_cpu_s, last_cpu_s}."""
    seen: dict[str, dict] = {}
    me = str(os.getpid())
    first_sweep = True
    while True:
        done = proc.poll() is not None
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or entry == me:
                continue
            reading = _reading(entry)
            if reading is None:
                continue
            key, cpu_s, command = reading
            row = seen.setdefault(key, {"command": command, "first_cpu_s": cpu_s, "new": not first_sweep})
            row["last_cpu_s"] = cpu_s
            if command:  # the latest: a child read between its fork and its exec showed its parent's
                row["command"] = command
        if done:
            return seen
        first_sweep = False
        time.sleep(every_s)


def summarize(seen: dict[str, dict]) -> list[tuple[str, float, int]]:
    """(kind, CPU-minutes, processes), most CPU first. A process already there at the first reading counts what
    it spent since; a new one counts all of its CPU (its first reading came up to 0.5 s after its start)."""
    cpu, count = Counter(), Counter()
    for row in seen.values():
        spent = row["last_cpu_s"] - (0.0 if row["new"] else row["first_cpu_s"])
        if spent <= 0:
            continue
        kind = kind_of(row["command"])
        cpu[kind] += spent / 60
        count[kind] += 1
    return [(kind, minutes, count[kind]) for kind, minutes in cpu.most_common()]


def print_table(rows: list[tuple[str, float, int]], wall_s: float | None = None) -> None:
    print(f"{'CPU-min':>8} {'processes':>9}  kind")
    for kind, minutes, processes in rows:
        print(f"{minutes:8.2f} {processes:9d}  {kind}")
    print(f"{sum(m for _, m, _ in rows):8.2f} {sum(p for _, _, p in rows):9d}  in all"
          + (f"; the suite's wall time {wall_s / 60:.1f} min" if wall_s else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--summarize", type=Path, default=None, help="print the table of a saved run and exit")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    if args.summarize:
        saved = json.loads(args.summarize.read_text())
        print_table(summarize(saved["processes"]), saved.get("wall_s"))
        return
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", *args.pytest_args], cwd=REPO)
    seen = sample_while(proc)
    wall_s = time.perf_counter() - started
    print_table(summarize(seen), wall_s)
    if args.out:
        args.out.write_text(json.dumps({"wall_s": wall_s, "exit_status": proc.returncode, "processes": seen}))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
