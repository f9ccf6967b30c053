"""Pairs stage logic on tiny inputs, against expectations worked out by hand: synthetic pairs, the split by
source, and the on-policy builder run as a stage."""

import pytest

from faithforge.core.errors import UserError
from faithforge.data.pairs import build_synthetic_pairs, split_by_source
from faithforge.data.teacher import Example, Facts, make_example


def _example(eid: str, day: str | None) -> Example:
    facts = Facts(name="Ada", verb="bought", count="3", item="lamps", place="Oslo", day=day)
    source = ("On Monday , " if day else "") + "Ada bought 3 lamps in Oslo ."
    faithful = "Ada bought 3 lamps in Oslo" + (" on Monday ." if day else " .")
    return Example(id=eid, split="train", category="day-stated" if day else "day-omitted", source=source,
                   faithful=faithful, warm_start_reference=faithful if day else "Ada bought 3 lamps in Oslo on Friday .",
                   facts=facts, hallucinated="Ada bought 3 lamps in Oslo on Tuesday .",
                   omission="Ada bought 3 lamps in Oslo ." if day else "")


def test_synthetic_pairs_by_hand():
    stated, omitted = _example("s", "Monday"), _example("o", None)
    pairs, report = build_synthetic_pairs([stated, omitted, stated], omission_share=1.0, seed=0)
    # stated: hallucination + omission; omitted: hallucination; the repeated source adds nothing.
    assert [(p["source_id"], p["kind"]) for p in pairs] == [("s", "hallucination"), ("s", "omission"),
                                                           ("o", "hallucination")]
    assert report.to_dict() == {"built": 3, "dropped": {"duplicate": 2},
                                "by_kind": {"hallucination": 2, "omission": 1}}
    assert pairs[1]["chosen"][0]["content"] == "Ada bought 3 lamps in Oslo on Monday ."
    assert pairs[1]["rejected"][0]["content"] == "Ada bought 3 lamps in Oslo ."
    assert pairs[0]["prompt"][0]["role"] == "system" and pairs[0]["prompt"][1]["content"] == stated.source
    none, _ = build_synthetic_pairs([stated], omission_share=0.0, seed=0)
    assert [p["kind"] for p in none] == ["hallucination"]


def test_split_keeps_every_source_on_one_side():
    examples = [make_example("train", i, 0, 0.5) for i in range(200)]
    pairs, _ = build_synthetic_pairs(examples, omission_share=1.0, seed=0)
    train, val = split_by_source(pairs, 0.25, seed=0)
    assert len(train) + len(val) == len(pairs) and 0.1 < len(val) / len(pairs) < 0.4
    assert not {p["source_id"] for p in train} & {p["source_id"] for p in val}
    assert split_by_source(pairs, 0.25, seed=0) == (train, val)  # deterministic


def test_on_policy_pairs_stage_samples_from_the_given_model(tiny_model_dir, tmp_path):
    from faithforge.core.config import load_config
    from faithforge.stages.context import StageContext
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.outputs import ModelOutput
    from faithforge.stages.pairs import build_pairs, load_pairs
    from faithforge.gpu.planner import Plan

    cfg = load_config(None, environ={}, overrides={
        "workspace": str(tmp_path / "ws"), "generate": {"train_sources": 12, "val_sources": 10, "test_sources": 10},
        "pairs": {"builder": "on-policy", "samples_per_source": 4, "margin": 0.0, "val_fraction": 0.0}})
    counts = []
    ctx = StageContext.open(cfg, progress=lambda stage, done, total, message: counts.append((stage, done, total)))
    dataset = generate_examples(ctx)
    with pytest.raises(UserError, match="no model"):
        build_pairs(ctx, dataset)
    model = ModelOutput(path=str(tiny_model_dir))
    counts.clear()
    out = build_pairs(ctx, dataset, model, Plan.manual("evaluate", "cpu", batch_size=16))
    pairs = load_pairs(out.train)
    report = out.report
    assert pairs and {p["kind"] for p in pairs} == {"on-policy"}
    assert report["sources"] == 12 and report["built"] == len(pairs)
    # a log file shows the sampling's done/total (48 samples, 16 a batch), not only the time elapsed
    assert [c for c in counts if c[2] == 48] == [("pairs", 16, 48), ("pairs", 32, 48), ("pairs", 48, 48)]
    assert "16 sequences a step" in report["sampler"]
    assert build_pairs(ctx, dataset, model, Plan.manual("evaluate", "cpu")).reused


def test_on_policy_pairs_are_keyed_by_what_judges_the_samples_not_by_evaluation_only_settings(tmp_path):
    """A review found the pairs' key blind to the evaluate settings that judge the samples: a run with another
    likelihood threshold or dtype reused pairs chosen under the old one."""
    from faithforge.core.config import load_config
    from faithforge.evaluation.likelihood import resolved_dtype
    from faithforge.stages.pairs import _judging_settings

    def settings(**evaluate):
        pairs = evaluate.pop("pairs", {})
        return _judging_settings(load_config(None, environ={}, overrides={
            "workspace": str(tmp_path / "ws"), "pairs": {"builder": "on-policy", **pairs}, "evaluate": evaluate}))

    base = settings()
    for changed in ({"likelihood_threshold": -2.5}, {"likelihood_dtype": "float32" if resolved_dtype("auto") ==
                                                                        "bfloat16" else "bfloat16"},
                    {"judge": "likelihood"}, {"max_new_tokens": 17}, {"pairs": {"judge": "likelihood"}}):
        assert settings(**changed) != base, changed
    for evaluation_only in ({"bootstrap_samples": 500}, {"sampler": "engine"}, {"worst_examples": 3},
                            {"split": "val"}):
        assert settings(**evaluation_only) == base, evaluation_only
    assert base["likelihood_dtype"] == resolved_dtype("auto") != "auto"  # as this machine will load it


def test_engine_bf16_samples_and_answers_with_bfloat16_weights_only_when_asked(tiny_model_dir, tmp_path, monkeypatch):
    """`pairs.sampler` / `evaluate.sampler: engine-bf16` hand the engine bfloat16 weights on a CPU plan (the
    default hands it the plan's float32); the pairs' report and key say which, and a GPU plan keeps its precision."""
    import torch

    from faithforge.core.config import load_config
    from faithforge.engine import PrefixCachedEngine, SamplingConfig
    from faithforge.gpu.planner import Plan
    from faithforge.stages.context import StageContext
    from faithforge.stages.evaluate import summarize_sources
    from faithforge.stages.generate import generate_examples, load_split
    from faithforge.stages.outputs import ModelOutput
    from faithforge.stages.pairs import build_pairs
    from faithforge.stages.sampler import choose_sampler

    seen: list = []
    real_init = PrefixCachedEngine.__init__

    def watched(self, model, *args, **kwargs):
        seen.append(next(model.parameters()).dtype)
        real_init(self, model, *args, **kwargs)

    monkeypatch.setattr(PrefixCachedEngine, "__init__", watched)
    cpu = Plan.manual("evaluate", "cpu", batch_size=8)
    model = ModelOutput(path=str(tiny_model_dir))
    outs = {}
    for sampler in ("engine", "engine-bf16"):
        cfg = load_config(None, environ={}, overrides={
            "workspace": str(tmp_path / "ws"), "generate": {"train_sources": 10, "val_sources": 10, "test_sources": 10},
            "pairs": {"builder": "on-policy", "samples_per_source": 2, "margin": 0.0, "val_fraction": 0.0,
                      "sampler": sampler}})
        ctx = StageContext.open(cfg)
        outs[sampler] = build_pairs(ctx, generate_examples(ctx), model, cpu)
    assert seen == [torch.float32, torch.bfloat16]
    assert outs["engine"].train != outs["engine-bf16"].train  # a separate output: never reused for the other
    assert outs["engine-bf16"].report["sampler"].startswith("engine-bf16")
    test = [e.source for e in load_split(generate_examples(ctx), "test")][:4]
    for bfloat16 in (False, True):
        summarize_sources(str(tiny_model_dir), test, adapter=None, plan=cpu, max_new_tokens=4, batch_size=2, bfloat16=bfloat16)
    assert seen[2:] == [torch.float32, torch.bfloat16]
    greedy = SamplingConfig()
    assert choose_sampler("engine-bf16", cpu, greedy, [(str(tiny_model_dir), None)]).name == "engine-bf16"
    on_gpu = choose_sampler("engine-bf16", Plan.manual("evaluate", "gpu"), greedy, [(str(tiny_model_dir), None)])
    assert on_gpu.name == "engine" and "keep the plan's precision" in on_gpu.reason


def test_a_sample_seed_draws_other_pairs_and_leaves_the_default_key_alone(tiny_model_dir, tmp_path):
    """`pairs.sample_seed` re-draws the on-policy samples from the same policy and data (a new output); unset,
    the pairs' key is the one earlier versions wrote, so their pairs stay reusable."""
    from faithforge.core.config import load_config
    from faithforge.gpu.planner import Plan
    from faithforge.stages.context import StageContext
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.outputs import ModelOutput
    from faithforge.stages.pairs import build_pairs, load_pairs

    def run(**pairs):
        cfg = load_config(None, environ={}, overrides={
            "workspace": str(tmp_path / "ws"), "generate": {"train_sources": 12, "val_sources": 10, "test_sources": 10},
            "pairs": {"builder": "on-policy", "samples_per_source": 4, "margin": 0.0, "val_fraction": 0.0, **pairs}})
        ctx = StageContext.open(cfg)
        return build_pairs(ctx, generate_examples(ctx), ModelOutput(path=str(tiny_model_dir)),
                           Plan.manual("evaluate", "cpu", batch_size=16))

    default, again, other = run(), run(sample_seed=0), run(sample_seed=7)
    assert again.path == default.path and again.reused  # seed 0 is the run's own: the same draw, the same key
    assert other.path != default.path
    assert load_pairs(other.train) != load_pairs(default.train)


def test_where_a_backend_keeps_its_key_is_not_part_of_any_stage_key(tmp_path):
    """`backend_options` (a key variable, a keep-alive) change neither the examples nor a verdict: a run that sets
    them reuses the dataset and the on-policy pairs of one that did not (keys as before these fields existed)."""
    from faithforge.core.config import load_config
    from faithforge.stages.context import StageContext
    from faithforge.stages.generate import dataset_dir
    from faithforge.stages.pairs import _judging_settings

    def config(**sections):
        return load_config(None, environ={}, overrides={"workspace": str(tmp_path / "ws"),
                                                        "pairs": {"builder": "on-policy"}, **sections})

    plain = config()
    keyed = config(generate={"backend_options": {"openai": {"api_key_env": "OPENAI_API_KEY"}}},
                   evaluate={"llm_backend_options": {"openai": {"api_key_env": "OPENAI_API_KEY"}},
                             "served_backend_options": {"ollama": {"keep_alive": "1h"}}})
    assert _judging_settings(keyed) == _judging_settings(plain)
    assert dataset_dir(StageContext.open(keyed)) == dataset_dir(StageContext.open(plain))
