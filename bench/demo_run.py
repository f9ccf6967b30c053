"""Run `faithforge demo` once as a user would (a subprocess) and read back what its run store recorded.

Shared by the benchmarks that run the demo per seed (bench/demo_seeds.py, bench/real_model.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def run_demo(workspace: Path, seed: int, *extra: str) -> tuple[float, dict]:
    """(wall seconds of the whole command, the newest run's stage records by stage name); exits on failure."""
    from sqlalchemy import select

    from faithforge.core.store import Run, Store

    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "from faithforge.app.cli import main; main()", "demo", "--seed",
                           str(seed), "-w", str(workspace), *extra], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"seed {seed} failed:\n{done.stderr[-3000:]}")
    store = Store(f"sqlite:///{workspace / 'faithforge.db'}")
    with store.session() as session:
        run = session.scalars(select(Run).order_by(Run.created_at.desc())).first()
    return wall, {stage.stage: stage for stage in store.stages(run.id)}
