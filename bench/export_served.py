"""Export a finished real run's DPO adapter (hf, and GGUF f16 / q8_0 / q4_k_m + Modelfile) and re-measure the
served GGUF files on the run's own test items, beside the run's in-process evaluation of the same adapter.

    python bench/export_served.py --workspace WS [--run-id ID] --out-dir DIR [--json OUT.json]

The run is the newest finished one in WS that has an evaluation (e.g. `faithforge demo --real -w WS`). For each of
f16 and q4_k_m the file is served by llama.cpp's server and evaluated exactly as `evaluate.served_model` does
(the evaluate stage's `summarize_with_backend` through the OpenAI-compatible backend, the run's system prompt,
max_new_tokens, seed and judge), on the run's evaluation items. Printed: export wall times and sizes, max
|Δlogit|, greedy agreement with transformers, and the hallucination rate [95% CI] and answer accuracy (key-fact
recall 1 on the answerable questions) of the in-process evaluation beside each served file, and how many served
answers are word for word the in-process ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run(workspace: Path, run_id: str | None):
    from faithforge.core.store import Store

    store = Store(f"sqlite:///{workspace / 'faithforge.db'}")
    candidates = [run_id] if run_id else [r["id"] for r in store.list_runs(200) if r["status"] == "completed"]
    for rid in candidates:
        stages = {row.stage: row.outputs for row in store.stages(rid) if row.status == "completed"}
        if "evaluate" in stages:
            return rid, store.get_run(rid).config, stages
    raise SystemExit(f"no finished run with an evaluation in {workspace}")


def _accuracy(items: list[dict]) -> tuple[int, int]:
    scored = [i["recall"] for i in items if i["recall"] is not None]
    return sum(1 for r in scored if r >= 1.0), len(scored)


def _row(label: str, report: dict) -> dict:
    correct, answerable = _accuracy(report["items"])
    return {"model": label, "rate": report["rate"], "rate_ci": list(report["rate_ci"]), "n": report["n_judged"],
            "answer_accuracy": [correct, answerable]}


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--run-id")
    parser.add_argument("--out-dir", type=Path, required=True, help="new folder for the exports")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from faithforge.backends import make_backend
    from faithforge.core.config import PipelineConfig
    from faithforge.data.own_data import system_prompt
    from faithforge.evaluation import EvalItem, evaluate_single, get_judge
    from faithforge.evaluation.options import judge_options
    from faithforge.stages.evaluate import summarize_with_backend
    from faithforge.stages.generate import load_split
    from faithforge.stages.outputs import DatasetOutput
    from faithforge.training.export_verify import served_gguf
    from faithforge.training.model_export import ExportOptions, export_model

    workspace = args.workspace.resolve()
    run_id, config, stages = _run(workspace, args.run_id)
    cfg = PipelineConfig.model_validate(config)
    result: dict = {"run_id": run_id, "workspace": str(workspace), "adapter": stages["train"]["path"],
                    "dpo_steps": stages["train"].get("steps"), "exports": {}}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    say = lambda message: print(f"  {message}", file=sys.stderr, flush=True)  # noqa: E731

    for fmt, quants in (("hf", ("f16",)), ("ollama", ("f16", "q8_0", "q4_k_m"))):
        out = args.out_dir / fmt
        started = time.perf_counter()
        record = export_model(run_id, out, ExportOptions(fmt=fmt, quants=quants, workspace=str(workspace),
                                                         threads=args.threads, name="faithforge-smollm2"), say)
        record["wall_seconds"] = round(time.perf_counter() - started, 1)
        result["exports"][fmt] = record
        print(f"export {fmt}: {record['wall_seconds']} s", file=sys.stderr, flush=True)

    evaluation = stages["evaluate"]
    comparison = json.loads((Path(evaluation["path"]) / "report.json").read_text())["comparison"]
    rows = [_row("in-process before DPO", comparison["before"]), _row("in-process after DPO", comparison["after"])]
    in_process_answers = [i["summary"] for i in comparison["after"]["items"]]
    dataset = DatasetOutput.model_validate(stages["generate"])
    held_out = load_split(dataset, cfg.evaluate.split)
    items = [EvalItem(id=e.id, source=e.source, key_facts=list(e.key_facts), category=e.category) for e in held_out]
    assert [i.id for i in items] == [i["id"] for i in comparison["after"]["items"]], "not the run's items"
    judge = get_judge(cfg.evaluate.judge, **judge_options(cfg.evaluate))
    files = result["exports"]["ollama"]["files"]
    for quant in ("f16", "q4_k_m"):
        started = time.perf_counter()
        with served_gguf(args.out_dir / "ollama" / files[quant]["file"], threads=args.threads, n_ctx=4096) as root:
            backend = make_backend("openai", "exported", base_url=root)
            cut: list[bool] = []
            answers = summarize_with_backend(backend, [e.source for e in held_out],
                                             max_new_tokens=cfg.evaluate.max_new_tokens, seed=cfg.seed,
                                             system_prompt=system_prompt(cfg), truncated=cut)
        report = evaluate_single(items, answers, judge, label=f"served {quant}", confidence=cfg.evaluate.confidence,
                                 truncated=cut, calibration_dir=workspace / "calibrations").to_dict()
        row = _row(f"served GGUF {quant} (llama.cpp)", report)
        row["same_answers_as_in_process"] = sum(a.strip() == b.strip() for a, b in zip(answers, in_process_answers))
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(f"served {quant}: rate {row['rate']:.3f} in {row['seconds']} s", file=sys.stderr, flush=True)
    after = rows[1]
    for row in rows[2:]:
        row["intervals_overlap_in_process_after"] = _overlap(row["rate_ci"], after["rate_ci"])
    result["evaluation"] = {"judge": evaluation.get("judge"), "judge_accuracy": evaluation.get("judge_accuracy"),
                            "split": evaluation.get("split"), "rows": rows}

    print(f"run {run_id}: adapter {result['adapter']} ({result['dpo_steps']} DPO steps)")
    for fmt, record in result["exports"].items():
        print(f"export {fmt}: {record['wall_seconds']} s; merged max |Δlogit| {record['merge_max_abs_logit_diff']:.3g}")
        if "hf" in record:
            print(f"  hf {record['hf']['dtype']}: {record['hf']['bytes'] / 2**20:.1f} MiB, reloaded max |Δlogit| "
                  f"{record['hf']['reloaded_max_abs_logit_diff']:.3g}")
        for quant, info in (record.get("files") or {}).items():
            a = info["agreement"]
            print(f"  {info['file']}: {info['bytes'] / 2**20:.1f} MiB, written in {info['seconds']} s, greedy "
                  f"{a['same_greedy']}/{a['prompts']} identical (mean common prefix {a['mean_common_prefix_tokens']} "
                  f"of ≤ {a['max_new_tokens']} tokens), verified in {info['verify_seconds']} s")
    print(f"\njudge {evaluation.get('judge')}: {evaluation.get('judge_accuracy')}")
    print("| model | hallucination rate [95% CI] | answer accuracy | same answers as in-process |")
    print("|---|---|---|---|")
    for row in rows:
        lo, hi = row["rate_ci"]
        c, n = row["answer_accuracy"]
        same = row.get("same_answers_as_in_process")
        print(f"| {row['model']} | {100 * row['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n = {row['n']}) | "
              f"{c}/{n} = {100 * c / max(n, 1):.1f}% | {'—' if same is None else f'{same}/{len(items)}'} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
