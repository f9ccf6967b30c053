"""What each on-policy pair set in a workspace holds, one row per pairs folder (issue 28, seed 8's question).

    python bench/pair_sets.py WORKSPACE [--json OUT.json]

Reads every `pairs/*/manifest.json` of a `bench/real_model.py` workspace (oldest first) and prints, per folder:
the sampler that drew it, pairs built (train / validation), omission pairs, the sources dropped by reason, and
over the pairs — read from the report's per-pair scores, which are the pair-choosing judge's (`grounding` in
`demo --real`) — the chosen answers' mean key-fact recall and flagged share, the rejected answers' flagged
share, and the words of chosen and rejected answers. It only describes: the groups are compared for a
decision by `bench/compare_draws.py` on the runs' outcomes, with the tests written down before the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def describe(folder: Path) -> dict:
    """One pairs folder's summary (see the module docstring)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    report = manifest["report"]
    rows = [json.loads(line) for name in ("train.jsonl", "val.jsonl") if (folder / name).exists()
            for line in (folder / name).read_text().splitlines() if line.strip()]
    scores = report.get("scores", [])
    chosen_recall = [s["chosen"]["recall"] for s in scores if s["chosen"].get("recall") is not None]
    return {
        "folder": folder.name,
        "sampler": report.get("sampler", "").split(":")[0].split(" on ")[0],  # "llama.cpp on X.gguf" → "llama.cpp"
        "sample_seconds": report.get("sample_seconds"),
        "built": report.get("built"), "train": manifest["counts"]["train"], "val": manifest["counts"]["val"],
        "omission_pairs": report.get("omission_pairs"),
        "dropped_sources": report.get("dropped_sources", {}),
        "chosen_recall": _mean(chosen_recall),
        "chosen_flagged": _mean([float(s["chosen"]["hallucinated"]) for s in scores]),
        "rejected_flagged": _mean([float(s["rejected"]["hallucinated"]) for s in scores]),
        "chosen_words": _mean([len(r["chosen"][-1]["content"].split()) for r in rows]),
        "rejected_words": _mean([len(r["rejected"][-1]["content"].split()) for r in rows]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workspace", type=Path, help="A bench/real_model.py workspace (its pairs/ folder is read).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows here.")
    args = parser.parse_args()
    folders = sorted((p.parent for p in (args.workspace / "pairs").glob("*/manifest.json")),
                     key=lambda p: (p / "manifest.json").stat().st_mtime)
    if not folders:
        raise SystemExit(f"{args.workspace}: no pairs/*/manifest.json; pass a workspace bench/real_model.py ran in")
    rows = [describe(folder) for folder in folders]
    keys = ["sampler", "built", "train", "omission_pairs", "chosen_recall", "chosen_flagged", "rejected_flagged",
            "chosen_words", "rejected_words", "sample_seconds"]
    print("| folder | " + " | ".join(keys) + " | dropped sources |")
    print("|---" * (len(keys) + 2) + "|")
    for row in rows:
        dropped = "; ".join(f"{reason.split(' (')[0]}: {n}" for reason, n in sorted(row["dropped_sources"].items()))
        print(f"| {row['folder']} | " + " | ".join(str(row[k]) for k in keys) + f" | {dropped} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
