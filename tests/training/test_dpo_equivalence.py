"""Cached reference log-probs give the same training as TRL computing the reference live."""

from __future__ import annotations

import math

import torch
from tests.fixtures.dpo_support import build_cache, dpo_args, lora_policy, lora_state, make_pairs, rows_meeting_the_head

from faithforge.training.dpo import dpo_config, run_dpo

STEPS = 6


def test_reference_cache_equals_trl_compute_ref_log_probs(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from trl import DPOTrainer

    pairs = make_pairs(5)
    cache, _ = build_cache(tiny_model_dir, pairs, tmp_path / "cache", shard_size=3, max_length=40)
    cached = cache.load()
    policy, tokenizer = lora_policy(tiny_model_dir)
    args = dpo_config(dpo_args(tmp_path / "trl", steps=1, max_length=40, checkpoint_every=100),
                      precompute_ref_log_probs=False)
    columns = ["id", "prompt", "chosen", "rejected"]
    trainer = DPOTrainer(model=policy, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{k: p[k] for k in columns} for p in pairs]))
    dataset = trainer.train_dataset
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    assert batch["input_ids"].shape[1] == 40, "the batch must exercise truncation at max_length"
    chosen, rejected = trainer.compute_ref_log_probs(policy, batch)
    for row, pair_id in enumerate(dataset["id"]):
        ours = cached[pair_id]
        assert abs(ours.chosen_logps - float(chosen[row])) < 1e-5, pair_id
        assert abs(ours.rejected_logps - float(rejected[row])) < 1e-5, pair_id
    ours_tokens = [(cached[i].chosen_tokens, cached[i].rejected_tokens) for i in dataset["id"]]
    counts = batch["completion_mask"][:, 1:].sum(-1).tolist()
    assert ours_tokens == list(zip(counts[: len(dataset)], counts[len(dataset):]))


def test_cached_reference_training_equals_live_reference_training(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from trl import DPOTrainer

    pairs = make_pairs(8)
    cache, _ = build_cache(tiny_model_dir, pairs, tmp_path / "cache", shard_size=4)

    ours_model, tokenizer = lora_policy(tiny_model_dir, seed=3)
    # TRL's single pass, as the live run does: this test isolates the cache; prompt sharing has its own below
    ours = run_dpo(ours_model, tokenizer, pairs, cache.load(),
                   dpo_args(tmp_path / "ours", steps=STEPS, max_length=None, checkpoint_every=100,
                            share_prompt=False))

    live_model, tokenizer = lora_policy(tiny_model_dir, seed=3)
    args = dpo_config(dpo_args(tmp_path / "live", steps=STEPS, max_length=None, checkpoint_every=100),
                      precompute_ref_log_probs=False)
    columns = ["id", "prompt", "chosen", "rejected"]
    live = DPOTrainer(model=live_model, args=args, processing_class=tokenizer,
                      train_dataset=Dataset.from_list([{k: p[k] for k in columns} for p in pairs]))
    live.train()
    live_losses = [h["loss"] for h in live.state.log_history if "loss" in h]

    our_losses = [h["loss"] for h in ours["history"]]
    assert len(our_losses) == len(live_losses) == STEPS
    assert abs(our_losses[0] - math.log(2)) < 1e-4  # step 0: policy == reference
    assert max(abs(a - b) for a, b in zip(our_losses, live_losses)) < 1e-4, (our_losses, live_losses)
    assert our_losses[-1] < our_losses[0] - 1e-3, "training must move the loss, or the comparison proves nothing"

    ours_weights, live_weights = lora_state(ours["trainer"].model), lora_state(live.model)
    # TRL keeps a frozen copy named `ref` (never trained); FaithForge drops it (its reference is the cache).
    assert not any(".ref." in name for name in ours_weights)
    live_weights = {k: v for k, v in live_weights.items() if ".ref." not in k}
    assert ours_weights.keys() == live_weights.keys() and ours_weights
    for name, value in ours_weights.items():
        torch.testing.assert_close(value, live_weights[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_policy_head_projects_only_the_completion_tokens_on_the_cpu(tiny_model_dir, tmp_path):
    """TRL's fused head scores every position (prompt and padding included) off Triton devices; FaithForge's trainer
    scores only the completion tokens there too (a DPO step of the real demo: 12.5 s → 6.7 s, BENCHMARKS.md). One
    step over all pairs in one batch: the head sees exactly the completion tokens the reference cache counted."""
    pairs = make_pairs(4)
    cache, _ = build_cache(tiny_model_dir, pairs, tmp_path / "cache", shard_size=8)
    cached = cache.load()
    policy, tokenizer = lora_policy(tiny_model_dir)
    with rows_meeting_the_head() as rows:
        out = run_dpo(policy, tokenizer, pairs, cached,
                      dpo_args(tmp_path / "run", steps=1, micro_batch=len(pairs), max_length=None, checkpoint_every=100))
    assert out["steps"] == 1
    assert rows == [sum(cached[p["id"]].chosen_tokens + cached[p["id"]].rejected_tokens for p in pairs)]
    assert abs(out["history"][0]["loss"] - math.log(2)) < 1e-4  # and the numbers are the reference's at step 0


def test_training_with_each_prompt_encoded_once_equals_training_without(tiny_model_dir, tmp_path):
    """`share_prompt` (the default) changes how the backbone is run, not what it computes: the same steps give
    the same losses and LoRA weights as TRL's single pass, up to float32 rounding carried through AdamW."""
    pairs = make_pairs(8)
    cache, _ = build_cache(tiny_model_dir, pairs, tmp_path / "cache", shard_size=4)
    runs = {}
    for share in (True, False):
        model, tokenizer = lora_policy(tiny_model_dir, seed=3)
        out = run_dpo(model, tokenizer, pairs, cache.load(),
                      dpo_args(tmp_path / f"run-{share}", steps=STEPS, max_length=None, checkpoint_every=100,
                               share_prompt=share))
        runs[share] = ([h["loss"] for h in out["history"]], lora_state(out["trainer"].model))
    (shared_losses, shared_weights), (plain_losses, plain_weights) = runs[True], runs[False]
    assert max(abs(a - b) for a, b in zip(shared_losses, plain_losses)) < 1e-5
    assert shared_losses[-1] < shared_losses[0] - 1e-3, "training must move the loss, or the comparison proves nothing"
    for name, value in shared_weights.items():
        torch.testing.assert_close(value, plain_weights[name], atol=1e-5, rtol=1e-4, msg=name)



def test_bf16_autocast_builds_on_a_machine_without_cuda(tmp_path):
    """`bench/dpo_cpu_autocast.py` trains under bf16 autocast on the CPU; transformers refuses `bf16=True` there
    unless `use_cpu` is set, which the config used to leave off whenever bf16 was asked for."""
    if torch.cuda.is_available():
        import pytest

        pytest.skip("on a CUDA machine bf16 trains on the GPU")
    config = dpo_config(dpo_args(tmp_path / "bf16", steps=1, max_length=40, checkpoint_every=100, bf16=True),
                        precompute_ref_log_probs=False)
    assert config.bf16 and config.use_cpu


def test_a_cpu_plan_trains_on_the_cpu_on_a_host_with_a_gpu(tmp_path, monkeypatch):
    """A review found `use_cpu` decided by the host, not the plan: on a GPU host a CPU-placed train stage (or a
    gloo rank) would have been moved to cuda:0 by the Trainer, outside the gate and the `gpu` slot."""
    import faithforge.training.dpo as dpo

    monkeypatch.setattr(dpo, "_cuda_available", lambda: True)
    on_cpu = dpo.dpo_config(dpo_args(tmp_path / "cpu", steps=1, max_length=40, checkpoint_every=100, on_cpu=True))
    assert on_cpu.use_cpu
    unplanned = dpo.dpo_config(dpo_args(tmp_path / "any", steps=1, max_length=40, checkpoint_every=100))
    assert not unplanned.use_cpu  # no plan said where: the host's GPU, as before
