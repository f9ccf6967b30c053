"""A transformers model folder on this machine as a chat backend, in process (no server): the `transformers`
backend (called `local` before 2026-12-07, a name the work pool on this machine also had).

If FaithForge's prefix-cached engine (`faithforge.engine.PrefixCachedEngine`) is importable when a
request arrives it is used, with the system prompt as the cached prefix; otherwise plain `model.generate`. torch and transformers are imported on first use only, so
importing this module stays cheap. There is no constrained decoding here: the spec's prompt states the
schema and the parser validates the answer.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from pathlib import Path
from typing import Any

from faithforge.backends.base import BackendConfigError, BackendOptions, ChatResult, Usage, split_think


def _engine_module() -> Any | None:
    """`faithforge.engine` when it is installed and offers `PrefixCachedEngine`, else None."""
    if importlib.util.find_spec("faithforge.engine") is None:
        return None
    try:
        module = importlib.import_module("faithforge.engine")
    except ImportError:
        return None
    return module if hasattr(module, "PrefixCachedEngine") and hasattr(module, "SamplingConfig") else None


class TransformersBackend:
    """Chat with a local Hugging Face model folder (`model` is its path)."""

    name = "transformers"

    def __init__(self, model: str, *, device: str | None = None):
        self.model = model
        self.device = device
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None
        self._engines: dict[str, Any] = {}  # one prefix-cached engine per distinct system prompt

    def __repr__(self) -> str:
        return f"TransformersBackend(model={self.model!r})"

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            path = Path(self.model).expanduser()
            if not (path / "config.json").is_file():
                raise BackendConfigError(f"model folder {path} has no config.json; pass a folder written "
                                         "by save_pretrained (e.g. `faithforge tiny-model`) as --model")
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path)
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            model.to(device).eval()
            self._loaded = (model, tokenizer)
        return self._loaded

    def _prompt_ids(self, tokenizer: Any, messages: list[dict]) -> list[int]:
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        text = "\n".join(str(m.get("content") or "") for m in messages)
        return list(tokenizer(text)["input_ids"])

    def chat(self, messages: list[dict], *, schema: dict | None = None, max_tokens: int = 1024,
             temperature: float = 0.0, seed: int | None = None) -> ChatResult:
        engine = _engine_module()
        with self._lock:
            model, tokenizer = self._load()
            if engine is not None:
                return self._engine_generate(engine, model, tokenizer, messages, max_tokens, temperature, seed)
            return self._generate(model, tokenizer, messages, max_tokens, temperature, seed)

    def _engine_generate(self, engine: Any, model: Any, tokenizer: Any, messages: list[dict], max_tokens: int,
                         temperature: float, seed: int | None) -> ChatResult:
        """Generate with the prefix-cached engine: the system messages are the cached prefix (shared by
        every example of a spec), the rest of the conversation is the request."""
        split = next((i for i, m in enumerate(messages) if m.get("role") != "system"), len(messages))
        system, rest = messages[:split], messages[split:]
        chat = bool(getattr(tokenizer, "chat_template", None))
        prefix: Any = system if chat else "".join(str(m.get("content") or "") + "\n" for m in system)
        key = repr(prefix)
        if key not in self._engines:
            self._engines[key] = engine.PrefixCachedEngine(model, tokenizer, prefix)
        prompt: Any = rest if chat else "\n".join(str(m.get("content") or "") for m in rest)
        sampling = engine.SamplingConfig(temperature=temperature, seed=seed, max_new_tokens=max_tokens)
        out = self._engines[key].generate(prompt, sampling)
        answer, thinking = split_think(out.text)
        truncated = out.finish_reason == "length"
        return ChatResult(text=answer, thinking=thinking, finish_reason="length" if truncated else "stop",
                          truncated=truncated, model=self.model,
                          usage=Usage(prompt_tokens=out.prompt_tokens, completion_tokens=len(out.token_ids)))

    def _generate(self, model: Any, tokenizer: Any, messages: list[dict], max_tokens: int, temperature: float,
                  seed: int | None) -> ChatResult:
        import torch

        prompt = self._prompt_ids(tokenizer, messages)
        input_ids = torch.tensor([prompt], device=model.device)
        if seed is not None:
            torch.manual_seed(seed)
        sampling: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            sampling["temperature"] = temperature
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.no_grad():
            output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_tokens,
                                    pad_token_id=pad, **sampling)
        new = output[0, len(prompt):].tolist()
        eos = tokenizer.eos_token_id
        stopped = eos is not None and eos in new
        if stopped:
            new = new[:new.index(eos)]
        answer, thinking = split_think(tokenizer.decode(new, skip_special_tokens=True))
        truncated = not stopped and len(new) >= max_tokens
        return ChatResult(text=answer, thinking=thinking, finish_reason="length" if truncated else "stop",
                          truncated=truncated, model=self.model,
                          usage=Usage(prompt_tokens=len(prompt), completion_tokens=len(new)))


def build(model: str, options: BackendOptions) -> TransformersBackend:
    """The registered builder (`faithforge.core.backend_registry`)."""
    return TransformersBackend(model)

