"""Supervised fine-tuning on (prompt, summary) pairs: the warm start, and the LoRA SFT control.

A plain PyTorch loop (the model is tiny; a Trainer adds seconds of setup for nothing). The loss covers
the completion tokens only, as in SFT on chat data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from faithforge.core.errors import UserError
from faithforge.training.real_tokens import mlp_on_real_tokens


@dataclass(frozen=True)
class SftExample:
    prompt: list[dict[str, str]]
    completion: str


def encode_example(tokenizer, example: SftExample, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of prompt+completion and labels (-100 on the prompt), cut to `max_length` from the start."""
    prompt_ids = tokenizer.apply_chat_template(example.prompt, add_generation_prompt=True, tokenize=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(
        example.prompt + [{"role": "assistant", "content": example.completion}], tokenize=True
    )["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("the chat template renders the prompt differently alone and with a completion")
    labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids):]
    return full_ids[:max_length], labels[:max_length]


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """B encoded examples `(input ids, labels)` as one right-padded batch.

    Returns `input_ids`, `labels` and `attention_mask`, each of shape (B, width), dtype long; width is the longest
    example, tokens; labels are -100 on the prompt and the padding (not scored)."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


#: Checkpoint file names: `step-000120.pt` (zero-padded so names sort by step).
CHECKPOINT_GLOB = "step-*.pt"


def _digest(payload: bytes) -> str:
    import hashlib

    return hashlib.sha256(payload).hexdigest()[:16]


def _checkpoint_name(step: int, payload: bytes) -> str:
    """`step-000100.<first 16 hex of the payload's SHA-256>.pt`: the name carries the checksum, so a file damaged
    on disk after it was written is seen (a garbled tensor still loads) and the file stays one atomic write."""
    return f"step-{step:06d}.{_digest(payload)}.pt"


def _checksum_problem(path: Path, payload: bytes) -> str | None:
    """Why the file's bytes do not match the checksum in its name (None: they do)."""
    parts = path.name.split(".")
    if len(parts) != 3:
        return "written before checkpoints carried a checksum"
    if _digest(payload) != parts[1]:
        return "its bytes no longer match the checksum in its name (damaged on disk)"
    return None


def _run_identity(examples: Sequence[SftExample], steps: int, batch_size: int, learning_rate: float, seed: int,
                  max_length: int) -> dict:
    """What a checkpoint must match to be resumed: the same examples and settings (else it is another run)."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps([[e.prompt, e.completion] for e in examples], sort_keys=True).encode())
    return {"examples": digest.hexdigest(), "steps": steps, "batch_size": batch_size,
            "learning_rate": learning_rate, "seed": seed, "max_length": max_length}


def last_checkpoint(directory: str | Path | None, identity: dict) -> tuple[Path, dict] | None:
    """The newest checkpoint in `directory` that loads and belongs to this run (a torn file is skipped)."""
    if directory is None or not Path(directory).is_dir():
        return None
    import io
    import logging

    for path in sorted(Path(directory).glob(CHECKPOINT_GLOB), reverse=True):
        try:
            payload = path.read_bytes()
            problem = _checksum_problem(path, payload)
            if problem:
                logging.getLogger(__name__).warning("not resuming from %s: %s", path, problem)
                continue
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a file cut short by a kill: try the one before
            continue
        if state.get("identity") == identity:
            return path, state
    return None


def _save_checkpoint(directory: Path, step: int, model, optimizer, generator, losses: list[float],
                     identity: dict) -> None:
    """Trainable weights + optimizer + step + RNG states, written atomically; older checkpoints removed after."""
    import io

    from faithforge.core.workspace import atomic_write_bytes

    state = {
        "identity": identity, "step": step, "losses": list(losses),
        "weights": {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    written = atomic_write_bytes(directory / _checkpoint_name(step, payload), payload)
    for older in directory.glob(CHECKPOINT_GLOB):
        if older != written:
            older.unlink(missing_ok=True)


def _restore(state: dict, model, optimizer, generator) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["weights"].items():
            params[name].copy_(value.to(params[name].device))
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def _backward_in_micro_batches(model, batch: dict[str, torch.Tensor], micro_batch: int) -> torch.Tensor:
    """Backward over `batch` in slices of `micro_batch` rows (the GPU plan's micro-batch), each slice's mean
    token loss weighted by its share of the batch's label tokens: the same gradient and loss as one pass over
    the whole batch, with the activations of one slice at a time.

    Shapes: every tensor of `batch` is (batch_size, seq_len). Returns the batch's mean token loss: a scalar tensor
    (shape ()), nats per label token."""
    rows = batch["input_ids"].shape[0]
    if micro_batch >= rows:
        loss = model(**batch).loss
        loss.backward()
        return loss
    counted = (batch["labels"][:, 1:] != -100).sum().clamp(min=1)
    total = torch.zeros((), device=batch["input_ids"].device)
    for start in range(0, rows, micro_batch):
        part = {k: v[start: start + micro_batch] for k, v in batch.items()}
        share = (part["labels"][:, 1:] != -100).sum() / counted
        loss = model(**part).loss * share
        loss.backward()
        total += loss.detach()
    return total


def train_sft(
    model,
    tokenizer,
    examples: Sequence[SftExample],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    max_length: int = 128,
    on_step: Callable[[int, float], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    on_resume: Callable[[int], None] | None = None,
    micro_batch: int | None = None,
    mlp_real_tokens: bool = True,
) -> list[float]:
    """Train `model` in place (all its trainable parameters) and return the loss of every step.

    With `checkpoint_dir`, every `checkpoint_every` steps the trainable weights, the optimizer, the step and
    every RNG state are saved; a later call with the same examples and settings resumes from the newest one
    and ends with the same weights and losses as a run that was never interrupted. `mlp_real_tokens` runs the
    layers' MLPs on the batch's real tokens only (`training.real_tokens`; same losses up to float rounding);
    False computes the padding too, for comparison.
    """
    if not examples:
        raise ValueError("no SFT examples: the dataset is empty")
    encoded = [encode_example(tokenizer, ex, max_length) for ex in examples]
    if all(label == -100 for _, labels in encoded for label in labels):
        # Every completion lies beyond the cut: the loss would be 0 at every step and the weights would not move
        # (the real-documents SFT control trained like this at max_length 128 on ~450-token prompts).
        raise UserError(f"every SFT example's completion falls beyond max_length {max_length} tokens (the prompt "
                        "alone is longer); raise the max length (reference.max_length for the SFT control)")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    identity = _run_identity(examples, steps, batch_size, learning_rate, seed, max_length)
    losses: list[float] = []
    start = 0
    found = last_checkpoint(checkpoint_dir, identity)
    if found is not None:
        _, state = found
        _restore(state, model, optimizer, generator)
        start, losses = state["step"], list(state["losses"])
        if on_resume is not None:
            on_resume(start)
    model.train()
    for step in range(start, steps):
        index = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        batch = collate([encoded[i] for i in index], tokenizer.pad_token_id)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        with mlp_on_real_tokens(model, enabled=mlp_real_tokens):
            loss = _backward_in_micro_batches(model, batch, micro_batch or batch_size)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if checkpoint_dir is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 \
                and step + 1 < steps:
            _save_checkpoint(Path(checkpoint_dir), step + 1, model, optimizer, generator, losses, identity)
        if on_step is not None:
            on_step(step + 1, losses[-1])
    model.eval()
    return losses
