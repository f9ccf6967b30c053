"""The grounding judge against hand labels of real SmolLM2-135M-Instruct answers on the grounded-qa task.

    python bench/judge_precision.py [--labels tests/data/smollm2_grounded_qa_labels.jsonl]

Every row of the labeled set is a real greedy answer, labeled by a person who read the document and the answer
(`label`: faithful | hallucinated; `span`: the unsupported words). Hallucinated is the positive class:
precision = flagged answers that are hallucinated / flagged answers; recall = flagged hallucinated answers /
hallucinated answers; both with Wilson 95% intervals. The judge has no threshold and was not changed after
looking at these labels, so every row is a held-out row. Also printed: how many true positives the judge flags
at the labeled span (a flag elsewhere is a right verdict for a wrong reason), and per category.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_LABELS = ROOT / "tests" / "data" / "smollm2_grounded_qa_labels.jsonl"


def measure(path: Path) -> dict:
    from faithforge.evaluation import get_judge
    from faithforge.evaluation.metrics import wilson_interval

    judge = get_judge("grounding")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    counts = Counter()
    by_category: dict[str, Counter] = {}
    misses, false_flags = [], []
    for row in rows:
        verdict = judge.judge(row["source"], row["summary"])
        truth = row["label"] == "hallucinated"
        cell = {(True, True): "tp", (False, True): "fp", (True, False): "fn", (False, False): "tn"}[
            (truth, verdict.hallucinated)]
        counts[cell] += 1
        by_category.setdefault(row["category"].split("-")[0], Counter())[cell] += 1
        if cell == "tp" and any(_overlaps(f.span, row["summary"], row["span"]) for f in verdict.flags):
            counts["tp_at_span"] += 1
        if cell == "fn":
            misses.append(row["span"])
        if cell == "fp":
            false_flags.append([f.text for f in verdict.flags])
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    flagged, positives = tp + fp, tp + fn
    return {
        "labels": str(path), "n": len(rows), "hallucinated": positives, "flagged": flagged, **dict(counts),
        "precision": round(tp / flagged, 3) if flagged else None,
        "precision_ci95": [round(x, 3) for x in wilson_interval(tp, flagged, 0.95)] if flagged else None,
        "recall": round(tp / positives, 3) if positives else None,
        "recall_ci95": [round(x, 3) for x in wilson_interval(tp, positives, 0.95)] if positives else None,
        "labeled_rate": round(positives / len(rows), 3), "judged_rate": round(flagged / len(rows), 3),
        "by_category": {k: dict(v) for k, v in sorted(by_category.items())},
        "missed_spans": misses, "false_flags": false_flags,
    }


def _overlaps(flag_span, summary: str, labeled: str | None) -> bool:
    if flag_span is None or not labeled or labeled not in summary:
        return False
    start = summary.index(labeled)
    return flag_span[0] < start + len(labeled) and start < flag_span[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    args = p.parse_args()
    print(json.dumps(measure(args.labels), indent=2))


if __name__ == "__main__":
    main()
