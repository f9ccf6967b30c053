"""A model folder (with a LoRA adapter merged in) as an f16 GGUF file for llama.cpp to sample from on the CPU,
written from exactly the weights the stages train and evaluate, and kept in a cache named by their content.

Why write one instead of sampling the file a model was imported from (SmolLM2's own Q4_1): on this machine's 2
cores llama.cpp's f16 path sampled the pairs stage's shape (64 sequences a step) at 1.49x Q4_1's tokens/s with the
same `grounding`-flagged share, and 196 of 200 greedy answers were token-identical to the float32 engine's against
Q4_1's 137 (`bench/sampler_gguf.py`, BENCHMARKS.md). f16 rounds each weight by at most 2^-11 of its value (above
f16's subnormals, 6.1e-5); Q4_1's path also rounds every activation to 8 bits before each product. And a trained
adapter has no GGUF of its own: merged and written here (about 4 s for 135M parameters), the evaluation's three
models go through the same engine.

Nothing here imports torch at module import; `write_sampling_gguf` does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from faithforge.core.errors import UserError

#: Bumped when what `write_sampling_gguf` writes changes, so older cache files are not read as the new ones.
WRITER_VERSION = 1
#: Largest finite float16 value: a weight beyond it would become inf in the file.
F16_MAX = 65504.0


def sampling_gguf_key(model_path: str | Path, adapter: str | Path | None = None) -> str:
    """Content key of base + adapter: the model folder's weights, config, tokenizer and chat template, the adapter's
    weights and config, and the writer's version (hashes remembered per process while files keep size and mtime)."""
    from faithforge.training.reference_cache import model_folder_fingerprint, weights_fingerprint

    digest = hashlib.sha256(f"sampling-gguf-v{WRITER_VERSION}".encode())
    digest.update(model_folder_fingerprint(model_path).encode())
    if adapter is not None:
        config = Path(adapter) / "adapter_config.json"
        if not config.is_file():
            raise UserError(f"{adapter} holds no adapter_config.json: not a LoRA adapter folder")
        digest.update(weights_fingerprint(adapter).encode())
        digest.update(hashlib.sha256(config.read_bytes()).hexdigest().encode())
    return digest.hexdigest()[:20]


def unwritable_reason(model_path: str | Path) -> str | None:
    """Why the model folder cannot be written as a GGUF llama.cpp reads (None: it can): the writer's own checks of
    the architecture, its rope scaling, the chat template and the pre-tokenizer, run before any weight is loaded.
    Remembered per folder and content for the life of the process."""
    from faithforge.training.reference_cache import model_folder_fingerprint

    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        return f"{model_path} has no config.json"
    try:
        fingerprint = model_folder_fingerprint(model_path)
    except UserError as exc:
        return str(exc)
    if fingerprint not in _REASONS:
        _REASONS[fingerprint] = _writer_refuses(model_path, json.loads(config_file.read_text()))
    return _REASONS[fingerprint]


_REASONS: dict[str, str | None] = {}


def _writer_refuses(model_path: str | Path, config: dict) -> str | None:
    from faithforge.training.gguf_writer import gguf_architecture, pre_tokenizer
    from faithforge.training.modeling import load_tokenizer

    try:
        gguf_architecture(config)
        tokenizer = load_tokenizer(model_path)
        if not tokenizer.chat_template:
            return "the tokenizer has no chat template"
        pre_tokenizer(tokenizer)
    except UserError as exc:  # the writer's words, without its advice to `faithforge model export`
        return re.sub(r"\s*[;—]\s*export (?:it )?with --format hf instead$", "", str(exc))
    return None


def write_sampling_gguf(model_path: str | Path, adapter: str | Path | None, out: str | Path) -> Path:
    """Merge `adapter` (if any) into the float32 model on the CPU and write it to `out` as f16 GGUF (under a
    temporary name, renamed when complete). A one-line UserError when the model cannot be written."""
    import torch
    from transformers import AutoModelForCausalLM

    from faithforge.training.gguf_writer import write_gguf
    from faithforge.training.modeling import load_tokenizer

    reason = unwritable_reason(model_path)
    if reason:
        raise UserError(reason)
    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    state = model.state_dict()
    with torch.no_grad():
        largest = max(float(t.abs().max()) for t in state.values() if t.is_floating_point() and t.numel())
    if not largest <= F16_MAX:  # also catches NaN
        raise UserError(f"a weight of {model_path} is {largest:.3g}, beyond float16's range: it cannot be sampled "
                        "through an f16 GGUF (set pairs.sampler / evaluate.sampler to engine)")
    config = json.loads((Path(model_path) / "config.json").read_text())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Two runs may write the same content at once: each writes its own file and renames it into place (the same
    # bytes either way); a reader holds whichever file it opened.
    fd, own = tempfile.mkstemp(prefix=f".{out.stem}-", suffix=".gguf", dir=out.parent)
    os.close(fd)
    try:
        write_gguf(state, config, tokenizer, model_path, own, name=Path(model_path).name)
        os.replace(own, out)
    finally:
        Path(own).unlink(missing_ok=True)
        Path(own).with_name(f".{Path(own).name}.partial").unlink(missing_ok=True)
    return out


__all__ = ["F16_MAX", "WRITER_VERSION", "sampling_gguf_key", "unwritable_reason", "write_sampling_gguf"]
