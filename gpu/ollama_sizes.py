"""Ollama-served models: weight size plus what is needed to size the KV cache.

Sizes are the default (q4_K_M) GGUF downloads listed on ollama.com/library, in decimal GB as shown there;
layer/KV-head/head-dim numbers are the models' published architectures. Numbers read from a running
server (`/api/show` model_info + the `size` of `/api/tags`) take precedence via `ollama_model_from_api`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from faithforge.gpu.errors import ModelConfigError

GB = 10**9


@dataclass(frozen=True)
class OllamaModel:
    """An Ollama model; `weights_bytes` is the GGUF size (loaded to VRAM as is)."""

    name: str
    weights_bytes: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    param_count: int
    num_heads: int
    """Attention (query) heads: sizes Ollama's compute graph."""

    @property
    def total_params(self) -> int:
        return self.param_count

    def kv_bytes_per_token(self, bytes_per_value: float = 2.0) -> int:
        """2 (K and V) × layers × kv_heads × head_dim × bytes (f16 cache: 2; q8_0: ~1.06; q4_0: ~0.56)."""
        return int(2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_value)


def _m(name: str, size_gb: float, layers: int, heads: int, kv: int, params_b: float) -> OllamaModel:
    return OllamaModel(name, int(size_gb * GB), layers, kv, 128, int(params_b * 1e9), heads)


GGUF_TABLE: dict[str, OllamaModel] = {
    m.name: m
    for m in (
        _m("qwen3:0.6b", 0.523, 28, 16, 8, 0.75),
        _m("qwen3:1.7b", 1.4, 28, 16, 8, 2.0),
        _m("qwen3:4b", 2.5, 36, 32, 8, 4.0),
        _m("qwen3:8b", 5.2, 36, 32, 8, 8.2),
        _m("qwen3:14b", 9.3, 40, 40, 8, 14.8),
        _m("qwen3:30b-a3b", 19.0, 48, 32, 4, 30.5),
        _m("qwen3:32b", 20.0, 64, 64, 8, 32.8),
        _m("qwen2.5:3b", 1.9, 36, 16, 2, 3.1),
        _m("qwen2.5:7b", 4.7, 28, 28, 4, 7.6),
        _m("qwen2.5:14b", 9.0, 48, 40, 8, 14.7),
        _m("llama3:8b", 4.7, 32, 32, 8, 8.0),
        _m("llama3.1:8b", 4.9, 32, 32, 8, 8.0),
        _m("llama3.2:3b", 2.0, 28, 24, 8, 3.2),
        _m("mistral:7b", 4.4, 32, 32, 8, 7.2),
    )
}
DEFAULT_TAGS = {"qwen3": "qwen3:8b", "qwen2.5": "qwen2.5:7b", "llama3": "llama3:8b", "llama3.1": "llama3.1:8b",
                "llama3.2": "llama3.2:3b", "mistral": "mistral:7b"}


def ollama_model(tag: str) -> OllamaModel:
    """Look a tag up in the GGUF table (`qwen3` and `qwen3:latest` mean `qwen3:8b`, as on ollama.com)."""
    key = tag.strip().lower()
    key = key[: -len(":latest")] if key.endswith(":latest") else key
    key = DEFAULT_TAGS.get(key, key)
    model = GGUF_TABLE.get(key)
    if model is None:
        raise ModelConfigError(f"unknown Ollama model {tag!r}; known tags: {', '.join(GGUF_TABLE)} — or pass the "
                               f"numbers from a running server (ollama_model_from_api with /api/show and the size)")
    return model


def _first_int(value: Any) -> int:
    if isinstance(value, list):  # per-layer lists (e.g. head_count_kv of hybrid models): size for the largest
        value = max(value)
    return int(value)


def ollama_model_from_api(name: str, show: Mapping[str, Any], size_bytes: int) -> OllamaModel:
    """Build from `/api/show` (its `model_info`) and the model's `size` from `/api/tags` (GGUF bytes).

    `/api/ps` reports a loaded model's `size` including its KV cache; pass the `/api/tags` size instead.
    """
    info = show.get("model_info") or {}
    arch = info.get("general.architecture")
    keys = {"layers": f"{arch}.block_count", "kv": f"{arch}.attention.head_count_kv",
            "heads": f"{arch}.attention.head_count", "width": f"{arch}.embedding_length"}
    missing = [k for k in (keys["layers"], keys["heads"], keys["width"]) if k not in info]
    if not arch or missing:
        raise ModelConfigError(f"/api/show for {name} lacks {', '.join(missing) or 'general.architecture'}; "
                               f"cannot size its KV cache")
    heads = _first_int(info[keys["heads"]])
    head_dim = int(info.get(f"{arch}.attention.key_length") or _first_int(info[keys["width"]]) // heads)
    return OllamaModel(
        name=name, weights_bytes=int(size_bytes), num_layers=_first_int(info[keys["layers"]]),
        num_kv_heads=_first_int(info.get(keys["kv"], heads)), head_dim=head_dim,
        param_count=int(info.get("general.parameter_count") or 0), num_heads=heads,
    )
