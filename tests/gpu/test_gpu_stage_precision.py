"""Every stage loads the model exactly as its plan says (issue 13, finding 2), checked on the CPU, where
bitsandbytes 0.50 quantizes NF4 `Linear4bit` layers too; and the plan's GPU is the one a stage uses."""

from __future__ import annotations

import pytest

from faithforge.core.config import load_config
from faithforge.core.errors import UserError
from faithforge.stages.context import StageContext
from faithforge.gpu.planner import Plan

NF4 = Plan.manual("train", "cpu", precision="nf4", batch_size=2, grad_accum=1)


def nf4_for(stage: str) -> Plan:
    return NF4.model_copy(update={"stage": stage})


def _kinds(model) -> dict:
    import bitsandbytes as bnb
    import torch

    linear4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    plain = sum(type(m) is torch.nn.Linear for m in model.modules() if m is not model.get_output_embeddings())
    return {"linear4bit": linear4, "plain_linear": plain, "dtype": str(model.get_input_embeddings().weight.dtype)}


@pytest.fixture
def spy(monkeypatch):
    """Record what every stage's `load_for_plan` call really loaded (the real loader runs)."""
    import faithforge.training.modeling as modeling

    real = modeling.load_for_plan
    loads: list[tuple[str, dict]] = []

    def watched(path, plan):
        model, device = real(path, plan)
        loads.append((plan.precision, _kinds(model)))
        return model, device

    monkeypatch.setattr(modeling, "load_for_plan", watched)
    return loads


@pytest.mark.slow
def test_reference_train_control_evaluate_and_onpolicy_load_nf4_when_the_plan_says_nf4(tmp_path, spy):
    from faithforge.stages.evaluate import summarize_sources
    from faithforge.stages.generate import generate_examples, load_split
    from faithforge.stages.model import base_model
    from faithforge.stages.pairs import _sample_onpolicy_pairs, build_pairs
    from faithforge.stages.reference import reference_logps
    from faithforge.stages.train import train_dpo, train_sft_control

    cfg = load_config(None, environ={}, overrides={
        "workspace": str(tmp_path / "ws"), "generate": {"train_sources": 12, "val_sources": 10, "test_sources": 10},
        "pairs": {"samples_per_source": 2}, "evaluate": {"max_new_tokens": 4},
        "train": {"steps": 1, "batch_size": 2, "checkpoint_every": 1, "lora_r": 4, "lora_alpha": 8}})
    ctx = StageContext.open(cfg)
    dataset = generate_examples(ctx)
    model = base_model(ctx)
    pairs = build_pairs(ctx, dataset)
    reference = reference_logps(ctx, model, pairs, nf4_for("reference"))
    dpo = train_dpo(ctx, model, pairs, reference, NF4)
    train_sft_control(ctx, model, pairs, NF4)
    summarize_sources(model.path, [e.source for e in load_split(dataset, "test")[:2]], adapter=dpo.path,
                      plan=nf4_for("evaluate"), max_new_tokens=4, batch_size=2)
    _sample_onpolicy_pairs(ctx, load_split(dataset, "train")[:1], model, nf4_for("evaluate"))
    assert len(spy) == 5  # reference, train, control, evaluate, on-policy pairs
    for precision, kinds in spy:
        assert precision == "nf4"
        assert kinds["linear4bit"] > 0 and kinds["plain_linear"] == 0, kinds
        assert kinds["dtype"] == "torch.bfloat16"  # bitsandbytes keeps embeddings in the 16-bit compute dtype


def test_fp32_and_bf16_plans_load_no_4bit_layers(tiny_model_dir, spy):
    import faithforge.training.modeling as modeling

    for precision, dtype in (("fp32", "torch.float32"), ("bf16", "torch.bfloat16")):
        modeling.load_for_plan(tiny_model_dir, Plan.manual("warm_start", "gpu", precision=precision))
        assert spy[-1][1]["linear4bit"] == 0 and spy[-1][1]["dtype"] == dtype


def test_the_warm_start_refuses_a_4bit_plan(tmp_path):
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.model import base_model, warm_start

    cfg = load_config(None, environ={}, overrides={
        "workspace": str(tmp_path / "ws"), "generate": {"train_sources": 10, "val_sources": 10, "test_sources": 10},
        "warm_start": {"steps": 1, "batch_size": 2}})
    ctx = StageContext.open(cfg)
    dataset = generate_examples(ctx)
    with pytest.raises(UserError, match="full fine-tune"):
        warm_start(ctx, base_model(ctx), dataset, nf4_for("warm_start"))


def test_the_planned_gpu_is_the_only_one_the_stage_sees():
    from faithforge.training.modeling import visibility_env
    from faithforge.gpu.planner import StageRequest, plan_stage
    from faithforge.gpu.model_shape import load_model_shape
    from faithforge.gpu.snapshot import GpuDevice, GpuSnapshot

    busy = GpuDevice(index=0, name="A", uuid="GPU-aaaa", total_bytes=80 << 30, free_bytes=1 << 30, used_bytes=79 << 30)
    idle = GpuDevice(index=1, name="B", uuid="GPU-bbbb", total_bytes=80 << 30, free_bytes=79 << 30, used_bytes=1 << 30)
    plan = plan_stage(GpuSnapshot(devices=(busy, idle)), "train", [load_model_shape("qwen2.5-7b")],
                      StageRequest(batch_size=4, seq_len=512))
    assert (plan.gpu_index, plan.gpu_uuid) == (1, "GPU-bbbb")
    assert visibility_env(plan.gpu_uuid, cuda_initialized=False) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                                                                      "CUDA_VISIBLE_DEVICES": "GPU-bbbb"}
    assert visibility_env(plan.gpu_uuid, cuda_initialized=True) == {}  # then the index is made current instead
    assert visibility_env("GPU-simulated-rtx5070-12gb", cuda_initialized=False) == {}


def test_a_disabled_warm_start_is_neither_planned_nor_refused(tmp_path):
    """A 7B full fine-tune fits no 12 GB card; with the warm start off (your own SFT model) the gate must not
    refuse the run for it."""
    from faithforge.stages.gate import gate, plan_pipeline
    from faithforge.gpu.profiles import profile_snapshot

    cfg = load_config(None, environ={}, overrides={
        "workspace": str(tmp_path / "ws"), "gpu": {"sizing_model": "qwen2.5-7b", "profile": "rtx5070-12gb"},
        "reference": {"max_length": 1024}, "warm_start": {"enabled": False}})
    assert "warm_start" not in plan_pipeline(cfg, profile_snapshot("rtx5070-12gb"))
    record = gate(StageContext.open(cfg), "warm_start")
    assert record.skipped and record.placement == "cpu" and record.stage == "warm_start"
    enabled = cfg.model_copy(update={"warm_start": cfg.warm_start.model_copy(update={"enabled": True})})
    from faithforge.gpu.errors import PlanNotRunnableError

    with pytest.raises(PlanNotRunnableError, match="warm_start"):
        gate(StageContext.open(enabled), "warm_start")
