"""Real TRL trainers on a tiny NF4 model on the CPU (bitsandbytes 0.50 quantizes Linear4bit there): the OOM
back-off retries on the same model, the step-0 guard fails on NaN and accepts a bf16 run, and a finished run
is never trained past its last step."""

from __future__ import annotations

import math

import pytest

from tests.fixtures.dpo_support import make_pairs

from faithforge.gpu.planner import Plan

pytestmark = pytest.mark.filterwarnings("ignore")
NF4_PLAN = Plan.manual("train", "cpu", precision="nf4", batch_size=2, grad_accum=1)


def _nf4_policy(model_dir):
    import torch

    from faithforge.training.modeling import attach_lora, load_for_plan, load_tokenizer

    model, device = load_for_plan(model_dir, NF4_PLAN)
    torch.manual_seed(0)
    policy = attach_lora(model, r=4, alpha=8, dropout=0.0, quantized=True, gradient_checkpointing=False)
    return policy, load_tokenizer(model_dir)


def _reference(model_dir, pairs, directory):
    """The reference cache computed the way the stage does for an NF4 plan (same kernel, bf16 tiles)."""
    from faithforge.training.modeling import compute_dtype_name, load_for_plan, load_tokenizer, precision_quantization
    from faithforge.training.reference_cache import ReferenceCache, cache_key, compute_reference_cache, weights_fingerprint

    model, _ = load_for_plan(model_dir, NF4_PLAN)
    tokenizer = load_tokenizer(model_dir)
    key, components = cache_key(weights=weights_fingerprint(model_dir), tokenizer=tokenizer, max_length=None,
                                truncation_mode="keep_start", quantization=precision_quantization("nf4"),
                                pairs=pairs, compute_dtype=compute_dtype_name("nf4", "cpu"))
    cache = ReferenceCache(directory, key, components, shard_size=64)
    compute_reference_cache(model, tokenizer, pairs, cache, batch_size=4, max_length=None)
    return cache.load(), components


def _train(policy, tokenizer, pairs, reference, out, *, steps, micro_batch=2, grad_accum=1, callbacks=None):
    from faithforge.training.dpo import DpoArguments, run_dpo

    return run_dpo(policy, tokenizer, pairs, reference, DpoArguments(
        output_dir=str(out), steps=steps, micro_batch=micro_batch, grad_accum=grad_accum, learning_rate=5e-3,
        beta=0.1, max_length=None, seed=7, checkpoint_every=2), extra_callbacks=callbacks)


def test_nf4_reference_cache_key_names_the_compute_dtype_and_training_passes_the_step0_check(tiny_model_dir,
                                                                                             tmp_path):
    import bitsandbytes as bnb

    pairs = make_pairs(6)
    reference, components = _reference(tiny_model_dir, pairs, tmp_path / "ref")
    assert components["compute_dtype"] == "bfloat16" and components["quantization"]["bnb_4bit_quant_type"] == "nf4"
    policy, tokenizer = _nf4_policy(tiny_model_dir)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in policy.modules())
    result = _train(policy, tokenizer, pairs, reference, tmp_path / "run", steps=2)
    first = result["history"][0]
    assert abs(first["loss"] - math.log(2)) < 1e-3  # bf16 tiles on both sides: step 0 is the reference
    assert "ref" not in policy.peft_config  # TRL's frozen copy is gone: not in VRAM, not saved
    policy.save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "ref").exists()


def test_oom_inside_a_training_step_backs_off_and_retries_on_the_same_model(tiny_model_dir, tmp_path):
    import torch

    from faithforge.training.dpo import DpoArguments, run_dpo
    from faithforge.gpu import run_with_oom_backoff

    pairs = make_pairs(6)
    reference, _ = _reference(tiny_model_dir, pairs, tmp_path / "ref")
    policy, tokenizer = _nf4_policy(tiny_model_dir)
    fired: list[int] = []

    def oom_in_forward(module, args):  # inside the trainer's forward, at the 3rd step of the first attempt
        if len(fired) == 0 and state["trainer_step"] == 2:
            fired.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated at step 3)")

    state = {"trainer_step": 0}
    from transformers import TrainerCallback

    class StepWatch(TrainerCallback):
        def on_step_begin(self, args, s, control, **kwargs):  # noqa: ARG002
            state["trainer_step"] = s.global_step

    hook = policy.get_base_model().model.layers[0].register_forward_pre_hook(oom_in_forward)
    events = []

    def attempt(plan):
        out = run_dpo(policy, tokenizer, pairs, reference, DpoArguments(
            output_dir=str(tmp_path / "run"), steps=4, micro_batch=plan.batch_size, grad_accum=plan.grad_accum,
            learning_rate=5e-3, beta=0.1, max_length=None, seed=7, checkpoint_every=2), extra_callbacks=[StepWatch()])
        return {**out, "micro_batch": plan.batch_size, "grad_accum": plan.grad_accum}

    try:
        result = run_with_oom_backoff(attempt, NF4_PLAN.with_micro_batch(2, 1), on_backoff=events.append)
    finally:
        hook.remove()
    assert fired and len(events) == 1
    assert (result["micro_batch"], result["grad_accum"]) == (1, 2)  # effective batch kept
    assert result["resumed_from"].endswith("checkpoint-2") and result["steps"] == 4
    assert "ref" not in policy.peft_config


def test_a_nan_loss_stops_the_run(tiny_model_dir, tmp_path):
    from faithforge.training.dpo import ReferenceMismatchError

    pairs = make_pairs(4)
    reference, _ = _reference(tiny_model_dir, pairs, tmp_path / "ref")
    broken = {k: v._replace(chosen_logps=float("nan")) for k, v in reference.items()}
    policy, tokenizer = _nf4_policy(tiny_model_dir)
    with pytest.raises(ReferenceMismatchError, match="non-finite"):
        _train(policy, tokenizer, pairs, broken, tmp_path / "run", steps=2)


def test_step0_tolerance_scales_with_dtype_and_tokens():
    from faithforge.training.dpo import step0_tolerance

    assert step0_tolerance("float32", 0.1, 500) == 1e-3
    short, long = step0_tolerance("bfloat16", 0.1, 16), step0_tolerance("bfloat16", 0.1, 1024)
    assert 1e-3 < short < long < 0.1  # a wrong cache is off by whole nats per token, far above this


def test_a_finished_run_whose_adapter_was_deleted_is_not_trained_past_its_last_step(tiny_model_dir, tmp_path):
    """Issue 11 item 3: rerunning after `rm -rf adapters/dpo-*` resumed from checkpoint-N and trained step N+1."""
    import torch

    pairs = make_pairs(4)
    reference, _ = _reference(tiny_model_dir, pairs, tmp_path / "ref")
    policy, tokenizer = _nf4_policy(tiny_model_dir)
    first = _train(policy, tokenizer, pairs, reference, tmp_path / "run", steps=4)
    trained = {k: v.detach().clone() for k, v in policy.state_dict().items() if "lora_" in k}
    again, tokenizer = _nf4_policy(tiny_model_dir)  # a new process: fresh adapter, checkpoints on disk
    second = _train(again, tokenizer, pairs, reference, tmp_path / "run", steps=4)
    assert first["steps"] == second["steps"] == 4
    assert second["resumed_from"].endswith("checkpoint-4")
    assert [h["loss"] for h in second["history"]] == [h["loss"] for h in first["history"]]
    for name, value in again.state_dict().items():
        if "lora_" in name:
            assert torch.equal(value, trained[name]), name
