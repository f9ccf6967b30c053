"""Where the test suite's CPU goes, by kind of process (issue 28: measure which tests cost most before cutting).

    python bench/suite_cpu.py [--out FILE.json] [-- PYTEST ARGS...]     # runs `python -m pytest -q ARGS`
    python bench/suite_cpu.py --summarize FILE.json                     # the table of a saved run

Runs the suite as a child and, every 0.5 s, reads every process's CPU time (user + system, from `/proc/PID/stat`)
and command line. A process is known by its pid and start time, so a reused pid is a new process; its CPU is its
last reading less its first (a process that existed before the suite, such as a kernel thread, then counts only
what it spent during the run). A process that lived less than 0.5 s may be missed; one that ran on after its last
reading loses at most 0.5 s. Prints CPU-minutes and process counts per kind (Prefect servers, flow-run processes,
demo CLIs, ...), the suite's wall time, and how busy the whole machine was minute by minute (`/proc/stat`): a
suite whose cores are all busy throughout is made faster only by spending less CPU; one with idle minutes (a
long test left alone at the end) by starting it earlier.
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


def machine_jiffies() -> tuple[int, int]:
    """(busy, all) clock ticks of every core since boot, from the `cpu` line of `/proc/stat` (idle and iowait are
    not busy)."""
    with open("/proc/stat") as handle:
        ticks = [int(x) for x in handle.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def busy_by_minute(readings: list[tuple[float, int, int]]) -> list[float]:
    """Share of the machine's cores busy (0..1) in each whole minute of `readings` ((seconds since the start,
    busy ticks, all ticks), in order); the last partial minute is counted if it is at least 10 s long."""
    shares, start = [], 0
    for index, (seconds, _, _) in enumerate(readings):
        whole = seconds - readings[start][0] >= 60
        last = index == len(readings) - 1 and seconds - readings[start][0] >= 10
        if whole or last:
            busy = readings[index][1] - readings[start][1]
            total = readings[index][2] - readings[start][2]
            shares.append(busy / total if total else 0.0)
            start = index
    return shares


def sample_while(proc: subprocess.Popen, every_s: float = 0.5,
                 machine: list[tuple[float, int, int]] | None = None) -> dict[str, dict]:
    """Read every process each `every_s` until `proc` ends: key -> {command, first_cpu_s, last_cpu_s}. With
    `machine`, each sweep also appends (seconds since the start, busy ticks, all ticks) of the whole machine."""
    seen: dict[str, dict] = {}
    started = time.monotonic()
    me = str(os.getpid())
    first_sweep = True
    while True:
        done = proc.poll() is not None
        if machine is not None:
            machine.append((time.monotonic() - started, *machine_jiffies()))
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


def print_table(rows: list[tuple[str, float, int]], wall_s: float | None = None,
                busy: list[float] | None = None) -> None:
    print(f"{'CPU-min':>8} {'processes':>9}  kind")
    for kind, minutes, processes in rows:
        print(f"{minutes:8.2f} {processes:9d}  {kind}")
    print(f"{sum(m for _, m, _ in rows):8.2f} {sum(p for _, _, p in rows):9d}  in all"
          + (f"; the suite's wall time {wall_s / 60:.1f} min" if wall_s else ""))
    if busy:
        print("the machine's cores busy, minute by minute (%): " + " ".join(f"{round(100 * b)}" for b in busy))
        print(f"minutes under 75% busy: {sum(b < 0.75 for b in busy)} of {len(busy)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--summarize", type=Path, default=None, help="print the table of a saved run and exit")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    if args.summarize:
        saved = json.loads(args.summarize.read_text())
        print_table(summarize(saved["processes"]), saved.get("wall_s"), saved.get("busy_by_minute"))
        return
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", *args.pytest_args], cwd=REPO)
    machine: list[tuple[float, int, int]] = []
    seen = sample_while(proc, machine=machine)
    wall_s = time.perf_counter() - started
    busy = busy_by_minute(machine)
    print_table(summarize(seen), wall_s, busy)
    if args.out:
        args.out.write_text(json.dumps({"wall_s": wall_s, "exit_status": proc.returncode, "processes": seen,
                                        "busy_by_minute": busy}))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
