"""Supervised fine-tuning on (prompt, summary) pairs: the warm start, and the LoRA SFT control.

A plain PyTorch loop (the model is tiny; a Trainer adds seconds of setup for nothing). The loss covers
the completion tokens only, as in SFT on chat data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch


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
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


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
) -> list[float]:
    """Train `model` in place (all its trainable parameters) and return the loss of every step."""
    if not examples:
        raise ValueError("no SFT examples: the dataset is empty")
    encoded = [encode_example(tokenizer, ex, max_length) for ex in examples]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for step in range(steps):
        index = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        batch = collate([encoded[i] for i in index], tokenizer.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
    model.eval()
    return losses
