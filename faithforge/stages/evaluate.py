"""Stage: greedy summaries of held-out sources before and after training, judged and compared.

Summaries come from one engine for all models (`faithforge.stages.sampler`): llama.cpp on f16 GGUFs written from
each model's weights when the stage runs on the CPU, else the prefix-cached engine (the shared system prompt is
encoded once). The evaluation sources are checked against everything training saw: overlap stops the run.
"""

from __future__ import annotations

import time
from pathlib import Path

from faithforge.stages.context import StageContext, reads
from faithforge.stages.generate import load_split
from faithforge.stages.outputs import (AdapterOutput, ControlOutput, DatasetOutput, EvaluationOutput, ModelOutput,
                                       PairsOutput)
from faithforge.stages.pairs import load_pairs
from faithforge.data.overlap import check_no_text_overlap
from faithforge.core.judge_registry import JUDGES
from faithforge.evaluation.judge_options import judge_options
from faithforge.evaluation.wording import task_words
from faithforge.data.sources import system_prompt
from faithforge.data.teacher import SYSTEM_PROMPT
from faithforge.core.workspace import (atomic_directory, atomic_write_json, atomic_write_jsonl, atomic_write_text,
                                       scratch_directory)
from faithforge.gpu.planner import Plan


def summarize_sources(model_path: str, sources: list[str], *, adapter: str | None, plan: Plan,
                      max_new_tokens: int, batch_size: int, system_prompt: str = SYSTEM_PROMPT,
                      truncated: list[bool] | None = None, gguf: Path | None = None,
                      bfloat16: bool = False) -> list[str]:
    """Greedy (temperature 0) summaries of `sources`, optionally with a LoRA adapter merged in.

    `truncated`: a list to fill with whether each summary was cut off by `max_new_tokens` (for the judge:
    a cut-off last word is not a claim). `gguf`: the same model (base + adapter) as a GGUF file: written by
    llama.cpp instead (`faithforge.stages.sampler`). `bfloat16`: the engine reads the (merged) weights in
    bfloat16 (`evaluate.sampler: engine-bf16`)."""
    from faithforge.engine import PrefixCachedEngine, SamplingConfig
    from faithforge.training.modeling import load_for_plan, load_tokenizer, plan_precision

    tokenizer = load_tokenizer(model_path)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    if gguf is not None:
        from faithforge.stages.sampler import gguf_sampler

        results = gguf_sampler(gguf, model_path, tokenizer, system_prompt, n_ctx=0).generate_batch(
            [[{"role": "user", "content": s}] for s in sources], greedy, batch_size=batch_size)
        if truncated is not None:
            truncated[:] = [r.finish_reason == "length" for r in results]
        return [r.text.strip() for r in results]
    model, _ = load_for_plan(model_path, plan)  # exactly the precision the evaluate plan names
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if plan_precision(plan) != "nf4":  # merging into 4-bit weights would re-quantize (and round) the update
            model = model.merge_and_unload()
        model.eval()
    if bfloat16:  # choose_sampler picks `engine-bf16` for CPU plans only
        from faithforge.stages.sampler import sampling_weights

        model = sampling_weights(model, bfloat16)
    engine = PrefixCachedEngine(model, tokenizer, [{"role": "system", "content": system_prompt}])
    results = engine.generate_batch([[{"role": "user", "content": s}] for s in sources], greedy,
                                    batch_size=batch_size)
    if truncated is not None:
        truncated[:] = [r.finish_reason == "length" for r in results]
    return [r.text.strip() for r in results]


def summarize_with_backend(backend, sources: list[str], *, max_new_tokens: int, seed: int,
                           system_prompt: str = SYSTEM_PROMPT, truncated: list[bool] | None = None) -> list[str]:
    """Greedy summaries from a served model (Ollama / OpenAI-compatible), one request per source, same prompt.

    Thinking is off and stripped by the backend; a truncated answer is kept as it is (it is what the model
    said within the budget the local models also get).
    """
    results = [backend.chat([{"role": "system", "content": system_prompt}, {"role": "user", "content": source}],
                            schema=None, max_tokens=max_new_tokens, temperature=0.0, seed=seed)
               for source in sources]
    if truncated is not None:
        truncated[:] = [bool(getattr(r, "truncated", False)) for r in results]
    return [r.text.strip() for r in results]


@reads("evaluate", "distributed", "pairs", "data", "generate", "train", "seed")
def evaluate_models(ctx: StageContext, model: ModelOutput, dataset: DatasetOutput, pairs: PairsOutput,
                    dpo: AdapterOutput, control: ControlOutput | None, plan: Plan,
                    judge_mapper=None) -> EvaluationOutput:
    """check no overlap → summarize and judge each model → compare → write the report → lineage.

    `judge_mapper` (`faithforge.evaluation.fanout.ChunkMapper`): runs the judging chunks elsewhere (the evaluate
    task maps them as Prefect tasks on `distributed.judge_runner`); None judges here, serially. Same report."""
    from faithforge.evaluation import EvalItem, get_judge, save_evaluation, table_rows
    from faithforge.training.modeling import measured_peak, start_peak_measurement

    cfg = ctx.config.evaluate
    held_out = load_split(dataset, cfg.split)  # `val` only while choosing settings (EvaluateConfig.split)
    _check_no_overlap(held_out, dataset, pairs, cfg.split)
    items = [EvalItem(id=e.id, source=e.source, key_facts=list(e.key_facts), category=e.category,
                      reference=e.faithful or None) for e in held_out]
    options = judge_options(cfg, base_model=model.path, cache_root=str(ctx.workspace.dir("cache")))
    judge = get_judge(cfg.judge, **options)
    judging = {"spec": {"name": cfg.judge, "options": options}, "mapper": judge_mapper,
               "chunk": ctx.config.distributed.judge_chunk}
    start_peak_measurement()
    started = time.perf_counter()
    adapters = {"before": None, "after": dpo.path, **({"control": control.path} if control else {})}
    reports, sampler = _judge_models(ctx, model, items, [e.source for e in held_out], adapters, judge, plan, judging)
    from faithforge.evaluation.labeling import OUTPUTS_FILE, output_rows

    words = task_words(ctx.config)
    comparisons = tuple(c.with_unit(f"{words.unit}: {words.rule}") if c is not None else None
                        for c in _compare(ctx, reports))
    seconds = time.perf_counter() - started
    out = ctx.workspace.dir("reports") / f"eval-{ctx.run_id or 'adhoc'}"
    chooser = chooser_line(ctx.config, ctx.workspace.calibrations)
    # The folder whole or not at all: a report written file by file left `report.md` alone in a new folder each
    # time a full disk failed the next file, eating the space the rerun needed (an attack, 2026-12-07).
    with atomic_directory(out) as folder:
        markdown, chart = _write_report(ctx, folder, *comparisons, words=words, chooser=chooser)
        atomic_write_jsonl(folder / OUTPUTS_FILE, output_rows(items, reports))  # what `faithforge label` shows
    chart = str(out / Path(chart).relative_to(folder))
    comparison, control_cmp, served_cmp = comparisons
    parents = [dpo.artifact_id] + ([control.artifact_id] if control and control.artifact_id else [])
    artifact_id = save_evaluation(ctx.store, comparison, uri=str(out), run_id=ctx.run_id, parents=parents,
                                  control=control_cmp)
    result = EvaluationOutput(
        path=str(out), markdown_path=str(out / "report.md"), chart=str(Path(chart)),
        judge_accuracy=_judge_accuracy(comparison), unit=words.unit, recall_name=words.recall, pairs_judge=chooser,
        artifact_id=artifact_id, judge=cfg.judge, split=cfg.split, items=len(items), seconds=round(seconds, 2),
        **measured_peak(),
        items_per_second=round(len(items) * len(reports) / seconds, 1),
        models={label: _headline(r) for label, r in reports.items()},
        difference=_difference(comparison),
        control_difference=control_cmp.rate.model_dump() if control_cmp else None,
        served_difference=served_cmp.rate.model_dump() if served_cmp else None,
        table=table_rows(comparison, control_cmp), markdown=markdown, sampler=sampler,
    )
    tracking = _report_to_trackers(ctx, result)
    return result.model_copy(update={"tracking": tracking}) if tracking else result


def _report_to_trackers(ctx: StageContext, result: EvaluationOutput) -> dict[str, str]:
    """Rates with intervals, the judge and its accuracy, and every stage's GPU plan and measured peak, logged to
    the run's trackers (`train.report_to`); returns where to read them ({} when none is configured)."""
    from faithforge.stages.train import open_tracker

    tracker = open_tracker(ctx, Path(result.path).name)
    if tracker is None:
        return {}
    from faithforge.training.tracking import rate_metrics, stage_metrics

    with tracker:
        tracker.log_metrics(rate_metrics(result.model_dump(mode="json")))
        if ctx.run_id:
            numbers, text = stage_metrics(ctx.store.stages(ctx.run_id))
            tracker.log_metrics(numbers)
            tracker.log_text(text)
        tracker.log_text({"judge": result.judge, "judge_accuracy": result.judge_accuracy, "split": result.split})
        return tracker.locations()


def _check_no_overlap(held_out: list, dataset: DatasetOutput, pairs: PairsOutput, split: str) -> None:
    """Stop the run when an evaluation source is inside what training saw (by text, by id, by word shingles)."""
    from faithforge.evaluation import check_disjoint

    training_pairs = load_pairs(pairs.train) + load_pairs(pairs.val)
    check_disjoint([e.source for e in held_out], [p["prompt"][-1]["content"] for p in training_pairs],
                   what=f"evaluation sources ({dataset.files[split]}) and training pairs ({pairs.path})")
    check_disjoint([e.id for e in held_out], [p["source_id"] for p in training_pairs],
                   what="evaluation example ids and training pair sources")
    # Imported pairs wrap documents in their own prompts and ids: compare the text itself (word shingles).
    check_no_text_overlap({e.id: e.source for e in held_out},
                          (" ".join(m["content"] for m in p["prompt"]) for p in training_pairs),
                          what=f"evaluation sources and training pairs ({pairs.path})")


def _judge_models(ctx: StageContext, model: ModelOutput, items: list, sources: list[str],
                  adapters: dict[str, str | None], judge, plan: Plan, judging: dict | None = None) -> tuple[dict, str]:
    """label → its judged report: each local model (base + adapter) greedy, then the served model if configured;
    and what wrote the local models' answers (one engine for all of them). Answers an earlier run wrote with the
    same key are judged again, not written again (`faithforge.stages.answer_cache`); when every model's are
    stored, no GGUF is written either."""
    from faithforge.engine import SamplingConfig
    from faithforge.stages.sampler import choose_sampler, gguf_cache

    cfg = ctx.config.evaluate
    models = [(model.path, adapter) for adapter in adapters.values()]
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens)
    # The trained models' files (each the size of the model, rewritten in seconds) go to this call's own folder,
    # removed at the end; the base model's stays in the cache the pairs stage shares.
    with scratch_directory(ctx.workspace.dir("tmp"), "gguf-evaluate-") as scratch:
        def choose(write: bool):
            return choose_sampler(cfg.sampler, plan, sampling, models, gguf_cache(ctx.workspace), adapter_dir=scratch,
                                  write=write)

        inputs = _answer_inputs(ctx, model, adapters, sources, plan)  # hashed once, whatever the engine
        choice = choose(write=False)  # named, not written: enough for the answers' keys
        stored = _stored_answers(ctx, inputs, choice, len(sources))
        if any(answers is None for _, answers in stored.values()):
            choice = choose(write=True)
            stored = _stored_answers(ctx, inputs, choice, len(sources))
        return _answer_and_judge(ctx, model, items, sources, adapters, judge, plan, judging, choice, stored)


def _answer_inputs(ctx: StageContext, model: ModelOutput, adapters: dict[str, str | None], sources: list[str],
                   plan: Plan) -> dict[str, dict]:
    """label → the `answers_key` keywords that do not depend on the engine (the base model's and the adapter's
    fingerprints, the sources, the prompt, the limits of the plan)."""
    from faithforge.stages.answer_cache import adapter_fingerprint
    from faithforge.training.reference_cache import sampling_fingerprint

    common = dict(model=sampling_fingerprint(model.path), sources=sources, system_prompt=system_prompt(ctx.config),
                  max_new_tokens=ctx.config.evaluate.max_new_tokens, batch_size=plan.batch_size,
                  placement=plan.placement, precision=plan.precision)
    return {label: {**common, "adapter": adapter_fingerprint(adapter)} for label, adapter in adapters.items()}


def _stored_answers(ctx: StageContext, inputs: dict[str, dict], choice, count: int) -> dict:
    """label → (where its answers are kept, the answers stored there or None) under `choice`'s engine."""
    from faithforge.stages.answer_cache import answers_key, answers_path, read_answers

    ggufs = dict(zip(inputs, choice.ggufs))
    stored = {}
    for label, keywords in inputs.items():
        key = answers_key(sampler=choice.name, gguf=ggufs[label].name if label in ggufs else None, **keywords)
        path = answers_path(ctx.workspace, key)
        stored[label] = (path, read_answers(path, count))
    return stored


def _answer_and_judge(ctx: StageContext, model: ModelOutput, items: list, sources: list[str],
                      adapters: dict[str, str | None], judge, plan: Plan, judging: dict | None, choice, stored: dict
                      ) -> tuple[dict, str]:
    from faithforge.evaluation import evaluate_single
    from faithforge.stages.answer_cache import Answers, write_answers

    cfg = ctx.config.evaluate
    ggufs = dict(zip(adapters, choice.ggufs))  # empty unless llama.cpp writes the answers
    units = task_words(ctx.config).units  # "summaries" or "answers"
    reused = [label for label, (_, answers) in stored.items() if answers is not None]
    sampler = choice.describe() + (f" ({units} of {', '.join(reused)} reused from an earlier run)" if reused else "")
    ctx.progress("evaluate", 0, len(adapters), f"{units} written by {sampler}")
    prompt = system_prompt(ctx.config)
    calibrations = ctx.workspace.calibrations
    reports = {}
    for index, (label, adapter) in enumerate(adapters.items(), start=1):
        path, answers = stored[label]
        if answers is None:
            cut: list[bool] = []
            summaries = summarize_sources(model.path, sources, adapter=adapter, plan=plan,
                                          max_new_tokens=cfg.max_new_tokens, batch_size=plan.batch_size,
                                          system_prompt=prompt, truncated=cut, gguf=ggufs.get(label),
                                          bfloat16=choice.name == "engine-bf16")
            answers = Answers(summaries, cut)
            write_answers(path, answers)  # a kill after this model resumes at the next one
        reports[label] = evaluate_single(items, answers.texts, judge, label=label, confidence=cfg.confidence,
                                         truncated=answers.truncated, calibration_dir=calibrations,
                                         results=_fanned_out(judging, items, answers.texts, answers.truncated))
        ctx.progress("evaluate", index, len(adapters), f"{label}: rate {reports[label].rate:.3f}")
    if cfg.served_model:  # never reused: a server may serve other weights under the same name tomorrow
        from faithforge.backends import make_backend

        backend = make_backend(cfg.served_backend, cfg.served_model, base_url=cfg.served_base_url,
                               settings=cfg.served_backend_options.get(cfg.served_backend),
                               where="evaluate.served_backend_options")
        cut = []
        summaries = summarize_with_backend(backend, sources, max_new_tokens=cfg.max_new_tokens, seed=ctx.config.seed,
                                           system_prompt=prompt, truncated=cut)
        reports["served"] = evaluate_single(items, summaries, judge, label=f"served: {cfg.served_model}",
                                            confidence=cfg.confidence, truncated=cut, calibration_dir=calibrations,
                                            results=_fanned_out(judging, items, summaries, cut))
    return reports, sampler


def _fanned_out(judging: dict | None, items: list, summaries: list[str], cut: list[bool]):
    """The items judged through the mapper (None without one: `evaluate_single` judges them itself)."""
    if not judging or judging["mapper"] is None:
        return None
    from faithforge.evaluation.fanout import judge_all

    return judge_all(judging["spec"], items, summaries, cut, size=judging["chunk"], mapper=judging["mapper"])


def _compare(ctx: StageContext, reports: dict) -> tuple:
    """(after vs before, control vs before or None, served vs before or None), paired."""
    from faithforge.evaluation import compare_reports

    cfg = ctx.config.evaluate

    def against_before(label: str):
        if label not in reports:
            return None
        return compare_reports(reports["before"], reports[label], confidence=cfg.confidence,
                               bootstrap_samples=cfg.bootstrap_samples, seed=ctx.config.seed)

    return against_before("after"), against_before("control"), against_before("served")


def _write_report(ctx: StageContext, out: Path, comparison, control_cmp, served_cmp, *, words,
                  chooser: str | None) -> tuple[str, str]:
    """report.md, report.json and the rates chart under `out`, in the task's `words` and with the `chooser` line;
    returns (the markdown, the chart's path)."""
    from faithforge.evaluation import bar_chart, markdown_report

    cfg = ctx.config.evaluate
    markdown = markdown_report(comparison, control=control_cmp, worst_examples=cfg.worst_examples, words=words,
                               note=chooser)
    if served_cmp is not None:
        markdown += "\n\n" + markdown_report(served_cmp, worst_examples=cfg.worst_examples, words=words,
                                               title=f"Served model {cfg.served_model} vs before DPO")
    atomic_write_text(out / "report.md", markdown)
    atomic_write_json(out / "report.json", {"comparison": comparison.to_dict(),
                                            "control": control_cmp.to_dict() if control_cmp else None,
                                            "served": served_cmp.to_dict() if served_cmp else None})
    return markdown, bar_chart(comparison, out / "rates.png", control=control_cmp, words=words)


def pairs_chooser(config) -> str | None:
    """The judge that chose the training pairs: `pairs.judge`, else the evaluation's judge; None when no judge chose
    (synthetic pairs, or pairs imported from `pairs.path`)."""
    if config.pairs.path or config.pairs.builder != "on-policy":
        return None
    return _judge_label(config.pairs.judge or config.evaluate.judge)


def _judge_label(judge: str | list[str]) -> str:
    """A judge setting (one name or a list of names) as one name: `grounding+nli`."""
    return judge if isinstance(judge, str) else "+".join(judge)


def chooser_line(config, calibration_dir: Path) -> str | None:
    """One line for the report and the terminal: which judge chose the pairs and its held-out accuracy, and a
    warning when it is the judge that measures (its rate then measures what DPO was trained to please)."""
    chooser = pairs_chooser(config)
    if chooser is None:
        return None
    measurer = _judge_label(config.evaluate.judge)
    if chooser == measurer:
        return (f"Pairs chosen by `{chooser}`, the judge that measures: this rate measures what DPO was trained to "
                "please; set `pairs.judge` and `evaluate.judge` to different judges for an independent rate.")
    accuracy = ""
    if chooser in JUDGES and JUDGES.get(chooser).rule_based:  # built without options or a model to load
        from faithforge.evaluation import get_judge
        from faithforge.evaluation.heldout import judge_checkpoint, load_calibration

        found = load_calibration(calibration_dir, chooser, judge_checkpoint(get_judge(chooser)))
        if found is not None:
            test = found.to_dict().get("test") or {}
            accuracy = (f" (held out: precision {test.get('precision', 0):.2f}, recall {test.get('recall', 0):.2f} "
                        f"on {test.get('n')} labels)")
    return f"Pairs chosen by `{chooser}`{accuracy}; measured by `{measurer}`, another judge."


def _judge_accuracy(comparison) -> str:
    """The report's first line: the judge's stored held-out accuracy, or that it has none (for the terminal)."""
    from faithforge.evaluation.report import judge_accuracy_lines

    return judge_accuracy_lines(comparison.before)[0].lstrip("> ").replace("**", "")


def _difference(comparison) -> dict:
    """after − before for the stage's output. Recall and retention are None where nothing could be measured (your
    documents without `data.key_facts_column` have no key facts): kept as None, never dereferenced."""
    return {"rate": comparison.rate.model_dump(),
            "recall": comparison.recall.model_dump() if comparison.recall is not None else None,
            "retention": comparison.retention.model_dump() if comparison.retention is not None else None,
            "coverage": comparison.coverage.model_dump() if comparison.coverage is not None else None,
            "length": comparison.length.model_dump() if comparison.length is not None else None,
            "fixed": comparison.fixed, "broken": comparison.broken, "mcnemar_p": comparison.mcnemar_p}


def _headline(report) -> dict:
    return {"rate": report.rate, "rate_ci": list(report.rate_ci) if report.rate_ci else None,
            "recall": report.recall, "n": report.n_judged, "length": report.mean_summary_length,
            "coverage": report.coverage, "refusals": report.refusals, "evasive": report.evasive}
