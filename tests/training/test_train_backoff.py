"""The DPO stage survives a CUDA OOM raised inside a training step of the real TRL trainer: it halves the
micro-batch, doubles accumulation, rebuilds the trainer on the same NF4 policy and resumes from the checkpoint.

The OOM is raised by a forward pre-hook on the first decoder layer of the model the stage itself loaded (a
CPU cannot run out of CUDA memory on demand); everything else is the real stage."""


import pytest

from faithforge.core.config import load_config
from faithforge.stages.context import StageContext
from faithforge.gpu.planner import Plan
from tests.fixtures.dpo_support import rows_meeting_the_head
from tests.fixtures.model_loads import watch_load_for_plan


def oom_on_the_second_training_forward(monkeypatch, allocate: str) -> dict[str, int]:
    """Every model a stage loads (`load_for_plan`) raises one CUDA OOM ("Tried to allocate `allocate`") from a
    forward pre-hook on its backbone, at the second forward in training mode; returns the counters
    (`n` forwards seen, `raised` OOMs)."""
    import torch

    forwards = {"n": 0, "raised": 0}

    def oom_in_step_two(module, args):
        forwards["n"] += 1
        if module.training and forwards["n"] >= 2 and not forwards["raised"]:
            forwards["raised"] += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {allocate} (raised inside step 2)")

    def hook(model, plan) -> None:  # noqa: ARG001
        model.model.register_forward_pre_hook(oom_in_step_two)  # the backbone: called once per training forward

    watch_load_for_plan(monkeypatch, hook)
    return forwards


@pytest.mark.slow
def test_dpo_stage_backs_off_on_an_oom_inside_a_training_step(tmp_path, monkeypatch):
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.model import base_model
    from faithforge.stages.pairs import build_pairs
    from faithforge.stages.reference import reference_logps
    from faithforge.stages.train import train_dpo

    cfg = load_config(None, environ={}, overrides={
        "workspace": str(tmp_path / "ws"),
        "generate": {"train_sources": 40, "val_sources": 10, "test_sources": 10},
        "train": {"steps": 3, "batch_size": 4, "checkpoint_every": 1, "lora_r": 4, "lora_alpha": 8},
        "control": {"sft_on_chosen": False}})
    ctx = StageContext.open(cfg)
    ctx.run_id = ctx.store.start_run("test", {})
    dataset = generate_examples(ctx)
    model = base_model(ctx)
    pairs = build_pairs(ctx, dataset)
    plan = Plan.model_validate({
        "stage": "train", "placement": "cpu", "precision": "nf4", "model": "tiny", "batch_size": 4,
        "grad_accum": 1, "max_tokens": 128, "ref_strategy": "cached", "estimated_peak_bytes": 1,
        "usable_bytes": None, "headroom_bytes": None, "margin_bytes": 0, "breakdown": {}, "reason": "test",
        "fits": True, "policy": "stay-local", "requested_batch_size": 4, "requested_max_tokens": 128})
    reference = reference_logps(ctx, model, pairs, plan)
    assert reference.precision == "nf4"

    forwards = oom_on_the_second_training_forward(monkeypatch, "2.00 GiB")
    out = train_dpo(ctx, model, pairs, reference, plan)
    assert forwards["raised"] == 1
    assert (out.micro_batch, out.grad_accum) == (2, 2)  # effective batch kept at 4
    assert out.steps == 3 and out.resumed_from.endswith("checkpoint-1")
    assert out.oom_backoffs[0]["error"].startswith("CUDA out of memory")
    assert any(s.stage == "train:oom-backoff" for s in ctx.store.stages(ctx.run_id))
    from pathlib import Path

    adapter = Path(out.path)
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()


def test_sft_micro_batches_give_the_full_batch_loss_and_weights(tiny_model_dir):
    import torch

    from faithforge.training.modeling import attach_lora, load_causal_lm, load_tokenizer
    from faithforge.training.sft import SftExample, train_sft
    from faithforge.data.teacher import generate_split, prompt_messages

    examples = [SftExample(prompt_messages(e.source), e.faithful) for e in generate_split("train", 8, 0, 0.5)]
    runs = []
    for micro in (None, 3):  # 3 does not divide the batch of 8: the last slice is smaller
        torch.manual_seed(0)
        model = attach_lora(load_causal_lm(tiny_model_dir, quantization=None, device="cpu"), r=4, alpha=8,
                            dropout=0.0, quantized=False, gradient_checkpointing=False)
        losses = train_sft(model, load_tokenizer(tiny_model_dir), examples, steps=3, batch_size=8,
                           learning_rate=1e-2, seed=0, micro_batch=micro)
        runs.append((losses, {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}))
    (full_losses, full), (micro_losses, sliced) = runs
    assert micro_losses == pytest.approx(full_losses, abs=1e-5)
    for name, value in full.items():
        # AdamW divides by √v: float-order noise in near-zero gradients shows up as ~1e-5 after 3 steps
        torch.testing.assert_close(sliced[name], value, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_the_sft_control_backs_off_on_an_oom_inside_a_step(tmp_path, monkeypatch):
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.model import base_model
    from faithforge.stages.pairs import build_pairs
    from faithforge.stages.train import train_sft_control

    cfg = load_config(None, environ={}, overrides={
        "workspace": str(tmp_path / "ws"), "generate": {"train_sources": 20, "val_sources": 10, "test_sources": 10},
        "train": {"steps": 3, "batch_size": 4, "checkpoint_every": 1, "lora_r": 4, "lora_alpha": 8}})
    ctx = StageContext.open(cfg)
    dataset = generate_examples(ctx)
    model = base_model(ctx)
    pairs = build_pairs(ctx, dataset)
    plan = Plan.manual("train", "cpu", precision="fp32", batch_size=4, grad_accum=1)
    forwards = oom_on_the_second_training_forward(monkeypatch, "1.00 GiB")
    out = train_sft_control(ctx, model, pairs, plan)
    assert forwards["raised"] == 1 and out.micro_batch == 2 and out.steps == 3
    assert out.resumed_from_step == 1  # from the control's own checkpoint after step 1


def test_the_chunked_head_loss_equals_the_causal_lm_loss(tiny_model_dir):
    from faithforge.training.modeling import attach_lora, load_causal_lm, load_tokenizer, use_chunked_head_loss
    from faithforge.training.sft import SftExample, collate, encode_example
    from faithforge.data.teacher import generate_split, prompt_messages

    tokenizer = load_tokenizer(tiny_model_dir)
    batch = collate([encode_example(tokenizer, SftExample(prompt_messages(e.source), e.faithful), 128)
                     for e in generate_split("train", 4, 0, 0.5)], tokenizer.pad_token_id)
    model = attach_lora(load_causal_lm(tiny_model_dir, quantization=None, device="cpu"), r=4, alpha=8, dropout=0.0,
                        quantized=False, gradient_checkpointing=False)
    expected = model(**batch).loss
    use_chunked_head_loss(model)
    with rows_meeting_the_head() as rows:
        out = model(**batch)
    assert float(out.loss) == pytest.approx(float(expected), abs=1e-5)
    assert getattr(out, "logits", None) is None  # no batch × seq × vocab tensor
    # on the CPU too, only the labelled positions are projected through the head (not prompt and padding)
    assert rows == [int((batch["labels"][:, 1:] != -100).sum())]
    out.loss.backward()  # and the loss still trains the adapter
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)


def test_sft_refuses_examples_whose_completion_is_cut_off_entirely(tiny_model_dir):
    """At max_length 128 every real-news prompt (~450 tokens) was cut before its completion: the SFT control's
    loss was 0 at every step and its adapter equalled the base model (bench/real_documents.py, seed 0)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from faithforge.core.errors import UserError
    from faithforge.training.sft import SftExample, train_sft

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    long_prompt = [{"role": "user", "content": " ".join(["Ada bought 3 lamps in Oslo ."] * 40)}]
    examples = [SftExample(long_prompt, "Ada bought 3 lamps .")]
    with pytest.raises(UserError, match="falls beyond max_length 16"):
        train_sft(model, tokenizer, examples, steps=1, batch_size=1, learning_rate=1e-4, seed=0, max_length=16)
    losses = train_sft(model, tokenizer, examples, steps=1, batch_size=1, learning_rate=1e-4, seed=0, max_length=1024)
    assert losses[0] > 0.0

