"""Prefect's embedded server started by Prefect at the first flow (as before) or by FaithForge first, beside the
imports (faithforge/app/embedded_server.py): wall and CPU seconds of a command until its first flow has run.

Each variant is a fresh interpreter that does what `faithforge demo` does up to its first flow: import the
pipeline flow with torch, transformers, peft and trl, then run a one-task flow. `prefect` lets Prefect start its
server inside the flow call; `faithforge` starts it first. CPU counts the command and its server (the server is
stopped and reaped before the figure is read). Both run alternately on copies of one migrated Prefect database, so
neither finds the other's warm files.

    python bench/embedded_server.py --repeats 3 --out bench/results/embedded_server-DATE.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IMPORTS = "import faithforge.flows.pipeline, torch, transformers, peft, trl"
FLOW = """
from prefect import flow, task

@task
def one() -> int:
    return 1

@flow(name="bench-first-flow")
def first() -> int:
    return one()
"""

VARIANTS = {
    "prefect": f"""
{IMPORTS}
{FLOW}
assert first() == 1
""",
    "faithforge": f"""
from faithforge.app.embedded_server import embedded_server
with embedded_server() as server:
    {IMPORTS}
    exec({FLOW!r})
    server.wait_until_ready()
    assert first() == 1
""",
}

MEASURE = """
import resource, sys, time
started = time.perf_counter()
exec(compile(sys.argv[1], "variant", "exec"))
wall = time.perf_counter() - started
import psutil
own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
live = sum(sum(child.cpu_times()[:2]) for child in psutil.Process().children(recursive=True))
print("FIGURES", wall, own.ru_utime + own.ru_stime, reaped.ru_utime + reaped.ru_stime + live,
      "prefect.server.api.server" in sys.modules)
"""


def run(variant: str, home: Path) -> dict:
    from tests.fixtures.prefect_db import home_without_a_server

    env = {**home_without_a_server(home), "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, textwrap.dedent(VARIANTS[variant])], env=env,
                          capture_output=True, text=True, timeout=600)
    total_wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("FIGURES"))
    _, wall, own, children, imported = line.split()
    # The server's CPU: FaithForge's is stopped and reaped by then, Prefect's still runs (it stops at exit).
    return {"wall_to_first_flow_s": round(float(wall), 2), "process_wall_s": round(total_wall, 2),
            "cpu_command_s": round(float(own), 2), "cpu_server_s": round(float(children), 2),
            "cpu_total_s": round(float(own) + float(children), 2), "server_module_imported": imported == "True"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for name in VARIANTS:
                rows[name].append(run(name, Path(scratch) / f"{name}-{repeat}"))
                print(name, repeat, rows[name][-1], flush=True)
    summary = {name: {key: statistics.median(row[key] for row in runs)
                      for key in ("wall_to_first_flow_s", "cpu_command_s", "cpu_total_s")} for name, runs in rows.items()}
    before, after = summary["prefect"], summary["faithforge"]
    print(f"\nmedian of {args.repeats}: wall to the first flow {before['wall_to_first_flow_s']:.1f} s (Prefect starts "
          f"its server) vs {after['wall_to_first_flow_s']:.1f} s (FaithForge starts it first): "
          f"{before['wall_to_first_flow_s'] / after['wall_to_first_flow_s']:.2f}x; CPU of the command "
          f"{before['cpu_command_s']:.1f} vs {after['cpu_command_s']:.1f} s, with its server "
          f"{before['cpu_total_s']:.1f} vs {after['cpu_total_s']:.1f} s")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "median": summary, "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
