"""The real-documents benchmark (issue 24): FaithForge on real news articles, seed by seed, with blind hand labels
as the final word.

Sources: the articles of the QAGS human-label file (bench/data/qags-human-labels.jsonl; CNN/DailyMail `qags-c` by
default), split by the one fixed rule of `faithforge.data.labeled_split`: training and validation articles from
the development half, test articles from the held-out half (no article in two files; the pipeline's overlap guard
is on as always). Each article is cut to its first sentences up to `--max-words` words (CPU time; the cut is
stated in every output). Per seed, `faithforge demo --real --documents DEV --eval-documents HELDOUT` runs as a user
runs it: SmolLM2-135M-Instruct summarizes each article in at most three sentences, on-policy pairs from its own
samples are chosen by `--chooser` (`pairs.judge`; empty: the evaluation judge), LoRA DPO trains beside the
SFT-on-chosen control, and `--measurer` (`evaluate.judge`) measures the test articles. The measurer should be of
another family than the chooser — on the synthetic task the same judge choosing and measuring let DPO move the
errors into its blind spots — and the script says so loudly when they are the same.

Printed per seed: wall time, each model's rate by the measuring judge (Wilson 95%), after − before and
control − before (paired bootstrap 95%), summary length, coverage of the article's lead, refusals and evasive
non-answers.

Hand labels (blind) are the final word: `--export-blind DIR` writes, per seed, a labeling file with every test
output of the model before DPO and after it, shuffled, the model hidden (`labeling-seedS.jsonl`: token, source,
output, an empty `label` and `span`), and the key apart (`key-seedS.jsonl`: token → model, article, the judge's
verdict). Someone who has not seen the key fills in `label` ("unsupported" when the output contains a statement
the article does not support, else "supported") and `span`; `--score LABELS KEY` then prints the rate by hand
labels before → after with a paired 95% interval, and the judge's precision and recall on those labels, per model.

    python bench/real_documents.py --seeds 0 --export-blind bench/out/blind          # ~30 min a seed, 2 cores
    python bench/real_documents.py --seeds 0 --train-articles 6 --test-articles 4 --small   # minutes: a check
    python bench/real_documents.py --score bench/out/blind/labeling-seed0.jsonl bench/out/blind/key-seed0.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

LABELS = REPO / "bench" / "data" / "qags-human-labels.jsonl"
#: Sizes for `--small`: every stage runs, a handful of items (a check that the path works, not a figure).
SMALL = {"pairs": {"samples_per_source": 2}, "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2},
         "evaluate": {"max_new_tokens": 40, "bootstrap_samples": 200}, "reference": {"max_length": 512}}


def cut(text: str, max_words: int) -> str:
    """The article's first sentences up to `max_words` words (at least the first sentence, itself capped)."""
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    words: list[str] = []
    for sentence in sentences:
        more = sentence.split()
        if words and len(words) + len(more) > max_words:
            break
        words += more
    return " ".join(words[:max_words])


def build_files(out: Path, *, datasets: list[str], max_words: int, train_articles: int, test_articles: int,
                seed: int = 0) -> tuple[Path, Path]:
    """(development-half documents, held-out-half documents) as JSONL with `id` and `document`."""
    from faithforge.data.labeled_split import read_labeled_summaries

    rows = [r for r in read_labeled_summaries(LABELS) if r.dataset in datasets]
    by_half: dict[str, dict[str, str]] = {"dev": {}, "heldout": {}}
    for row in rows:  # one article per id; an article text never sits in both halves (checked below)
        by_half[row.half].setdefault(row.id, cut(row.source, max_words))
    shared = set(by_half["dev"].values()) & set(by_half["heldout"].values())
    if shared:
        raise SystemExit(f"{len(shared)} article(s) occur in both halves; the split must keep them apart")
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for half, count, name in (("dev", train_articles, "dev-documents.jsonl"),
                              ("heldout", test_articles, "heldout-documents.jsonl")):
        ids = sorted(by_half[half])
        random.Random(f"{seed}:{half}").shuffle(ids)
        path = out / name
        path.write_text("".join(json.dumps({"id": i, "document": by_half[half][i]}) + "\n" for i in ids[:count]))
        files.append(path)
    return files[0], files[1]


def run_seed(seed: int, workspace: Path, dev: Path, heldout: Path, config: dict) -> dict:
    from demo_run import run_demo

    workspace.mkdir(parents=True, exist_ok=True)
    config_file = workspace.parent / f"real-documents-seed{seed}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    wall, stages = run_demo(workspace, seed, "--real", "--documents", str(dev), "--eval-documents", str(heldout),
                            "-c", str(config_file))
    evaluation = stages["evaluate"].outputs
    report = json.loads((Path(evaluation["path"]) / "report.json").read_text())
    return {"seed": seed, "wall_s": wall, "evaluation": evaluation["path"], "items": evaluation["items"],
            "stage_s": {k: v.wall_seconds for k, v in stages.items()}, "report": report,
            "pairs": stages["pairs"].outputs.get("counts")}


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def describe(row: dict, chooser: str, measurer: str) -> list[str]:
    report = row["report"]
    c, control = report["comparison"], report.get("control")
    models = [("before DPO", c["before"]), ("after DPO", c["after"])] + ([("SFT control", control["after"])]
                                                                          if control else [])
    lines = [f"seed {row['seed']}: {row['wall_s'] / 60:.1f} min wall, {row['items']} test articles, pairs "
             f"{row['pairs']}, chooser `{chooser}`, measured by `{measurer}`",
             "| model | rate (95% CI) | length (words) | lead coverage | refusals | evasive |", "|---|---|---:|---:|---:|---:|"]
    for name, m in models:
        ci = m["rate_ci"]
        lines.append(f"| {name} | {pct(m['rate'])} [{pct(ci[0])}, {pct(ci[1])}] | {m['mean_summary_length']:.1f} | "
                     f"{pct(m.get('coverage'))} | {m.get('refusals', 0)} | {m.get('evasive', 0)} |")
    for name, comparison in (("after − before", c), ("control − before", control)):
        if comparison:
            d = comparison["rate"]
            lines.append(f"{name}: {pct(d['difference'])} [{pct(d['ci_low'])}, {pct(d['ci_high'])}] (paired "
                         f"bootstrap 95%, n {d['n']})")
    return lines


def export_blind(evaluation: Path, out: Path, seed: int) -> tuple[Path, Path]:
    """Before and after outputs, shuffled, the model hidden (labeling file); who wrote what in a key file apart."""
    from faithforge.evaluation.labeling import read_label_items

    items = [i for i in read_label_items(evaluation) if i.model in ("before", "after")]
    random.Random(f"blind:{seed}").shuffle(items)
    out.mkdir(parents=True, exist_ok=True)
    labeling, key = out / f"labeling-seed{seed}.jsonl", out / f"key-seed{seed}.jsonl"
    tokens = [f"s{seed}-{n:04d}" for n in range(len(items))]
    labeling.write_text("".join(json.dumps({"token": t, "source": i.source, "output": i.summary, "label": "",
                                            "span": ""}) + "\n" for t, i in zip(tokens, items)))
    key.write_text("".join(json.dumps({"token": t, "model": i.model, "article": i.meta.get("item"),
                                       "judge": i.meta.get("judge"), "judge_hallucinated": i.judge_hallucinated})
                           + "\n" for t, i in zip(tokens, items)))
    return labeling, key


def score(labeling: Path, key: Path, seed: int = 0) -> list[str]:
    """Hand-label rates before → after (paired over articles labeled in both), and the judge against the labels."""
    from faithforge.evaluation.labeling import agreement
    from faithforge.evaluation.metrics import paired_bootstrap

    keys = {r["token"]: r for r in map(json.loads, key.read_text().splitlines())}
    labels = {}
    for row in map(json.loads, labeling.read_text().splitlines()):
        if row.get("label") in ("supported", "unsupported"):
            labels[row["token"]] = row["label"] == "unsupported"
    by_model: dict[str, dict[str, tuple[bool, bool | None]]] = {"before": {}, "after": {}}
    for token, hallucinated in labels.items():
        k = keys[token]
        by_model[k["model"]][k["article"]] = (hallucinated, k["judge_hallucinated"])
    lines = [f"{len(labels)} hand labels ({len(by_model['before'])} before, {len(by_model['after'])} after)"]
    for model, rows in by_model.items():
        judged = [(j, h) for h, j in rows.values() if j is not None]
        a = agreement([j for j, _ in judged], [h for _, h in judged])
        lines.append(f"{model}: hand-label rate {pct(a.human_rate)}, judge rate {pct(a.judge_rate)}, judge precision "
                     f"{pct(a.precision)} recall {pct(a.recall)} (n {a.n}, judge {next(iter(keys.values()))['judge']})")
    both = sorted(set(by_model["before"]) & set(by_model["after"]))
    if both:
        d = paired_bootstrap([float(by_model["before"][i][0]) for i in both],
                             [float(by_model["after"][i][0]) for i in both], samples=2000, confidence=0.95, seed=seed)
        lines.append(f"hand labels, paired over {d.n} articles: {pct(d.before)} → {pct(d.after)}, after − before "
                     f"{pct(d.difference)} [{pct(d.ci_low)}, {pct(d.ci_high)}]")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--datasets", nargs="+", default=["qags-c"], help="qags-c (CNN/DM), qags-x (BBC/XSum)")
    parser.add_argument("--max-words", type=int, default=250, help="each article cut to its first sentences")
    parser.add_argument("--train-articles", type=int, default=40, help="development-half articles (train + val)")
    parser.add_argument("--test-articles", type=int, default=100, help="held-out-half articles measured")
    parser.add_argument("--chooser", default=None, help="pairs.judge (empty: the measurer chooses too)")
    parser.add_argument("--measurer", default="grounding", help="evaluate.judge: a judge of another family")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--small", action="store_true", help="tiny sizes: checks the path, reports no figure")
    parser.add_argument("--workspace", type=Path, default=REPO / "bench" / "out" / "real-documents")
    parser.add_argument("--export-blind", type=Path, default=None, metavar="DIR")
    parser.add_argument("--score", type=Path, nargs=2, default=None, metavar=("LABELS", "KEY"))
    args = parser.parse_args()
    if args.score:
        print("\n".join(score(*args.score)))
        return
    dev, heldout = build_files(args.workspace / "documents", datasets=args.datasets, max_words=args.max_words,
                               train_articles=args.train_articles, test_articles=args.test_articles)
    config: dict = json.loads(json.dumps(SMALL)) if args.small else {}
    config.setdefault("evaluate", {})["judge"] = args.measurer
    if args.chooser:
        config.setdefault("pairs", {})["judge"] = args.chooser
    for assignment in args.assignments:
        key, _, value = assignment.partition("=")
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    chooser = args.chooser or args.measurer
    if chooser == args.measurer:
        print(f"WARNING: `{chooser}` chooses the pairs and measures the result: the rate is not independent of what "
              "DPO was trained to please; only the hand labels (--export-blind) are evidence here", flush=True)
    print(f"articles cut to ≤ {args.max_words} words; dev {dev} ({sum(1 for _ in dev.open())}), held-out {heldout} "
          f"({sum(1 for _ in heldout.open())})", flush=True)
    for seed in args.seeds:
        row = run_seed(seed, args.workspace / f"seed{seed}", dev, heldout, config)
        print("\n".join(describe(row, chooser, args.measurer)), flush=True)
        if args.export_blind:
            labeling, key = export_blind(Path(row["evaluation"]), args.export_blind, seed)
            print(f"blind labeling file {labeling}; key {key} (keep it from the labeler)", flush=True)


if __name__ == "__main__":
    main()
