"""Judges side by side on held-out labels: the grounding judge and an LLM judge served by a REAL llama.cpp server.

Runs `calibrate_heldout` (the code behind `faithforge eval calibrate`) for each judge on the same labels and
prints, side by side: balanced accuracy, precision, recall, unjudgeable items and seconds per judged summary,
plus the structured-output mode the server accepted. The labels default to FaithForge's crafted set
(`make_calibration_set`, 40 rows: swapped names, changed numbers/places, invented days and quotes, and a changed
verb that the grounding judge cannot see).

    python bench/judge_heldout.py [--labels FILE] [--n 40] [--base-url URL --model NAME] [--no-llm]

Without --base-url it starts llama-cpp-python's server with SmolLM2-135M-Instruct itself (tests/fixtures/llama_server.py,
the code the test suite uses) and stops it afterwards. SmolLM2-135M is far too small to judge: its row shows what
a weak LLM judge looks like, not what qwen3:8b would score.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # one implementation of "start the server": the test fixture's


def row(name: str, judge, examples, labels: Path) -> dict:
    from faithforge.evaluation.heldout import calibrate_heldout

    started = time.perf_counter()
    result = calibrate_heldout(judge, examples, labels_path=labels)
    seconds = time.perf_counter() - started
    t = result.test
    return {"judge": name, "bacc": t.balanced_accuracy, "precision": t.precision, "recall": t.recall,
            "n": t.n, "unjudgeable": t.unjudgeable, "s_per_item": seconds / max(1, t.n)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--base-url")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--no-llm", action="store_true")
    args = parser.parse_args()

    from faithforge.evaluation import get_judge
    from faithforge.evaluation.calibration import make_calibration_set, read_labels

    tmp = Path(tempfile.mkdtemp(prefix="ff-judge-bench-"))
    labels = args.labels or make_calibration_set(tmp / "crafted.jsonl", n=args.n, seed=0)
    examples = read_labels(labels)
    rows = [row("grounding", get_judge("grounding"), examples, labels)]
    mode = "-"
    if not args.no_llm:
        proc = None
        base_url = args.base_url
        if base_url is None:
            from tests.fixtures.llama_server import _stop, start_llama_server

            server, proc = start_llama_server(tmp / "server.log")
            base_url, args.model = server.root_url, server.model
        try:
            from faithforge.backends import make_backend
            from faithforge.evaluation.llm import LlmJudge

            judge = LlmJudge(make_backend("openai", args.model, base_url=base_url, stream=False), max_tokens=256,
                             max_claims=4)
            rows.append(row(f"llm ({args.model})", judge, examples, labels))
            mode = judge.structured_output
        finally:
            if proc is not None:
                _stop(proc)

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    print(f"labels: {labels} ({len(examples)} rows; reported on the held-out split)")
    print(f"{'judge':<34}{'BAcc':>6}{'prec':>6}{'recall':>7}{'n':>4}{'unjudg':>7}{'s/item':>8}")
    for r in rows:
        print(f"{r['judge']:<34}{f(r['bacc']):>6}{f(r['precision']):>6}{f(r['recall']):>7}{r['n']:>4}"
              f"{r['unjudgeable']:>7}{r['s_per_item']:>8.2f}")
    print(f"llm structured output: {mode}")


if __name__ == "__main__":
    main()
