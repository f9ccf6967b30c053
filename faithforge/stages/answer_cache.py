"""The evaluate stage's answers, kept by what wrote them, so a rerun judges them again instead of writing them again.

Writing the answers is nearly all of the stage (for SmolLM2-135M on 2 cores about 30 s per model, judging them
under 1 s): a run that changes only the judge, a repeated `demo`, or a run resumed after a kill while evaluating
reuses each model's answers whose key matches. The key is everything that decides greedy answers: the engine,
its file and its libraries' versions, the base weights with the tokenizer, chat template and generation config
(its EOS ids end an answer), the adapter's weights and settings, the sources, the system prompt, the token limit,
the batch, the placement and the precision. A missing, unreadable, changed or mismatched file is written again,
never trusted, and `--fresh` removes them all (the `answers/` folder is a derived one).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from faithforge.stages.context import content_key

#: Bump when the way answers are written changes without any input above changing (their cache then misses).
ANSWERS_VERSION = 1


@dataclass(frozen=True)
class Answers:
    """One model's answers to the evaluation sources, in their order."""

    texts: list[str]
    """The answers, stripped."""
    truncated: list[bool]
    """Whether each was cut off by the token limit."""


def adapter_fingerprint(folder: str | Path | None) -> str | None:
    """SHA-256 over a PEFT adapter's own files (`adapter_config.json`, `adapter_model.*`): its weights and its
    settings (rank, alpha, targets), not the README or the training record beside them. None: no adapter.

    The settings are read, not hashed as bytes: PEFT writes `target_modules` in a different order in each process,
    and the base model's path (where the weights are, not which: those are in the key already)."""
    if folder is None:
        return None
    from faithforge.core.workspace import sha256_file

    digest = hashlib.sha256()
    for file in sorted(Path(folder).glob("adapter_*")):
        digest.update(file.name.encode())
        digest.update((_settings_digest(file) if file.name == "adapter_config.json" else sha256_file(file)).encode())
    return digest.hexdigest()


def _settings_digest(config: Path) -> str:
    from faithforge.core.workspace import sha256_file

    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        settings = None
    if not isinstance(settings, dict):  # not PEFT's settings: its bytes, as any other file
        return sha256_file(config)
    settings.pop("base_model_name_or_path", None)
    canonical = {k: sorted(v, key=str) if k == "target_modules" and isinstance(v, list) else v
                 for k, v in settings.items()}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str).encode()).hexdigest()


def answers_key(*, sampler: str, gguf: str | None, model: str, adapter: str | None, sources: list[str],
                system_prompt: str, max_new_tokens: int, batch_size: int, placement: str, precision: str) -> str:
    """The content key of one model's answers (`model`: the base folder's `sampling_fingerprint`; `adapter`: its
    `adapter_fingerprint`; `gguf`: the file llama.cpp reads, named by its content)."""
    return content_key("answers", ANSWERS_VERSION, sampler, _library_versions(sampler), gguf, model, adapter,
                       hashlib.sha256(json.dumps(sources).encode()).hexdigest(), system_prompt, max_new_tokens,
                       batch_size, placement, precision)


def _library_versions(sampler: str) -> list[str]:
    """The installed versions of what computes the answers: a new llama.cpp or torch may change a greedy token."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    # the tokenizer writes the prompt either way; the engine merges the adapter with peft
    for package in ("llama_cpp_python", "transformers", "tokenizers") if sampler == "llama.cpp" else (
            "torch", "transformers", "tokenizers", "peft"):
        try:
            found.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} missing")
    return found


def answers_path(workspace, key: str) -> Path:
    """Where the answers of `key` are kept: the workspace's `answers/` (a derived folder: `--fresh` removes it)."""
    return workspace.dir("answers") / f"answers-{key}"


def read_answers(path: Path, count: int) -> Answers | None:
    """The answers stored at `path`, or None when absent, unreadable, changed since written (their checksum),
    written under another key (a copied or renamed file) or not `count` of them: then they are written again."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        texts, truncated = data["texts"], data["truncated"]
        intact = data["sha256"] == _checksum(texts, truncated) and data["key"] == path.name
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (intact and isinstance(texts, list) and isinstance(truncated, list) and len(texts) == len(truncated) == count
            and all(isinstance(t, str) for t in texts) and all(isinstance(t, bool) for t in truncated)):
        return None
    return Answers(texts, truncated)


def write_answers(path: Path, answers: Answers) -> None:
    """Store one model's answers (whole or not at all)."""
    from faithforge.core.workspace import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"key": path.name, "texts": answers.texts, "truncated": answers.truncated,
                             "sha256": _checksum(answers.texts, answers.truncated)})


def _checksum(texts, truncated) -> str:
    return hashlib.sha256(json.dumps([texts, truncated]).encode()).hexdigest()
