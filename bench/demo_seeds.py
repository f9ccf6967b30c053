"""Run `faithforge demo` for several seeds, each in a fresh workspace, and print one table.

Per seed: wall time of the whole command (Prefect start-up included), wall time of every stage, the
hallucination rate before / after DPO / after the SFT control with 95% intervals, the paired difference, and
fact recall. Figures are read back from each run's store, so they are what the demo itself recorded.

    python bench/demo_seeds.py --seeds 0 1 2 [--out bench/out/demo_seeds.md]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from demo_run import run_demo

STAGES = ("generate", "warm_start", "pairs", "reference", "train", "control", "evaluate")


def run_seed(seed: int, root: Path) -> dict:
    workspace = root / f"seed{seed}"
    shutil.rmtree(workspace, ignore_errors=True)
    wall, stages = run_demo(workspace, seed)
    ev = stages["evaluate"].outputs
    return {"seed": seed, "wall_s": wall, "stage_s": {k: stages[k].wall_seconds for k in STAGES if k in stages},
            "models": ev["models"], "difference": ev["difference"], "control": ev["control_difference"],
            "items": ev["items"], "eval_items_per_s": ev["items_per_second"]}


def pct(x) -> str:
    return f"{100 * x:.1f}%"


def table(rows: list[dict]) -> str:
    head = ("| seed | demo wall | " + " | ".join(STAGES) + " | rate before [95% CI] | after DPO | after SFT control "
            "| Δ after−before [95% CI] | McNemar p | recall before → DPO → control |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        m = r["models"]
        d = r["difference"]["rate"]
        ci = lambda x: f"[{pct(x['rate_ci'][0])}, {pct(x['rate_ci'][1])}]"  # noqa: E731
        lines.append(
            f"| {r['seed']} | {r['wall_s']:.0f} s | " + " | ".join(f"{r['stage_s'].get(k, 0):.1f} s" for k in STAGES)
            + f" | {pct(m['before']['rate'])} {ci(m['before'])} | {pct(m['after']['rate'])} {ci(m['after'])} | "
            f"{pct(m['control']['rate'])} {ci(m['control'])} | {pct(d['difference'])} [{pct(d['ci_low'])}, "
            f"{pct(d['ci_high'])}] | {r['difference']['mcnemar_p']:.1e} | {m['before']['recall']:.3f} → "
            f"{m['after']['recall']:.3f} → {m['control']['recall']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="Also write the table and raw JSON here.")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ff-demo-seeds-"))
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(seed, root))
        print(f"seed {seed}: {rows[-1]['wall_s']:.0f} s", flush=True)
    text = table(rows)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n\n```json\n" + json.dumps(rows, indent=1) + "\n```\n")


if __name__ == "__main__":
    main()
