"""The real-model benchmark (issue 14): `faithforge demo --real` on SmolLM2-135M-Instruct, several seeds, one table.

Per seed, in one shared workspace (the imported model and every stage a seed shares are reused): wall time of
the whole command and of each stage, then — on the split you name — the hallucination rate of the model before
DPO, after LoRA DPO and after the compute-matched SFT-on-chosen control (each with its Wilson 95% interval), the
paired differences after − before and control − before (paired bootstrap 95% CI, from the run's own report),
DPO − control on the same items (paired bootstrap here, same protocol), and answer accuracy on the answerable
questions (key-fact recall) for each model. The grounding judge's measured precision / recall on the labeled
real outputs is printed beside the rates.

Choose settings with `--split val` (the evaluation then reads the validation sources, which no stage trains on);
report with `--split test` and the settings chosen there, never the other way round.

    python bench/real_model.py --split val --seeds 0 --set train.learning_rate=3e-4
    python bench/real_model.py --split test --seeds 0 1 2 --out bench/out/real_model.md
    python bench/real_model.py --pool bench/out/a.md bench/out/b.md   # pooled answer accuracy, nothing re-run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from demo_run import run_demo

STAGES = ("generate", "pairs", "reference", "train", "control", "evaluate")


def _nested(assignments: list[str], split: str) -> dict:
    """`a.b=v` strings → a nested config dict (the same rules as `faithforge demo --set`), plus the split."""
    from faithforge.core.config import assignment_overrides, deep_merge
    from faithforge.core.errors import UserError

    try:
        return deep_merge(assignment_overrides(assignments), {"evaluate": {"split": split}})
    except UserError as exc:
        raise SystemExit(str(exc)) from None


def run_seed(seed: int, workspace: Path, config: dict) -> dict:
    workspace.mkdir(parents=True, exist_ok=True)
    config_file = workspace.parent / f"real-model-seed{seed}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    wall, stages = run_demo(workspace, seed, "--real", "-c", str(config_file))
    evaluation = stages["evaluate"].outputs
    report = json.loads((Path(evaluation["path"]) / "report.json").read_text())
    split = evaluation.get("split", "test")
    rows = list(map(json.loads, Path(stages["generate"].outputs["files"][split]).read_text().splitlines()))
    sources = {row["id"]: row["source"] for row in rows}
    key_facts = {row["id"]: list(row.get("key_facts") or []) for row in rows}
    return {"seed": seed, "wall_s": wall, "stage_s": {k: stages[k].wall_seconds for k in STAGES if k in stages},
            "reused": [k for k in STAGES if k in stages and stages[k].reused],
            "split": evaluation.get("split", "test"), "items": evaluation["items"], "config": config,
            "report": evaluation["path"], **summarize(report, seed),
            "attribution": rejudge(report, sources, seed),
            "accuracy": per_item_accuracy(report, sources, key_facts)}


def _answer_accuracy(model: dict) -> tuple[int, int]:
    """(answered correctly, answerable items): key-fact recall 1.0 on the items that have a key fact."""
    scored = [item["recall"] for item in model["items"] if item["recall"] is not None]
    return sum(1 for r in scored if r >= 1.0), len(scored)


def paired_difference(before: list[float], after: list[float], seed: int) -> dict:
    """mean(after − before) with the pipeline's own paired bootstrap interval (95%, 2,000 resamples, as in the
    run's report), as the JSON the table reads."""
    from faithforge.evaluation.metrics import paired_bootstrap

    d = paired_bootstrap(before, after, samples=2000, confidence=0.95, seed=seed)
    return {"difference": d.difference, "ci_low": d.ci_low, "ci_high": d.ci_high, "n": d.n}


def summarize(report: dict, seed: int) -> dict:
    comparison, control = report["comparison"], report["control"]
    models = {"before": comparison["before"], "dpo": comparison["after"]}
    if control:
        models["control"] = control["after"]
    out = {"models": {}, "dpo_minus_before": comparison["rate"], "mcnemar_p": comparison["mcnemar_p"],
           "recall_dpo_minus_before": comparison["recall"],
           "calibration": comparison["before"].get("calibrations", {})}
    for label, model in models.items():
        correct, answerable = _answer_accuracy(model)
        out["models"][label] = {"rate": model["rate"], "rate_ci": model["rate_ci"], "n": model["n_judged"],
                                "hallucinated": model["hallucinated"], "recall": model["recall"],
                                "answer_accuracy": [correct, answerable], "truncated": model.get("n_truncated", 0)}
    if control:
        out["control_minus_before"] = control["rate"]
        out["recall_control_minus_before"] = control["recall"]
        dpo = {i["id"]: i for i in comparison["after"]["items"] if i["judgeable"]}
        sft = {i["id"]: i for i in control["after"]["items"] if i["judgeable"]}
        ids = sorted(dpo.keys() & sft.keys())
        out["dpo_minus_control"] = paired_difference([float(sft[i]["hallucinated"]) for i in ids],
                                                     [float(dpo[i]["hallucinated"]) for i in ids], seed)
    return out


def _answers_by_model(report: dict) -> dict[str, list[dict]]:
    """The report's evaluated items per model: before, dpo and (when it ran) control."""
    answers = {"before": report["comparison"]["before"]["items"], "dpo": report["comparison"]["after"]["items"]}
    if report["control"]:
        answers["control"] = report["control"]["after"]["items"]
    return answers


def second_judge(report: dict) -> str:
    """The judge that did not write the run's rates: `grounding` (the judge that chose the pairs) when the run measured
    with `grounded-qa` (`demo --real`'s headline), `grounded-qa` otherwise."""
    return "grounding" if report["comparison"].get("judge") == "grounded-qa" else "grounded-qa"


def rejudge(report: dict, sources: dict[str, str], seed: int) -> dict:
    """Every model's answers judged again by the second judge (`second_judge`): `grounded-qa`
    (faithforge/evaluation/grounded_qa_judge.py) also catches values attached to the wrong person, `grounding` only
    invented values. The pairs were chosen by `grounding`, so the two together show whether training moved
    inventions into the chooser's blind spot instead of removing them."""
    from faithforge.evaluation import get_judge

    name = second_judge(report)
    judge = get_judge(name)
    answers = _answers_by_model(report)
    flagged = {label: {i["id"]: float(judge.judge(sources[i["id"]], i["summary"], truncated=i["truncated"]).hallucinated)
                       for i in items} for label, items in answers.items()}
    ids = sorted(flagged["before"])
    out = {"judge": name, "rates": {label: sum(v.values()) / len(v) for label, v in flagged.items()}, "n": len(ids)}
    for label in [k for k in flagged if k != "before"]:
        out[f"{label}_minus_before"] = paired_difference([flagged["before"][i] for i in ids],
                                                         [flagged[label][i] for i in ids], seed)
    if "control" in flagged:
        out["dpo_minus_control"] = paired_difference([flagged["control"][i] for i in ids],
                                                     [flagged["dpo"][i] for i in ids], seed)
    return out


def per_item_accuracy(report: dict, sources: dict[str, str], key_facts: dict[str, list[str]]) -> dict:
    """Answer accuracy per answerable item and model, two ways: {"recall": {model: {id: 1.0 | 0.0}}, "checked": …}.
    `recall`: key-fact recall 1 (the pipeline's measure). `checked`: that, and the grounded-qa judge finds nothing
    wrong in the answer (bench/answer_accuracy.py scores both against the hand labels: checked agrees with reading
    on 59/60 validation and 21/21 held-out answers, recall on 52/60 and 20/21)."""
    from answer_accuracy import checked_correct

    answers = _answers_by_model(report)
    out: dict = {"recall": {}, "checked": {}}
    for label, items in answers.items():
        answerable = [i for i in items if key_facts[i["id"]]]
        out["recall"][label] = {i["id"]: float((i["recall"] or 0.0) >= 1.0) for i in answerable}
        out["checked"][label] = {i["id"]: float(checked_correct(sources[i["id"]], i["summary"], key_facts[i["id"]],
                                                                 i["truncated"])) for i in answerable}
    return out


def pooled_accuracy(rows: list[dict], seed: int = 0) -> str:
    """Answer accuracy pooled over the seeds, both measures, with paired bootstrap 95% CIs of the differences."""
    lines = ["", "Answer accuracy on the answerable questions, pooled over the seeds (paired bootstrap 95% CI):", "",
             "| measure | before | after DPO | SFT control | Δ DPO−before [95% CI] | Δ control−before [95% CI] |",
             "|---|---|---|---|---|---|"]
    for measure, name in (("recall", "recall 1 (the pipeline's)"),
                          ("checked", "checked (recall 1, and grounded-qa finds nothing wrong)")):
        pooled: dict[str, list[float]] = {}
        for r in rows:
            ids = sorted(r["accuracy"][measure]["before"])
            for label, values in r["accuracy"][measure].items():
                pooled.setdefault(label, []).extend(values[i] for i in ids)
        n = len(pooled["before"])

        def share(label: str) -> str:
            return "–" if label not in pooled else f"{int(sum(pooled[label]))}/{n} ({pct(sum(pooled[label]) / n)})"

        def delta(label: str) -> str:
            if label not in pooled:
                return "–"
            d = paired_difference(pooled["before"], pooled[label], seed)
            return f"{pct(d['difference'])} [{pct(d['ci_low'])}, {pct(d['ci_high'])}]"

        lines.append(f"| {name} | {share('before')} | {share('dpo')} | {share('control')} | {delta('dpo')} | "
                     f"{delta('control')} |")
    return "\n".join(lines)


def read_out(path: Path) -> list[dict]:
    """The seeds' rows an earlier `--out` file recorded (its JSON block)."""
    text, fence = path.read_text(), "```json\n"
    start = text.find(fence)
    if start < 0:
        raise SystemExit(f"{path}: no ```json block; pass a file this script wrote with --out")
    start += len(fence)
    return json.loads(text[start: text.index("```", start)])


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def table(rows: list[dict]) -> str:
    head = ("| seed | split | n | wall | " + " | ".join(STAGES) + " | before [95% CI] | after DPO | SFT control | "
            "Δ DPO−before [95% CI] | Δ control−before [95% CI] | Δ DPO−control [95% CI] | "
            "answer accuracy before → DPO → control |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        m = r["models"]

        def rate(label: str) -> str:
            if label not in m:
                return "–"
            low, high = m[label]["rate_ci"]
            return f"{pct(m[label]['rate'])} [{pct(low)}, {pct(high)}]"

        def diff(d: dict | None) -> str:
            return "–" if not d else f"{pct(d['difference'])} [{pct(d['ci_low'])}, {pct(d['ci_high'])}]"

        accuracy = " → ".join(f"{m[k]['answer_accuracy'][0]}/{m[k]['answer_accuracy'][1]}" for k in m)
        lines.append(f"| {r['seed']} | {r['split']} | {r['items']} | {r['wall_s'] / 60:.1f} min | "
                     + " | ".join(f"{r['stage_s'].get(k, 0):.0f} s" + (" (reused)" if k in r["reused"] else "")
                                  for k in STAGES)
                     + f" | {rate('before')} | {rate('dpo')} | {rate('control')} | {diff(r['dpo_minus_before'])} | "
                     f"{diff(r.get('control_minus_before'))} | {diff(r.get('dpo_minus_control'))} | {accuracy} |")
    second = rows[0]["attribution"].get("judge", "grounded-qa") if rows else "grounded-qa"
    lines += ["", f"The same answers judged by `{second}`, the second judge:", "",
              "| seed | before | after DPO | SFT control | Δ DPO−before [95% CI] | Δ control−before [95% CI] | "
              "Δ DPO−control [95% CI] | checked answer accuracy before → DPO → control |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["attribution"]

        def diff2(key: str) -> str:
            d = a.get(key)
            return "–" if not d else f"{pct(d['difference'])} [{pct(d['ci_low'])}, {pct(d['ci_high'])}]"

        lines.append(f"| {r['seed']} | {pct(a['rates']['before'])} | {pct(a['rates']['dpo'])} | "
                     f"{pct(a['rates'].get('control'))} | {diff2('dpo_minus_before')} | {diff2('control_minus_before')} "
                     f"| {diff2('dpo_minus_control')} | " + " → ".join(
                         f"{int(sum(v.values()))}/{len(v)}" for v in r["accuracy"]["checked"].values()) + " |")
    if rows:
        lines.append(pooled_accuracy(rows))
    calibration = next((c for c in rows[0]["calibration"].values() if c), None) if rows else None
    if calibration:
        lines.append("")
        lines.append(f"Judge on the labeled real outputs: {json.dumps(calibration)[:400]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--split", choices=("val", "test"),
                        help="val while choosing settings; test for the reported figures.")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="A setting over demo --real's (faithforge/app/real_demo.py), e.g. train.learning_rate=3e-4.")
    parser.add_argument("--workspace", type=Path, default=Path("bench/out/real-model-workspace"),
                        help="One workspace for every seed (the imported model and shared stages are reused).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the table and raw JSON here.")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="OUT_MD", default=None,
                        help="Run nothing: pool the answer accuracy of earlier --out files' seeds into one table.")
    args = parser.parse_args()
    if args.pool:
        print(pooled_accuracy([row for path in args.pool for row in read_out(path)]))
        return
    if args.split is None:
        parser.error("--split is required (val while choosing settings, test for the reported figures)")
    config = _nested(args.assignments, args.split)
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(seed, args.workspace, config))
        print(f"seed {seed}: {rows[-1]['wall_s'] / 60:.1f} min", flush=True)
        print(table(rows[-1:]), flush=True)
    text = table(rows)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for row in rows:
            for model in row["models"].values():
                model.pop("items", None)
        args.out.write_text(text + "\n\n```json\n" + json.dumps(rows, indent=1) + "\n```\n")


if __name__ == "__main__":
    main()
