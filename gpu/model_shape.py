"""A decoder-only model's shape, read from its config.json, and the parameter counts that follow from it.

Supported: the Llama/Mistral/Qwen2/Qwen3 dense family (RMSNorm, rotary, SwiGLU MLP, grouped-query
attention). Keys read: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
num_key_value_heads (default: num_attention_heads), head_dim (default: hidden_size / heads), vocab_size,
tie_word_embeddings (default false). Qwen2 adds q/k/v biases; Qwen3 adds per-head q/k RMSNorm.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from faithforge.gpu.errors import ModelConfigError

REQUIRED_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
KNOWN_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
LORA_TARGETS_ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FALLBACK_VOCAB_SIZE = 152064  # the largest common vocabulary (Qwen2.5): a conservative guess


@dataclass(frozen=True)
class ModelShape:
    """Dimensions of a dense decoder; every *_params is a count of parameters, not bytes."""

    name: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    approximate: bool = False
    """True when dimensions were guessed from a parameter count (`allow_param_count_fallback`)."""
    declared_params: int | None = None
    """The parameter count the fallback was given; overrides the computed linear parameters."""

    @property
    def q_out(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_out(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {"q_proj": (h, self.q_out), "k_proj": (h, self.kv_out), "v_proj": (h, self.kv_out),
                "o_proj": (self.q_out, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def small_params(self) -> int:
        """Norm weights and biases (kept in 16-bit by bitsandbytes)."""
        per_layer = 2 * self.hidden_size
        if self.qkv_bias:
            per_layer += self.q_out + 2 * self.kv_out
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        return self.num_layers * per_layer + self.hidden_size

    @property
    def linear_params(self) -> int:
        """Parameters of the decoder layers' linear layers: what NF4/int8 quantization applies to."""
        if self.declared_params is not None:
            rest = self.embedding_params + self.lm_head_params + self.small_params
            return max(self.declared_params - rest, 0)
        return self.num_layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def total_params(self) -> int:
        return self.embedding_params + self.lm_head_params + self.small_params + self.linear_params

    def lora_params(self, rank: int, targets: tuple[str, ...] = LORA_TARGETS_ALL_LINEAR) -> int:
        """LoRA A (in×r) + B (r×out) per targeted linear, over all layers."""
        shapes = self.linear_shapes()
        unknown = [t for t in targets if t not in shapes]
        if unknown:
            raise ModelConfigError(f"unknown LoRA target module(s) {unknown}; choose from {list(shapes)}")
        return self.num_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)

    def kv_bytes_per_token(self, bytes_per_value: float = 2.0) -> int:
        """KV cache per token = 2 (K and V) × layers × kv_heads × head_dim × bytes per value."""
        return int(2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_value)


def _int(cfg: Mapping[str, Any], key: str, name: str) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelConfigError(f"config of {name}: {key} must be a positive integer, got {value!r}")
    return value


def _fallback_shape(cfg: Mapping[str, Any], name: str, params: int) -> ModelShape:
    """Conservative dimensions from a parameter count: no grouped-query attention, head_dim 128."""
    layers = int(cfg.get("num_hidden_layers") or 32)
    hidden = int(cfg.get("hidden_size") or max(128, round(math.sqrt(params / (12 * layers)) / 128) * 128))
    heads = int(cfg.get("num_attention_heads") or max(1, hidden // 128))
    return ModelShape(
        name=name, model_type=str(cfg.get("model_type", "unknown")), hidden_size=hidden,
        intermediate_size=int(cfg.get("intermediate_size") or 4 * hidden), num_layers=layers,
        num_attention_heads=heads, num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads), vocab_size=int(cfg.get("vocab_size") or FALLBACK_VOCAB_SIZE),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), approximate=True, declared_params=params,
    )


def model_shape_from_config(cfg: Mapping[str, Any], name: str = "model", *,
                            allow_param_count_fallback: bool = False, param_count: int | None = None) -> ModelShape:
    """Read a config.json dict. Missing keys or a mixture-of-experts config raise `ModelConfigError`
    naming them, unless `allow_param_count_fallback` and a parameter count (argument, or the config's
    `num_parameters`) are given: then the shape is guessed conservatively and marked `approximate`."""
    if not isinstance(cfg, Mapping):
        raise ModelConfigError(f"config of {name} must be a JSON object, got {type(cfg).__name__}")
    model_type = str(cfg.get("model_type", "unknown"))
    missing = [k for k in REQUIRED_KEYS if k not in cfg or cfg[k] is None]
    moe = [k for k in MOE_KEYS if cfg.get(k)]
    if missing or moe:
        params = param_count if param_count is not None else cfg.get("num_parameters")
        if allow_param_count_fallback and isinstance(params, int) and params > 0:
            return _fallback_shape(cfg, name, params)
        problem = (f"lacks {', '.join(missing)}" if missing
                   else f"is a mixture-of-experts model ({', '.join(moe)})")
        raise ModelConfigError(
            f"cannot size {name} (model_type {model_type!r}): its config {problem}; the estimator knows dense "
            f"{'/'.join(KNOWN_FAMILIES)}-family configs — use such a model, or pass "
            f"allow_param_count_fallback=True with a parameter count for a size-only estimate"
        )
    hidden = _int(cfg, "hidden_size", name)
    heads = _int(cfg, "num_attention_heads", name)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    if heads % kv_heads:
        raise ModelConfigError(f"config of {name}: num_attention_heads ({heads}) is not a multiple of "
                               f"num_key_value_heads ({kv_heads})")
    return ModelShape(
        name=name, model_type=model_type, hidden_size=hidden,
        intermediate_size=_int(cfg, "intermediate_size", name), num_layers=_int(cfg, "num_hidden_layers", name),
        num_attention_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, vocab_size=_int(cfg, "vocab_size", name),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
        qk_norm=model_type == "qwen3",
    )


def load_model_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The one file read in `gpu/`: a model folder's (or a file's) config.json as a dict."""
    target = Path(path)
    file = target / "config.json" if target.is_dir() else target
    if not file.is_file():
        raise ModelConfigError(f"no config.json at {file}; point model.path at a Hugging Face model folder "
                               f"that contains config.json (or at the file itself)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"cannot read {file}: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"{file} must hold a JSON object, not {type(data).__name__}")
    return data


SHIPPED_CONFIGS_DIR = Path(__file__).with_name("model_configs")
SHIPPED_MODELS = ("llama-2-7b", "llama-3-8b", "qwen2.5-7b", "qwen2.5-32b", "qwen3-8b")
"""Real-shape configs shipped in gpu/model_configs/ (public config.json contents)."""


def load_model_shape(path_or_name: str | os.PathLike[str], **kwargs: Any) -> ModelShape:
    """A shape from a shipped name such as `llama-3-8b`, or from a model folder / config.json path."""
    text = str(path_or_name)
    if text in SHIPPED_MODELS:
        return model_shape_from_config(load_model_config(SHIPPED_CONFIGS_DIR / f"{text}.json"), text, **kwargs)
    path = Path(text)
    name = path.parent.name if path.name == "config.json" else path.name
    return model_shape_from_config(load_model_config(path), name or text, **kwargs)
