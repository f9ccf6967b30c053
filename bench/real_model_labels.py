"""Blind hand labels of `faithforge demo --real`'s test answers, and every judge measured on them (issue 23, item 5).

    python bench/real_model_labels.py --export WORKSPACE/reports/eval-RUN OUT_DIR --seed S
    python bench/real_model_labels.py --score LABELS KEY [--likelihood-model DIR]

`--export` takes the same 100 test questions before and after DPO (chosen by a hash of the seed and the item, so
the choice depends on nothing the judges said), shuffles the 200 answers with the model hidden, and writes a
labeling file (`token`, `source`, `output`, empty `label`, `nonanswer`, `span`) and, apart, the key (which model,
which item, the measuring judge's verdict). Labelers fill `label` (`unsupported` when the answer states
anything the document does not support), `nonanswer` (the answer dodges the question, e.g. "on the day he
delivered the books") and `span`.

`--score` prints, per model (before / after DPO): the hand-label rate, the non-answers, and each judge's rate,
precision and recall against the hand labels — `grounding` (the demo's pair chooser), `grounded-qa` (its
measuring judge) and, with `--likelihood-model`, `likelihood` at its default threshold — then the paired
difference after − before by hand labels. A judge's recall on AFTER answers is the figure that says whether DPO
moved the errors into its blind spots.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("before", "after")


def export(evaluation: Path, out: Path, seed: int, items: int = 100) -> tuple[Path, Path]:
    from faithforge.evaluation.labeling import read_label_items

    answers = [a for a in read_label_items(evaluation) if a.model in MODELS]
    ids = sorted({a.meta["item"] for a in answers}, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    chosen = set(ids[:items])
    picked = [a for a in answers if a.meta["item"] in chosen]
    random.Random(f"blind-qa:{seed}").shuffle(picked)
    out.mkdir(parents=True, exist_ok=True)
    labeling, key = out / f"labeling-qa-seed{seed}.jsonl", out / f"key-qa-seed{seed}.jsonl"
    tokens = [f"q{seed}-{n:04d}" for n in range(len(picked))]
    labeling.write_text("".join(json.dumps({"token": t, "source": a.source, "output": a.summary, "label": "",
                                            "nonanswer": None, "span": ""}) + "\n" for t, a in zip(tokens, picked)))
    key.write_text("".join(json.dumps({"token": t, "model": a.model, "item": a.meta["item"],
                                       "judge": a.meta.get("judge"), "judge_hallucinated": a.judge_hallucinated})
                           + "\n" for t, a in zip(tokens, picked)))
    return labeling, key


def _judges(likelihood_model: str | None) -> dict:
    from faithforge.evaluation.judges import get_judge

    judges = {"grounding": get_judge("grounding"), "grounded-qa": get_judge("grounded-qa")}
    if likelihood_model:
        from faithforge.core.config import EvaluateConfig
        from faithforge.evaluation.judge_options import judge_options

        judges["likelihood"] = get_judge("likelihood", **judge_options(EvaluateConfig(judge="likelihood"),
                                                                       base_model=likelihood_model))
    return judges


def score(labeling: Path, key: Path, likelihood_model: str | None = None, seed: int = 0) -> list[str]:
    from faithforge.evaluation.labeling import agreement
    from faithforge.evaluation.metrics import paired_bootstrap

    keys = {r["token"]: r for r in map(json.loads, key.read_text().splitlines())}
    rows = [r for r in map(json.loads, labeling.read_text().splitlines()) if r.get("label") in ("supported",
                                                                                                   "unsupported")]
    judges = _judges(likelihood_model)
    verdicts = {name: {r["token"]: judge.judge(r["source"], r["output"]).hallucinated for r in rows}
                for name, judge in judges.items()}
    lines = [f"{len(rows)} hand labels of demo --real test answers"]
    by_model: dict[str, dict[str, bool]] = {m: {} for m in MODELS}
    for model in MODELS:
        mine = [r for r in rows if keys[r["token"]]["model"] == model]
        human = [r["label"] == "unsupported" for r in mine]
        by_model[model] = {keys[r["token"]]["item"]: h for r, h in zip(mine, human)}
        nonanswers = sum(bool(r.get("nonanswer")) for r in mine)
        lines.append(f"{model}: hand-label rate {_pct(sum(human) / len(human))} (n {len(human)}), non-answers "
                     f"{nonanswers}")
        for name in judges:
            a = agreement([verdicts[name][r["token"]] for r in mine], human)
            lines.append(f"  {name:<12} rate {_pct(a.judge_rate)}  precision {_pct(a.precision)}  recall "
                         f"{_pct(a.recall)}")
    both = sorted(set(by_model["before"]) & set(by_model["after"]))
    d = paired_bootstrap([float(by_model["before"][i]) for i in both], [float(by_model["after"][i]) for i in both],
                         samples=2000, confidence=0.95, seed=seed)
    lines.append(f"hand labels, paired over {d.n} questions: {_pct(d.before)} → {_pct(d.after)}, after − before "
                 f"{_pct(d.difference)} [{_pct(d.ci_low)}, {_pct(d.ci_high)}]")
    return lines


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, nargs=2, metavar=("EVALUATION", "OUT"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score", type=Path, nargs=2, metavar=("LABELS", "KEY"))
    parser.add_argument("--likelihood-model", help="also measure the likelihood judge with this causal LM folder")
    args = parser.parse_args()
    if args.export:
        labeling, key = export(*args.export, seed=args.seed)
        print(f"labeling file {labeling}; key {key} (keep it from the labeler)")
    if args.score:
        print("\n".join(score(*args.score, likelihood_model=args.likelihood_model, seed=args.seed)))


if __name__ == "__main__":
    main()
