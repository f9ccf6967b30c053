"""Choosing the next token from logits: greedy, temperature, top-k, top-p; seeded through a `torch.Generator`.

Order of the filters follows `transformers`' default logits-processor order (temperature, then top-k,
then top-p), so a seeded run here and a `model.generate(do_sample=True, ...)` run use the same
distribution (the random draws differ: `generate` uses the global RNG).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from faithforge.engine.errors import EngineError


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens and how many to make.

    temperature: 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    top_k: keep only the k most likely tokens (0 = no limit).
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1.0 = no limit).
    seed: seeds a private `torch.Generator` per call, so the same call gives the same tokens;
        None draws from torch's global RNG (not reproducible unless the caller seeds it).
    max_new_tokens: most tokens generated per request (finish_reason "length" when reached).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        problems = []
        if not self.temperature >= 0:
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if problems:
            raise EngineError("invalid SamplingConfig: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def make_generator(self, device: torch.device) -> torch.Generator | None:
        """A fresh generator seeded with `seed` (None when unseeded or greedy)."""
        if self.seed is None or self.greedy:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


def filter_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Temperature-scaled logits (rows = sequences) with tokens outside top-k / top-p set to -inf."""
    logits = logits.float() / config.temperature
    vocab = logits.shape[-1]
    if 0 < config.top_k < vocab:
        kth = torch.topk(logits, config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above this one
        drop_sorted = mass_before >= config.top_p  # the most likely token always has mass_before 0: kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_tokens(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row of `logits` (shape [rows, vocab]) → LongTensor [rows]."""
    if config.greedy:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, config).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
