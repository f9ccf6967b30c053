"""The gate plans a node: one GPU, DDP over N (each GPU holds the one-GPU plan; micro × accumulation × N keeps the
effective batch), or FSDP-QLoRA when only N GPUs together hold the model; gloo ranks on the CPU on request."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from faithforge.gpu.estimate import estimate_train, estimate_train_fsdp
from faithforge.gpu.model_shape import load_model_shape
from faithforge.gpu.planner import StageRequest, plan_stage, usable_bytes
from faithforge.gpu.profiles import profile_snapshot
from faithforge.gpu.snapshot import GpuSnapshot

TRAIN = StageRequest(batch_size=16, seq_len=512)


def _plan(profile: str, model: str, stage: str = "train", request: StageRequest = TRAIN, **kwargs):
    return plan_stage(profile_snapshot(profile), stage, [load_model_shape(model)], request, **kwargs)


@pytest.mark.parametrize("model", ["qwen2.5-7b", "qwen2.5-32b"])
def test_eight_a100s_run_ddp_with_the_effective_batch_kept_and_each_gpu_holding_the_one_gpu_plan(model):
    plan = _plan("8xa100-80gb", model)
    assert (plan.placement, plan.strategy, plan.num_processes) == ("gpu", "ddp", 8)
    assert plan.global_batch == TRAIN.batch_size and plan.requested_batch_size == 16
    assert len(plan.gpu_uuids) == 8 and len(set(plan.gpu_uuids)) == 8
    assert plan.estimated_peak_bytes <= plan.usable_bytes == usable_bytes(profile_snapshot("a100-80gb").devices[0])
    one_gpu = plan_stage(profile_snapshot("a100-80gb"), "train", [load_model_shape(model)],
                         dataclasses.replace(TRAIN, batch_size=plan.batch_size * plan.grad_accum))
    assert one_gpu.placement == "gpu" and one_gpu.batch_size == plan.batch_size
    # The DDP plan is the one-GPU plan of its micro-batch plus DDP's gradient buckets (one copy of the LoRA grads).
    assert plan.breakdown["ddp_gradient_buckets_bytes"] == plan.breakdown["lora_grads_bytes"] > 0
    assert plan.estimated_peak_bytes == one_gpu.estimated_peak_bytes + plan.breakdown["ddp_gradient_buckets_bytes"]
    assert "DDP over 8 processes" in plan.reason and "effective batch 16 (kept)" in plan.reason


def test_accumulation_is_cut_so_micro_times_accumulation_times_ranks_is_the_effective_batch():
    plan = _plan("2xrtx4090-24gb", "qwen2.5-7b", request=dataclasses.replace(TRAIN, batch_size=32))
    assert plan.strategy == "ddp" and plan.num_processes == 2
    assert plan.batch_size * plan.grad_accum * 2 == 32 and plan.global_batch == 32
    odd = _plan("8xa100-80gb", "qwen2.5-7b", request=dataclasses.replace(TRAIN, batch_size=12))
    assert odd.num_processes == 6 and odd.global_batch == 12  # the most ranks that split 12 evenly


def test_fsdp_when_no_single_gpu_holds_the_model_but_the_node_does():
    alone = _plan("rtx4090-24gb", "qwen2.5-32b")
    assert alone.placement != "gpu"  # one 24 GB card cannot train a 32B model even at micro-batch 1
    plan = _plan("2xrtx4090-24gb", "qwen2.5-32b")
    assert (plan.placement, plan.strategy, plan.num_processes, plan.global_batch) == ("gpu", "fsdp", 2, 16)
    assert plan.settings["bnb_4bit_quant_storage"] == "bfloat16" and plan.precision == "nf4"
    assert plan.estimated_peak_bytes <= plan.usable_bytes
    assert "bnb_4bit_quant_storage" in plan.reason and "FSDP over 2" in plan.reason
    # The reference pass is forward-only: one card holds it, so it is DDP (each rank scores its own shards).
    assert _plan("2xrtx4090-24gb", "qwen2.5-32b", "reference").strategy == "ddp"


def test_fsdp_estimate_shards_weights_and_lora_state_but_not_activations():
    shape = load_model_shape("qwen2.5-32b")
    one = estimate_train(shape, micro_batch=2, seq_len=512)
    two, eight = (estimate_train_fsdp(shape, processes=n, micro_batch=2, seq_len=512) for n in (2, 8))
    assert two.terms["weights_bytes"] == -(-one.terms["weights_bytes"] // 2)
    assert eight.terms["optimizer_state_bytes"] == -(-one.terms["optimizer_state_bytes"] // 8)
    assert two.terms["activations_bytes"] == eight.terms["activations_bytes"] == one.terms["activations_bytes"]
    assert eight.total_bytes < two.total_bytes < one.total_bytes
    assert two.terms["fsdp_gathered_units_bytes"] > 0


def test_one_gpu_profiles_and_max_gpus_1_keep_the_single_plan():
    single = _plan("rtx4070super-12gb", "qwen2.5-7b")
    assert (single.strategy, single.num_processes, single.gpu_uuids) == ("single", 1, [])
    assert single == _plan("rtx4070super-12gb", "qwen2.5-7b", max_processes=1)
    capped = _plan("8xa100-80gb", "qwen2.5-7b", max_processes=1)
    assert (capped.strategy, capped.num_processes) == ("single", 1)
    assert _plan("8xa100-80gb", "qwen2.5-7b", max_processes=2).num_processes == 2
    # Generation and evaluation stay one process (they are not node stages).
    assert _plan("8xa100-80gb", "qwen2.5-7b", "evaluate", StageRequest(batch_size=8)).num_processes == 1


def test_the_weakest_gpu_of_the_group_sizes_the_plan_and_a_gpu_too_busy_is_left_out():
    eight = profile_snapshot("8xa100-80gb")
    busy = dataclasses.replace(eight.devices[3], free_bytes=eight.devices[3].free_bytes // 4)  # ~20 GiB free
    snapshot = GpuSnapshot(devices=eight.devices[:3] + (busy,) + eight.devices[4:], source="test")
    plan = plan_stage(snapshot, "train", [load_model_shape("qwen2.5-7b")], TRAIN)
    assert plan.num_processes == 8 and plan.usable_bytes == usable_bytes(busy)
    assert plan.gpu_uuids[-1] == busy.uuid  # most usable first: rank 7 gets the busy card
    # A 32B model does not fit the busy card: the most ranks that split 16 among the 7 others is 4.
    big = plan_stage(snapshot, "train", [load_model_shape("qwen2.5-32b")], TRAIN)
    assert (big.strategy, big.num_processes, big.global_batch) == ("ddp", 4, 16) and busy.uuid not in big.gpu_uuids


def test_cpu_processes_give_gloo_ranks_with_the_global_batch_kept():
    tiny = load_model_shape("qwen2.5-7b")
    plan = plan_stage(GpuSnapshot(source="none"), "train", [tiny], TRAIN, cpu_max_params=10**11, cpu_processes=2)
    assert (plan.placement, plan.strategy, plan.num_processes, plan.global_batch) == ("cpu", "ddp", 2, 16)
    with pytest.raises(ValueError, match="does not split over 3 CPU processes"):
        plan_stage(GpuSnapshot(source="none"), "train", [tiny], TRAIN, cpu_max_params=10**11, cpu_processes=3)


def test_faithforge_gpu_shows_strategy_processes_and_per_gpu_peak(tmp_path, monkeypatch):
    from faithforge.app.cli_gpu import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FAITHFORGE_GPU_PROFILE", raising=False)
    monkeypatch.setenv("FAITHFORGE_GPU__SIZING_MODEL", "qwen2.5-32b")
    result = CliRunner().invoke(app, ["--profile", "8xa100-80gb", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert len(data["snapshot"]["devices"]) == 8
    train = data["plans"]["train"]
    assert (train["strategy"], train["num_processes"]) == ("ddp", 8)
    table = CliRunner().invoke(app, ["--profile", "2xrtx4090-24gb"], env={"COLUMNS": "300"})
    assert table.exit_code == 0 and "fsdp × 2" in table.output and "peak GiB / GPU" in table.output


def test_an_fsdp_plan_loads_nf4_with_the_weights_stored_in_bf16(tiny_model_dir):
    import torch

    from faithforge.training.modeling import load_for_plan
    from faithforge.gpu.planner import Plan

    fsdp = Plan.manual("train", "cpu", precision="nf4", strategy="fsdp", num_processes=2)
    model, _ = load_for_plan(tiny_model_dir, fsdp)
    assert model.config.quantization_config.bnb_4bit_quant_storage == torch.bfloat16
    layer = model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "Linear4bit" and layer.weight.dtype == torch.bfloat16  # packed codes, bf16 view
    ddp, _ = load_for_plan(tiny_model_dir, Plan.manual("train", "cpu", precision="nf4", strategy="ddp"))
    assert ddp.model.layers[0].self_attn.q_proj.weight.dtype == torch.uint8  # the default storage elsewhere

