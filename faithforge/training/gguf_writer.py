"""FaithForge's own GGUF converter: a merged llama-family model (Llama, SmolLM, Qwen2, Qwen3) → one f16 GGUF
file llama.cpp and Ollama load, with the tokenizer and chat template in its metadata; then llama.cpp's own
quantizer (`llama_model_quantize` in llama-cpp-python's low-level API) for q8_0 / q4_k_m.

What it writes follows the layout llama.cpp reads (the same keys and tensor names the `gguf` package's tables
name): hyper-parameters under the architecture's prefix, a GPT-2-style BPE vocabulary (`tokenizer.ggml.*`, with
the pre-tokenizer identified the way llama.cpp's converter identifies it: a hash of the token ids of one fixed
check text), norms and biases in f32, matrices in f16. One detail decides whether the file is correct at all:
llama.cpp's `llama` architecture applies rotary embeddings to interleaved pairs, Hugging Face's Llama to the two
halves of each head, so q and k rows are permuted on the way out (Qwen2/3 use the halves layout in llama.cpp too
and are written unchanged). A file with that step missing loads and generates fluent nonsense, which is why every
export is served back and compared token by token (`faithforge.training.export_verify`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from faithforge.core.errors import UserError

#: Hugging Face `model_type` → (llama.cpp architecture name, q/k rows need llama.cpp's interleaved rope order).
ARCHITECTURES = {"llama": ("llama", True), "qwen2": ("qwen2", False), "qwen3": ("qwen3", False)}

#: The text llama.cpp's converter tokenizes to tell pre-tokenizers apart (convert_hf_to_gguf's `chktxt`).
CHECK_TEXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) '
              '✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
              '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
              '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
#: SHA-256 of str(token ids of CHECK_TEXT) → llama.cpp's pre-tokenizer name, for the llama-family tokenizers
#: (values from llama.cpp's converter; an unknown hash is refused rather than guessed).
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5, Qwen2, Qwen2.5, Qwen3
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3 (newer tokenizer files)
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3, 3.1, 3.2
}

#: --quant name → llama.cpp `llama_ftype` value (llama.h: LLAMA_FTYPE_MOSTLY_F16 = 1, Q8_0 = 7, Q4_K_M = 15).
QUANT_FTYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}
QUANTS = tuple(QUANT_FTYPES)


@dataclass
class GgufReport:
    path: str
    architecture: str
    pre_tokenizer: str
    tensors: int
    bytes: int
    seconds: float


def gguf_architecture(config: dict[str, Any]) -> tuple[str, bool]:
    """(llama.cpp architecture, permute q/k) for a Hugging Face config, or a one-line error naming what is known."""
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UserError(f"GGUF export supports model types {', '.join(ARCHITECTURES)} (Llama, SmolLM, Qwen2, "
                        f"Qwen3); this model is {model_type!r} — export it with --format hf instead")
    rope = config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type")
    if rope_type not in (None, "default", "linear"):
        raise UserError(f"GGUF export does not write {rope_type!r} rope scaling yet (only none or linear); "
                        "export it with --format hf instead")
    return ARCHITECTURES[model_type]


def pre_tokenizer(tokenizer) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, identified as llama.cpp's converter does."""
    digest = hashlib.sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()
    if digest not in PRE_TOKENIZERS:
        raise UserError(f"the tokenizer's pre-tokenizer (check hash {digest[:12]}…) is not one llama.cpp's "
                        "llama-family models use (SmolLM, Qwen2/3, Llama 3); export with --format hf instead")
    return PRE_TOKENIZERS[digest]


def _vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id and their llama.cpp types (normal, control for special added tokens, user-defined for other
    added tokens, unused for ids the tokenizer lacks up to the model's vocabulary size)."""
    from gguf import TokenType

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise UserError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {vocab_size} "
                        "embeddings; the tokenizer does not belong to this model")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
        elif i in added:
            special = added[i].special or (by_id[i].startswith("<|") and by_id[i].endswith("|>"))
            tokens.append(by_id[i])
            types.append(int(TokenType.CONTROL if special else TokenType.USER_DEFINED))
        else:
            tokens.append(by_id[i])
            types.append(int(TokenType.NORMAL))
    return tokens, types


def _permute(weight, heads: int):
    """Hugging Face's half-split rotary layout → llama.cpp's interleaved one, per head (rows of q or k).

    Shape: `weight` (heads * head_dim, hidden_size) or (heads * head_dim,); returned in the same shape, rows
    reordered within each head."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _tensors(state: dict[str, Any], config: dict[str, Any], arch: str, permute: bool
             ) -> Iterable[tuple[str, Any]]:
    """(GGUF name, numpy array) in the file's dtypes: 1-D tensors f32, matrices f16."""
    import numpy as np
    import torch
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch_enum = next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch)
    names = get_tensor_name_map(arch_enum, config["num_hidden_layers"])
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    tied = bool(config.get("tie_word_embeddings"))
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed by llama.cpp from rope.freq_base
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp uses token_embd when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"GGUF export does not know where tensor {hf_name} goes in a {arch} file; "
                            "export it with --format hf instead")
        data = tensor.detach().to(torch.float32)
        if permute and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute(data, heads)
        elif permute and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute(data, kv_heads)
        array = data.numpy()
        yield name, array.astype(np.float32 if array.ndim == 1 else np.float16)


def _add_shape(writer, config: dict[str, Any], arch: str) -> None:
    """The model's shape and rotary settings, from its Hugging Face `config`, as GGUF keys (f16 weights)."""
    import gguf

    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = config.get("rope_theta") or rope.get("rope_theta") or 10000.0
    writer.add_rope_freq_base(float(theta))
    if (rope.get("rope_type") or rope.get("type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if config.get("head_dim") is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch == "llama":
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)


def write_gguf(state: dict[str, Any], config: dict[str, Any], tokenizer, tokenizer_dir: str | Path, out: str | Path,
               *, name: str, on_step: Callable[[str], None] | None = None) -> GgufReport:
    """Write `state` (a merged Hugging Face state dict of a llama-family model) with `config` and `tokenizer` as
    an f16 GGUF file at `out`. `tokenizer_dir` is the folder the tokenizer was saved to (merges, special ids and
    the chat template are read from its files). The file is written under a temporary name and renamed."""
    import time

    import gguf

    say = on_step or (lambda message: None)
    started = time.perf_counter()
    arch, permute = gguf_architecture(config)
    if not tokenizer.chat_template:
        raise UserError("the tokenizer has no chat template; a GGUF for serving needs one (nothing was written)")
    pre = pre_tokenizer(tokenizer)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_name(name)
    _add_shape(writer, config, arch)

    tokens, types = _vocabulary(tokenizer, config["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(str(tokenizer_dir), load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise UserError(f"the tokenizer in {tokenizer_dir} has no BPE merges; GGUF export writes GPT-2-style BPE "
                        "vocabularies only (export with --format hf instead)")
    special.add_to_gguf(writer)
    if not special.chat_template:  # a template kept in the tokenizer object only
        writer.add_chat_template(tokenizer.chat_template)

    count = 0
    for gguf_name, array in _tensors(state, config, arch, permute):
        writer.add_tensor(gguf_name, array)
        count += 1
    say(f"writing {count} tensors to {out.name}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return GgufReport(path=str(out), architecture=arch, pre_tokenizer=pre, tensors=count, bytes=out.stat().st_size,
                      seconds=round(time.perf_counter() - started, 1))


def llama_cpp_or_error(purpose: str):
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"{purpose} needs llama-cpp-python: CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install "
                        "\"llama-cpp-python[server]\"") from None
    return llama_cpp


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Send file descriptor 2 (where llama.cpp's C code logs) to `path` for the block."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quantize(f16_path: str | Path, out: str | Path, quant: str, *, threads: int = 0) -> Path:
    """llama.cpp's quantizer: `f16_path` → `out` in `quant` (q8_0 or q4_k_m), written under a temporary name."""
    if quant not in QUANT_FTYPES or quant == "f16":
        raise UserError(f"quantization must be one of q8_0, q4_k_m (f16 is the converter's own output), got {quant!r}")
    llama_cpp = llama_cpp_or_error(f"--quant {quant}")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[quant]
    params.nthread = threads
    log = out.with_name(f".{out.name}.log")
    with _stderr_to(log):  # llama.cpp prints one line per tensor to the process's stderr
        code = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(tmp).encode(), params)
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
    log.unlink(missing_ok=True)
    if code != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise UserError(f"llama.cpp's quantizer failed ({code}) turning {f16_path} into {quant}"
                        f"{': ' + tail[0] if tail else ''}; the f16 file is still there and usable")
    tmp.replace(out)
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A few keys of a written GGUF file read back (architecture, pre-tokenizer, chat template, tensor count)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    keep = ("general.architecture", "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.pre",
            "tokenizer.chat_template", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id")
    values = {key: reader.fields[key].contents() for key in keep if key in reader.fields}
    values["tensors"] = len(reader.tensors)
    return json.loads(json.dumps(values, default=str))
