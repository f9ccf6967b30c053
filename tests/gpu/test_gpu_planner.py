"""Planner decisions on the field notes' GPUs, and its safety invariants."""

from __future__ import annotations

import pytest

from faithforge.gpu.corrections import Corrections
from faithforge.gpu.errors import PlanNotRunnableError
from faithforge.gpu.estimate import estimate_ollama, estimate_train
from faithforge.gpu.model_shape import ModelShape, load_model_shape
from faithforge.gpu.ollama_sizes import ollama_model
from faithforge.gpu.planner import Plan, StageRequest, plan_stage, require_runnable, usable_bytes
from faithforge.gpu.profiles import profile_snapshot

TINY = ModelShape(name="tiny", model_type="llama", hidden_size=128, intermediate_size=256, num_layers=2,
                  num_attention_heads=4, num_kv_heads=4, head_dim=32, vocab_size=1024)


def test_rtx5070_two_live_4bit_7b_models_do_not_fit_so_reference_log_probs_are_cached():
    snap = profile_snapshot("rtx5070-12gb")
    usable = usable_bytes(snap.devices[0])
    model = load_model_shape("qwen2.5-7b")
    two_models = estimate_train(model, micro_batch=1, seq_len=512, ref_strategy="live", reference_model="separate-copy")
    assert two_models.total_bytes > usable  # the seed note: 15.8 GB reserved vs 10.48 GB free
    request = StageRequest(batch_size=4, seq_len=512, reference_model="separate-copy")
    plan = plan_stage(snap, "train", [model], request)
    assert (plan.placement, plan.gpu_index, plan.ref_strategy) == ("gpu", 0, "cached")
    assert plan.batch_size * plan.grad_accum == 4
    assert plan.estimated_peak_bytes <= plan.usable_bytes == usable
    assert plan.headroom_bytes == usable - plan.estimated_peak_bytes
    assert "cached" in plan.reason and "live reference pass does not fit" in plan.reason
    with pytest.raises(PlanNotRunnableError):  # forcing live leaves no local option and no pool
        require_runnable(plan_stage(snap, "train", [model], StageRequest(
            batch_size=4, seq_len=512, ref_strategy="live", reference_model="separate-copy")))


def test_rtx4070super_refuses_30b_at_batch_8_and_16k_tokens():
    snap = profile_snapshot("rtx4070super-12gb")
    big, small = ollama_model("qwen3:30b-a3b"), ollama_model("qwen3:8b")
    request = StageRequest(batch_size=8, max_tokens=16000, prompt_tokens=2048)
    assert estimate_ollama(big, parallel=8, context_tokens=18048).total_bytes > usable_bytes(snap.devices[0])
    plan = plan_stage(snap, "generate", [big, small], request)
    assert plan.placement == "gpu" and plan.fits
    assert plan.model == "qwen3:8b" or (plan.batch_size == 1 and plan.max_tokens <= 4096)
    assert not (plan.model == "qwen3:30b-a3b" and plan.batch_size == 8 and plan.max_tokens == 16000)
    assert plan.estimated_peak_bytes <= plan.usable_bytes
    assert "qwen3:30b-a3b" in plan.reason and "instead of" in plan.reason
    kept = plan_stage(snap, "generate", [big, small], request, policy="keep-model", offload_target="a100")
    assert (kept.placement, kept.model, kept.offload_target) == ("offload", "qwen3:30b-a3b", "a100")


def test_generation_shrinks_tokens_and_batch_within_one_model():
    snap = profile_snapshot("rtx4070super-12gb")
    plan = plan_stage(snap, "generate", [ollama_model("qwen3:8b")],
                      StageRequest(batch_size=8, max_tokens=16000, prompt_tokens=2048))
    assert plan.placement == "gpu" and plan.batch_size < 8
    assert plan.estimated_peak_bytes <= plan.usable_bytes


def test_a100_80gb_runs_everything_locally_as_requested():
    snap = profile_snapshot("a100-80gb")
    model = load_model_shape("llama-3-8b")
    gen = plan_stage(snap, "generate", [ollama_model("qwen3:30b-a3b")],
                     StageRequest(batch_size=8, max_tokens=16000, prompt_tokens=2048))
    assert (gen.placement, gen.model, gen.batch_size, gen.max_tokens) == ("gpu", "qwen3:30b-a3b", 8, 16000)
    for stage, request in {"reference": StageRequest(batch_size=8, seq_len=1024),
                           "train": StageRequest(batch_size=8, seq_len=1024),
                           "evaluate": StageRequest(batch_size=32, max_tokens=256, prompt_tokens=1024)}.items():
        plan = plan_stage(snap, stage, [model], request)
        assert plan.placement == "gpu" and plan.batch_size == request.batch_size and plan.grad_accum == 1, stage
        assert require_runnable(plan) is plan


def test_no_gpu_offloads_big_models_when_a_pool_exists_and_stops_clearly_otherwise():
    snap = profile_snapshot("none")
    model = load_model_shape("qwen3-8b")
    for stage in ("reference", "train", "evaluate"):
        plan = plan_stage(snap, stage, [model], StageRequest(batch_size=8, seq_len=512), offload_target="a100")
        assert (plan.placement, plan.offload_target, plan.fits) == ("offload", "a100", True)
        assert require_runnable(plan) is plan
        stuck = plan_stage(snap, stage, [model], StageRequest(batch_size=8, seq_len=512))
        assert (stuck.placement, stuck.offload_target) == ("offload", None)
        with pytest.raises(PlanNotRunnableError) as err:
            require_runnable(stuck)
        assert "smaller model" in str(err.value) and "gpu.offload_pool" in str(err.value)
    gen = plan_stage(snap, "generate", [ollama_model("qwen3:8b")], StageRequest(batch_size=4))
    assert gen.placement == "offload" and gen.offload_target is None


def test_no_gpu_runs_small_models_on_cpu_and_template_generation_needs_nothing():
    snap = profile_snapshot("none")
    plan = plan_stage(snap, "train", [TINY], StageRequest(batch_size=16, seq_len=128))
    assert (plan.placement, plan.batch_size, plan.grad_accum, plan.gpu_index) == ("cpu", 16, 1, None)
    assert plan.breakdown["cuda_context_bytes"] == 0 and plan.settings["quantization"] == "fp32"
    template = plan_stage(snap, "generate", [], StageRequest(batch_size=8))
    assert (template.placement, template.model, template.estimated_peak_bytes) == ("cpu", "template", 0)


@pytest.mark.parametrize("profile", ["rtx4070super-12gb", "rtx5070-12gb", "rtx4090-24gb", "a100-40gb"])
@pytest.mark.parametrize("effective", [1, 6, 12, 16])
def test_train_plans_keep_the_effective_batch_and_never_exceed_usable(profile, effective):
    snap = profile_snapshot(profile)
    plan = plan_stage(snap, "train", [load_model_shape("llama-3-8b")],
                      StageRequest(batch_size=effective, seq_len=1024), offload_target="a100")
    assert plan.batch_size * plan.grad_accum == effective
    if plan.placement == "gpu":
        assert plan.estimated_peak_bytes <= plan.usable_bytes
        assert sum(plan.breakdown.values()) == plan.estimated_peak_bytes


def test_calibration_factor_scales_the_estimate_and_can_change_the_plan():
    snap = profile_snapshot("rtx4090-24gb")
    model = load_model_shape("llama-3-8b")
    request = StageRequest(batch_size=16, seq_len=1024)
    plain = plan_stage(snap, "reference", [model], request)
    doubled = plan_stage(snap, "reference", [model], request,
                         corrections=Corrections().with_factor(snap.devices[0].name, model.name, "reference", 2.0))
    assert doubled.correction_factor == 2.0 and doubled.batch_size < plain.batch_size
    assert doubled.breakdown["calibration_correction_bytes"] > 0
    assert doubled.estimated_peak_bytes <= doubled.usable_bytes


def test_bad_stage_and_policy_are_rejected():
    snap = profile_snapshot("a100-80gb")
    with pytest.raises(ValueError, match="stage must be"):
        plan_stage(snap, "deploy", [TINY], StageRequest(batch_size=1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="policy"):
        plan_stage(snap, "train", [TINY], StageRequest(batch_size=1), policy="yolo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        StageRequest(batch_size=0)


def test_generation_plans_name_the_ollama_num_ctx_their_estimate_assumes():
    """Issue 13 finding 9: the request must send the num_ctx the gate sized the KV cache for."""
    snap = profile_snapshot("rtx4090-24gb")
    request = StageRequest(batch_size=2, max_tokens=2048, prompt_tokens=16384)
    plan = plan_stage(snap, "generate", [ollama_model("qwen3:8b")], request)
    assert plan.num_ctx == plan.settings["context_tokens"] == 16384 + plan.max_tokens
    kv = estimate_ollama(ollama_model("qwen3:8b"), parallel=plan.batch_size, context_tokens=plan.num_ctx)
    assert plan.breakdown["kv_cache_bytes"] == kv.terms["kv_cache_bytes"]
    hf = plan_stage(snap, "evaluate", [load_model_shape("qwen2.5-7b")], StageRequest(batch_size=4))
    assert hf.num_ctx is None and hf.precision == "nf4"


def test_a_plan_stored_with_the_older_placement_name_reads_back():
    """The placement `gpu` was named `local` (also a backend's and a work pool's name); a gate record written then,
    read back by a resumed run, is a `gpu` plan."""
    stored = Plan.manual("train", "gpu").to_dict() | {"placement": "local"}
    assert Plan.model_validate(stored).placement == "gpu"
