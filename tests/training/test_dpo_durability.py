"""DPO training survives SIGKILL (resumes from the last complete checkpoint) and refuses foreign caches."""

from __future__ import annotations

import json

import pytest
import torch
from tests.fixtures.dpo_support import build_cache, dpo_args, kill_when, lora_policy, lora_state, make_pairs, start_script

from faithforge.training.dpo import ReferenceMismatchError, last_complete_checkpoint, run_dpo

STEPS = 6


def test_sigkill_after_checkpoint_resumes_to_max_steps_as_if_never_killed(tiny_model_dir, tmp_path):
    pairs = make_pairs(6)
    cache, _ = build_cache(tiny_model_dir, pairs, tmp_path / "cache")
    marker = tmp_path / "checkpoint-2-saved"
    out = tmp_path / "run"
    child = start_script(
        "import time\n"
        "from pathlib import Path\n"
        "from transformers import TrainerCallback\n"
        "from tests.fixtures.dpo_support import build_cache, dpo_args, lora_policy, make_pairs\n"
        "from faithforge.training.dpo import run_dpo\n"
        "class KillPoint(TrainerCallback):\n"
        "    def on_save(self, args, state, control, **kwargs):\n"
        "        if state.global_step == 2:\n"
        f"            Path({str(marker)!r}).write_text('2')\n"
        "            time.sleep(300)\n"
        "pairs = make_pairs(6)\n"
        f"cache, _ = build_cache({str(tiny_model_dir)!r}, pairs, {str(tmp_path / 'cache')!r})\n"
        f"model, tokenizer = lora_policy({str(tiny_model_dir)!r}, seed=3)\n"
        f"run_dpo(model, tokenizer, pairs, cache.load(), dpo_args({str(out)!r}, steps={STEPS}, max_length=None,\n"
        "        checkpoint_every=2), extra_callbacks=[KillPoint()])\n",
        marker)
    kill_when(child, marker)
    assert last_complete_checkpoint(str(out)).endswith("checkpoint-2")
    # A checkpoint the kill cut short (no trainer_state.json) must be skipped, not resumed from.
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "adapter_model.safetensors").write_bytes(b"partial")
    assert last_complete_checkpoint(str(out)).endswith("checkpoint-2")

    model, tokenizer = lora_policy(tiny_model_dir, seed=3)
    resumed = run_dpo(model, tokenizer, pairs, cache.load(), dpo_args(out, steps=STEPS, max_length=None,
                                                                      checkpoint_every=2))
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert resumed["steps"] == STEPS
    assert [h["step"] for h in resumed["history"]] == list(range(1, STEPS + 1))

    model, tokenizer = lora_policy(tiny_model_dir, seed=3)
    straight = run_dpo(model, tokenizer, pairs, cache.load(), dpo_args(tmp_path / "straight", steps=STEPS,
                                                                       max_length=None, checkpoint_every=2))
    for a, b in zip(resumed["history"], straight["history"]):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (resumed["history"], straight["history"])
    ours, ref = lora_state(resumed["trainer"].model), lora_state(straight["trainer"].model)
    for name, value in ours.items():
        torch.testing.assert_close(value, ref[name], atol=1e-6, rtol=1e-5, msg=name)
    # Checkpoints are readable as the umask allows, like every other output (safetensors writes 0o600).
    from faithforge.core.workspace import umask_mode

    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777)
             for p in (tmp_path / "straight").rglob("checkpoint-*/*") if p.is_file()}
    assert modes and set(modes.values()) == {oct(umask_mode())}, modes


def test_cache_of_another_model_is_stopped_at_step_zero(tiny_model_dir, tmp_path):
    from faithforge.training.tiny_model import build_tiny_model

    pairs = make_pairs(4)
    other = build_tiny_model(tmp_path / "other-model", seed=1)  # same tokenizer, other weights
    foreign, _ = build_cache(other, pairs, tmp_path / "cache")
    model, tokenizer = lora_policy(tiny_model_dir)
    out = tmp_path / "run"
    with pytest.raises(ReferenceMismatchError, match="step-0 check failed"):
        run_dpo(model, tokenizer, pairs, foreign.load(), dpo_args(out, steps=4, max_length=None, checkpoint_every=1))
    assert last_complete_checkpoint(str(out)) is None, "a run stopped by the guard must not leave a checkpoint"


def test_cache_with_other_max_length_is_stopped_by_the_token_count_check(tiny_model_dir, tmp_path):
    pairs = make_pairs(4)
    short, _ = build_cache(tiny_model_dir, pairs, tmp_path / "cache", max_length=24)
    model, tokenizer = lora_policy(tiny_model_dir)
    with pytest.raises(ReferenceMismatchError, match="completion tokens but training tokenizes"):
        run_dpo(model, tokenizer, pairs, short.load(), dpo_args(tmp_path / "run", steps=2, max_length=None,
                                                                checkpoint_every=1))


def test_cache_of_other_pairs_is_rejected_by_id(tiny_model_dir, tmp_path):
    pairs = make_pairs(4)
    cache, _ = build_cache(tiny_model_dir, pairs[:-1], tmp_path / "cache")
    model, tokenizer = lora_policy(tiny_model_dir)
    with pytest.raises(ReferenceMismatchError, match="no entry for 1 train pair"):
        run_dpo(model, tokenizer, pairs, cache.load(), dpo_args(tmp_path / "run", steps=2, max_length=None,
                                                                checkpoint_every=1))


def test_failing_training_stage_leaves_existing_adapter_untouched(tiny_model_dir, tmp_path):
    from faithforge.core.config import PipelineConfig
    from faithforge.stages.context import StageContext, content_key
    from faithforge.stages.outputs import ModelOutput, PairsOutput
    from faithforge.stages.reference import reference_logps
    from faithforge.stages.train import train_dpo
    from faithforge.gpu.planner import Plan
    from faithforge.training.tiny_model import build_tiny_model
    from faithforge.core.workspace import atomic_write_jsonl, sha256_tree

    config = PipelineConfig(workspace=str(tmp_path / "ws"), reference={"max_length": 64, "shard_size": 4},
                            train={"steps": 3, "batch_size": 2, "lora_r": 4, "lora_alpha": 8, "checkpoint_every": 1})
    ctx = StageContext.open(config)
    pairs_file = atomic_write_jsonl(tmp_path / "train.jsonl", make_pairs(4))
    pairs = PairsOutput(path=str(tmp_path), train=str(pairs_file), val=str(pairs_file), counts={"train": 4})
    plan = Plan.manual("train", "cpu", batch_size=2, grad_accum=1)
    other = build_tiny_model(tmp_path / "other-model", seed=1)
    foreign = reference_logps(ctx, ModelOutput(path=str(other)), pairs, plan)  # the cache of another model

    key = content_key("dpo", foreign.key, config.train.model_dump(), config.seed)
    adapter = ctx.workspace.dir("adapters") / f"dpo-{key}"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights trained earlier")
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4}))
    before = sha256_tree(adapter)
    cache_before = sha256_tree(foreign.path)

    with pytest.raises(ReferenceMismatchError):
        train_dpo(ctx, ModelOutput(path=str(tiny_model_dir)), pairs, foreign, plan)
    assert sha256_tree(adapter) == before
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert sha256_tree(foreign.path) == cache_before
    assert last_complete_checkpoint(str(ctx.workspace.dir("checkpoints") / f"dpo-{key}")) is None


def test_a_checkpoint_damaged_on_disk_is_not_resumed_from(tmp_path, caplog):
    """An attack garbled 16 bytes of `checkpoint-N/adapter_model.safetensors`: the rerun resumed from it without a
    word (or loaded it as the finished result) and evaluated an adapter that wrote empty answers. Each checkpoint
    now carries checksums (written by the Trainer callback after the save); a damaged one is skipped, and said."""
    from types import SimpleNamespace

    from faithforge.training.dpo import CHECKSUMS, make_checksum_callback

    callback = make_checksum_callback()
    for step in (2, 4):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        callback.on_save(SimpleNamespace(output_dir=str(tmp_path)),
                         SimpleNamespace(global_step=step, is_world_process_zero=True), None)
        assert set(json.loads((folder / CHECKSUMS).read_text())) == {"adapter_model.safetensors",
                                                                      "trainer_state.json"}
    assert last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-4")
    weights = tmp_path / "checkpoint-4" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[1000:1016] = bytes(b ^ 0xFF for b in data[1000:1016])  # same size: only the bytes differ
    weights.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        assert last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-2")
    assert "checkpoint-4: adapter_model.safetensors no longer matches its checksum" in caplog.text
    (tmp_path / "checkpoint-2" / CHECKSUMS).unlink()  # killed between the Trainer's save and the checksums
    assert last_complete_checkpoint(str(tmp_path)) is None
