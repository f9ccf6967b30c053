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


def _run(workspace: Path, run_id: str | None, need: str):
    """(run id, config, completed stage outputs) of the newest run (or `run_id`) that completed stage `need`."""
    from faithforge.core.store import Store

    store = Store(f"sqlite:///{workspace / 'faithforge.db'}")
    candidates = [run_id] if run_id else [r["id"] for r in store.list_runs(200)]
    for rid in candidates:
        stages = {row.stage: row.outputs for row in store.stages(rid) if row.status == "completed"}
        if need in stages:
            return rid, store.get_run(rid).config, stages
    raise SystemExit(f"no run with a completed {need} stage in {workspace}")


def _in_process(cfg, workspace: Path, model_path: str, adapter: str | None, held_out, items, judge, label: str) -> dict:
    """The evaluate stage's in-process path (PrefixCachedEngine, greedy, the evaluate plan's precision)."""
    from faithforge.data.sources import system_prompt
    from faithforge.evaluation import evaluate_single
    from faithforge.stages.context import StageContext
    from faithforge.stages.evaluate import summarize_sources
    from faithforge.stages.gate import gate

    plan = gate(StageContext.open(cfg), "evaluate")
    cut: list[bool] = []
    answers = summarize_sources(model_path, [e.source for e in held_out], adapter=adapter, plan=plan,
                                max_new_tokens=cfg.evaluate.max_new_tokens, batch_size=plan.batch_size,
                                system_prompt=system_prompt(cfg), truncated=cut)
    return evaluate_single(items, answers, judge, label=label, confidence=cfg.evaluate.confidence, truncated=cut,
                           calibration_dir=workspace / "calibrations").to_dict()


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
    parser.add_argument("--adapter", type=Path, help="export this adapter (e.g. a DPO checkpoint) instead of the run's "
                        "finished one, and evaluate it in-process here (the run gives the data and settings)")
    parser.add_argument("--with-before", action="store_true", help="also evaluate the base model in-process")
    parser.add_argument("--out-dir", type=Path, required=True, help="new folder for the exports")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from faithforge.backends import make_backend
    from faithforge.core.config import PipelineConfig
    from faithforge.data.sources import system_prompt
    from faithforge.evaluation import EvalItem, evaluate_single, get_judge
    from faithforge.evaluation.judge_options import judge_options
    from faithforge.stages.evaluate import summarize_with_backend
    from faithforge.stages.generate import load_split
    from faithforge.stages.outputs import DatasetOutput
    from faithforge.training.export_verify import served_gguf
    from faithforge.training.model_export import ExportOptions, export_model

    workspace = args.workspace.resolve()
    run_id, config, stages = _run(workspace, args.run_id, "generate" if args.adapter else "evaluate")
    cfg = PipelineConfig.model_validate(config)
    if args.adapter:
        state = json.loads((args.adapter / "trainer_state.json").read_text()) \
            if (args.adapter / "trainer_state.json").is_file() else {}
        adapter, steps = str(args.adapter.resolve()), state.get("global_step")
    else:
        adapter, steps = stages["train"]["path"], stages["train"].get("steps")
    result: dict = {"run_id": run_id, "workspace": str(workspace), "adapter": adapter, "dpo_steps": steps,
                    "exports": {}}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    say = lambda message: print(f"  {message}", file=sys.stderr, flush=True)  # noqa: E731

    for fmt, quants in (("hf", ("f16",)), ("ollama", ("f16", "q8_0", "q4_k_m"))):
        out = args.out_dir / fmt
        started = time.perf_counter()
        record = export_model(adapter if args.adapter else run_id, out, ExportOptions(fmt=fmt, quants=quants, workspace=str(workspace),
                                                         threads=args.threads, name="faithforge-smollm2"), say)
        record["wall_seconds"] = round(time.perf_counter() - started, 1)
        result["exports"][fmt] = record
        print(f"export {fmt}: {record['wall_seconds']} s", file=sys.stderr, flush=True)

    dataset = DatasetOutput.model_validate(stages["generate"])
    held_out = load_split(dataset, cfg.evaluate.split)
    items = [EvalItem(id=e.id, source=e.source, key_facts=list(e.key_facts), category=e.category) for e in held_out]
    judge = get_judge(cfg.evaluate.judge, **judge_options(cfg.evaluate))
    if args.adapter:
        model_path = stages["warm_start"]["path"]
        evaluation = {"judge": cfg.evaluate.judge, "split": cfg.evaluate.split}
        comparison = {"after": _in_process(cfg, workspace, model_path, adapter, held_out, items, judge, "after")}
        if args.with_before:
            comparison["before"] = _in_process(cfg, workspace, model_path, None, held_out, items, judge, "before")
        evaluation["judge_accuracy"] = (comparison["after"].get("calibrations") or {})
        print("in-process evaluation done", file=sys.stderr, flush=True)
    else:
        evaluation = stages["evaluate"]
        comparison = json.loads((Path(evaluation["path"]) / "report.json").read_text())["comparison"]
    rows = ([_row("in-process before DPO", comparison["before"])] if "before" in comparison else []) + \
        [_row("in-process after DPO", comparison["after"])]
    in_process_answers = [i["summary"] for i in comparison["after"]["items"]]
    assert [i.id for i in items] == [i["id"] for i in comparison["after"]["items"]], "not the run's items"
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
    after = next(r for r in rows if r["model"] == "in-process after DPO")
    for row in rows:
        if not row["model"].startswith("served"):
            continue
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
