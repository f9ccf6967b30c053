"""Stage: preference pairs from the generated training examples, split train/validation by source."""

from __future__ import annotations

from pathlib import Path

from faithforge.core.errors import UserError
from faithforge.data.sources import system_prompt
from faithforge.evaluation.wording import task_words
from faithforge.data.pairs import build_synthetic_pairs, split_by_source, validate_pairs
from faithforge.stages.reuse import claim_output
from faithforge.stages.context import StageContext, content_key, reads
from faithforge.stages.generate import load_split
from faithforge.stages.outputs import DatasetOutput, ModelOutput, PairsOutput
from faithforge.gpu.planner import Plan
from faithforge.core.workspace import atomic_directory, atomic_write_jsonl, read_jsonl, sha256_file

#: On-policy sampling without a gate plan: on the CPU in fp32, 32 summaries at a time.
NO_GATE_PLAN = Plan.manual("evaluate", "cpu", batch_size=32)
#: llama.cpp's context for on-policy sampling: 0 = the model's own (SmolLM2: 8,192 tokens, 189 MB of f16 KV).
SAMPLER_CONTEXT = 0


@reads("pairs", "evaluate", "data", "generate", "seed")
def build_pairs(ctx: StageContext, dataset: DatasetOutput, model: ModelOutput | None = None,
                plan: Plan | None = None) -> PairsOutput:
    """Pairs from the training split: synthetic, or on-policy from `model` (the warm-started policy), sampled as
    `plan` says (no plan: on the CPU, in fp32)."""
    cfg = ctx.config.pairs
    on_policy = cfg.builder == "on-policy"
    if on_policy and model is None:
        raise UserError("pairs.builder is on-policy but no model was given to sample from")
    # a sample_seed that is unset or the run's own draws what was drawn before the setting existed: the same key,
    # so earlier pairs stay reusable
    own_draw = sample_seed(ctx.config) == ctx.config.seed
    # the served_* settings exist since the served sampler; unless it samples they change nothing, so earlier
    # pairs keep their key
    unread = ({"sample_seed"} if own_draw else set()) | (set() if cfg.sampler == "served" else _SERVED_SETTINGS)
    depends_on = [dataset.key, cfg.model_dump(exclude=unread or None), ctx.config.seed]
    if cfg.path:  # imported pairs depend on the file's content, not on a model
        from faithforge.core.workspace import sha256_tree

        on_policy = False
        if not Path(cfg.path).exists():
            raise UserError(f"pairs.path {cfg.path} does not exist; point it at your pairs file or folder")
        depends_on.append((sha256_tree if Path(cfg.path).is_dir() else sha256_file)(cfg.path))
    elif on_policy:
        from faithforge.training.reference_cache import sampling_fingerprint

        # on-policy samples depend on the policy: its weights, tokenizer, chat template and EOS ids
        depends_on.append(sampling_fingerprint(model.path))
        depends_on.append(onpolicy_sampler(ctx.config, model, plan or NO_GATE_PLAN, ctx.workspace,
                                          write=False).key())  # named, not written: reused pairs need no file
        depends_on.append(_judging_settings(ctx.config))  # and on what judges the samples
    out = ctx.workspace.dir("pairs") / f"pairs-{content_key('pairs', *depends_on)}"
    with claim_output("pairs", out, "manifest.json", ctx.progress) as claim:
        if claim.reused is not None:
            return PairsOutput.model_validate(claim.reused)
        examples = load_split(dataset, "train")
        if cfg.path:
            pairs, report = _imported_pairs(cfg)
        elif on_policy:
            pairs, report = _sample_onpolicy_pairs(ctx, examples, model, plan or NO_GATE_PLAN)
        else:
            pairs, report = build_synthetic_pairs(examples, cfg.omission_share, ctx.config.seed)
        validate_pairs(pairs, "generated pairs")
        if not pairs:  # nothing to train on: say why here, not as a missing cache in the reference stage
            raise UserError(_no_pairs_message(ctx.config, report, len(examples)))
        train, val = split_by_source(pairs, cfg.val_fraction, ctx.config.seed)
        if not train:  # said here, where it happened: there is no separate pairs stage for the user to run
            raise UserError(_no_pairs_message(ctx.config, report, len(examples)))
        with atomic_directory(out) as tmp:
            train_tmp = atomic_write_jsonl(tmp / "train.jsonl", train)
            val_tmp = atomic_write_jsonl(tmp / "val.jsonl", val)
            artifact_id = ctx.store.add_artifact(
                "pairs", str(out), content_key(sha256_file(train_tmp), sha256_file(val_tmp)), run_id=ctx.run_id,
                meta=report.to_dict(), parents=[dataset.artifact_id] if dataset.artifact_id else [])
            info = {"path": str(out), "train": str(out / "train.jsonl"), "val": str(out / "val.jsonl"),
                    "counts": {"train": len(train), "val": len(val)}, "report": report.to_dict(),
                    "artifact_id": artifact_id}
            return PairsOutput.model_validate(claim.finish(tmp, info))


def _sample_onpolicy_pairs(ctx: StageContext, examples, model: ModelOutput, plan: Plan):
    from faithforge.stages.sampler import gguf_sampler, sampling_weights
    from faithforge.training.modeling import load_for_plan, load_tokenizer
    from faithforge.training.onpolicy_pairs import build_onpolicy_pairs

    cfg = ctx.config.pairs
    tokenizer = load_tokenizer(model.path)
    choice = onpolicy_sampler(ctx.config, model, plan, ctx.workspace)
    sampler = policy = None
    note = _sampler_note(choice, plan)
    if choice.name == "llama.cpp":  # the policy is that file's weights: no PyTorch model to load
        sampler = gguf_sampler(choice.gguf, model.path, tokenizer, system_prompt(ctx.config), SAMPLER_CONTEXT)
    elif choice.name == "served":
        sampler, probed = _served_policy(ctx, model, plan, tokenizer, examples)
        note = f"{note}; {probed}"
    else:
        policy, _ = load_for_plan(model.path, plan)  # sampled in the precision the plan names
        policy = sampling_weights(policy, choice.name == "engine-bf16")  # or in bfloat16 when asked
    units = task_words(ctx.config).units  # "answers" on a question-answering run
    ctx.progress("pairs", 0, 1, f"sampling {cfg.samples_per_source} {units} per source with {choice.describe()}")
    return build_onpolicy_pairs(policy, tokenizer, examples, k=cfg.samples_per_source, temperature=cfg.temperature,
                                seed=sample_seed(ctx.config),
                                max_new_tokens=ctx.config.evaluate.max_new_tokens,
                                margin=cfg.margin, score_by=cfg.score_by, min_chosen_recall=cfg.min_chosen_recall,
                                omission_pairs=cfg.omission_pairs, faithful_chosen=cfg.faithful_chosen,
                                judge=_pairs_judge(ctx.config, model.path, str(ctx.workspace.dir("cache"))),
                                batch_size=plan.batch_size, system_prompt=system_prompt(ctx.config),
                                sampler=sampler, sampler_note=note,
                                progress=lambda done, total: ctx.progress("pairs", done, total, ""))


_SERVED_SETTINGS = {"served_model", "served_base_url", "served_server", "served_concurrency"}


def _served_policy(ctx: StageContext, model: ModelOutput, plan: Plan, tokenizer, examples):
    """The server named by `pairs.served_*` as a sampler, after its greedy answers were checked against the local
    policy's (`check_served_policy`), and the check's note."""
    from faithforge.backends import make_backend
    from faithforge.engine import PrefixCachedEngine
    from faithforge.engine.served_sampler import ServedSampler
    from faithforge.core.backend_registry import PLAIN_SAMPLING
    from faithforge.stages.sampler import check_served_policy
    from faithforge.training.modeling import load_for_plan

    cfg, prompt = ctx.config.pairs, system_prompt(ctx.config)
    backend = make_backend("openai", cfg.served_model, base_url=cfg.served_base_url)
    backend.extra_body = PLAIN_SAMPLING[cfg.served_server]  # the policy's distribution, not the server's defaults
    served = ServedSampler(backend, tokenizer, prompt, concurrency=cfg.served_concurrency)
    # the policy once, where the plan puts it (a vLLM on the same GPU must leave room for it: its
    # --gpu-memory-utilization), for 8 greedy answers; freed before the samples are drawn
    policy, _ = load_for_plan(model.path, plan)
    local = PrefixCachedEngine(policy.eval(), tokenizer, [{"role": "system", "content": prompt}])
    probed = check_served_policy(served, local, [e.source for e in examples])
    del local, policy
    _free_memory()
    return served, probed


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sample_seed(config) -> int:
    """The seed the on-policy samples are drawn with: `pairs.sample_seed`, else the run's `seed`."""
    return config.seed if config.pairs.sample_seed is None else config.pairs.sample_seed


def _sampler_note(choice, plan: Plan) -> str:
    """What the pairs report records about the sampler: the choice and its reason, and how many sequences shared a
    step (seeded draws depend on it, as the engine's do on its batch)."""
    return f"{choice.describe()}; {plan.batch_size} sequences a step"


def onpolicy_sampler(config, model: ModelOutput, plan: Plan, workspace=None, write: bool = True):
    """What samples the on-policy summaries (`faithforge.stages.sampler`; a GGUF is written into the workspace's
    cache): part of the pairs' content key."""
    from faithforge.engine import SamplingConfig
    from faithforge.stages.sampler import choose_sampler, gguf_cache

    cfg = config.pairs
    if cfg.sampler == "served":
        from faithforge.stages.sampler import served_choice

        return served_choice(cfg.served_server, cfg.served_model, cfg.served_base_url)
    sampling = SamplingConfig(temperature=cfg.temperature, max_new_tokens=config.evaluate.max_new_tokens)
    return choose_sampler(cfg.sampler, plan, sampling, [(model.path, None)],
                          gguf_cache(workspace) if workspace is not None else None, write=write)


#: The evaluate settings on-policy pairs do not read: the rest (the judge's, the answer length) are in their key.
_EVALUATION_ONLY = frozenset({"split", "served_model", "served_backend", "served_base_url", "served_backend_options",
                              "worst_examples", "batch_size", "bootstrap_samples", "confidence", "sampler"})


def _judging_settings(config) -> dict:
    """The evaluate settings that judge (and cap) the on-policy samples, for the pairs' key: `pairs.judge` in place
    of `evaluate.judge` when set, and the likelihood dtype as the scorer will load it (`auto` differs by machine)."""
    from faithforge.evaluation.judge_options import declared_options, pairs_judge_settings
    from faithforge.evaluation.judges import judge_names
    from faithforge.evaluation.likelihood import resolved_dtype

    judging = pairs_judge_settings(config)
    # the LLM judge's backend settings say where its key is kept, not what it says
    settings = judging.model_dump(exclude=set(_EVALUATION_ONLY) | {"judge_options", "llm_backend_options"})
    settings["likelihood_dtype"] = resolved_dtype(settings["likelihood_dtype"])
    # only the sample judges' own settings, validated (defaults filled in); none (every built-in judge): no entry,
    # so pairs drawn before `judge_options` existed keep their key
    own = declared_options(judging, judge_names(judging.judge))
    return {**settings, "judge_options": own} if own else settings


def _pairs_judge(config, base_model: str | None = None, cache_root: str | None = None):
    """`pairs.judge` when set, else the evaluation's judge, with its options, built as the evaluate stage builds
    it (the likelihood judge scores with `base_model`, the policy being sampled, unless it names its own model)."""
    from faithforge.evaluation import get_judge
    from faithforge.evaluation.judge_options import judge_options, pairs_judge_settings

    settings = pairs_judge_settings(config)  # pairs.judge's settings (e.g. likelihood_*) are the evaluate section's
    return get_judge(settings.judge, **judge_options(settings, base_model=base_model, cache_root=cache_root))


def _imported_pairs(cfg):
    """`pairs.path` read, normalized and validated, with a report in the builders' shape."""
    from collections import Counter

    from faithforge.data.pairs import PairBuildReport, import_pairs

    pairs = import_pairs(cfg.path, split=cfg.path_split)
    return pairs, PairBuildReport(built=len(pairs), by_kind=Counter(p["kind"] for p in pairs))


def load_pairs(path: str) -> list[dict]:
    pairs = read_jsonl(path)
    validate_pairs(pairs, path)
    return pairs


def _no_pairs_message(config, report, sources: int) -> str:
    """Why the pairs stage has nothing to train on, and what to change."""
    cfg = config.pairs
    reasons = getattr(report, "dropped", None) or getattr(report, "dropped_sources", None) or {}
    dropped = ", ".join(f"{n} dropped: {why}" for why, n in sorted(reasons.items())) or "none dropped"
    if cfg.path:
        return f"pairs.path {cfg.path} gave no training pairs ({dropped}); add pairs or lower pairs.val_fraction"
    if cfg.builder == "on-policy":
        return (f"the on-policy pairs builder made no training pair from {sources} training source(s) ({dropped}): "
                "no two samples of a source differed enough (pairs.margin); add documents, raise "
                "pairs.samples_per_source or pairs.temperature, lower pairs.margin, or give pairs.path")
    return (f"no training pairs from {sources} training source(s) ({dropped}); add sources (generate.train_sources "
            "or data.documents_path)")
