"""Identify a (model, tokenizer) pair, so a prefix cache is never replayed on a model it was not built with.

The fingerprint hashes (sha256): the model config (minus path/version bookkeeping), the parameter dtype,
a sample of the input-embedding weights (distinguishes two checkpoints of one architecture), and the
tokenizer's class, vocabulary, special tokens and chat template. `weights_version` is a cheap counter
that moves whenever any parameter is modified in place (an optimizer step), so a cache computed before
a training step is caught too.
"""

from __future__ import annotations

import hashlib
import json

import torch

_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "_commit_hash", "_attn_implementation_autoset"}
_EMBEDDING_SAMPLE_ROWS = 8


def fingerprint(model, tokenizer) -> str:
    """sha256 hex digest of the model config, dtype, an embedding sample and the tokenizer."""
    digest = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(str(model.dtype).encode())
    embedding = model.get_input_embeddings().weight
    with torch.no_grad():
        sample = embedding[:_EMBEDDING_SAMPLE_ROWS].detach().to("cpu", torch.float32).contiguous()
    digest.update(sample.numpy().tobytes())
    digest.update(type(tokenizer).__name__.encode())
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return digest.hexdigest()


def weights_version(model) -> int:
    """Sum of the parameters' in-place modification counters; changes after any optimizer step."""
    return sum(p._version for p in model.parameters())
