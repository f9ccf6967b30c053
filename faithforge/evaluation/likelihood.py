"""The `likelihood` judge: does the source make each summary sentence likely, under a local causal LM?

For every summary token t, two log-probabilities under the same model and the same summary prefix:

- `cond(t)  = log p(t | source chunk, summary so far)`: how likely the source makes the token;
- `prior(t) = log p(t | summary so far)`: how likely it is anyway, with no source;

and `pmi(t) = cond(t) - prior(t)`, what the source adds. A sentence's score is the mean over its tokens; a summary
is hallucinated when a sentence scores below the threshold. These are the "likelihood" family of the TRUE
benchmark (Honovich et al. 2022, arXiv 2204.04991: BARTScore-style source-conditioned likelihood) and the
pointwise-mutual-information variant that cancels how predictable a phrase is on its own. A first probe on the
QAGS human labels with SmolLM2-135M (BENCHMARKS.md) found `cond` ranks CNN/DM summaries well and XSum's badly,
`pmi` the other way round, so both are kept as features (`Verdict.features`) for a combination fitted on labels
(`faithforge.evaluation.fitted`); the judge alone uses one of them, `feature`.

Sources longer than `max_source_tokens` are cut into overlapping windows of tokens; every sentence keeps the
window that makes it most likely (SummaC's best chunk per sentence). Batches are left-padded so one forward pass
reads only the summary's logits (`logits_to_keep`), never the source's. Scores are cached by content (model,
prompt, window, source, summary), in memory and optionally in a JSONL file per model, so a rerun or a second
judge reading the same items scores nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from faithforge.core.errors import UserError
from faithforge.evaluation.text_analysis import analyze, drop_truncated_word
from faithforge.evaluation.verdict import Flag, SentenceResult, Verdict

#: The two prompts around the same summary tokens. Plain text, no chat template, so a base model and an
#: instruction-tuned one read them alike. Changing either changes every cached score: bump PROMPT_VERSION.
WITH_SOURCE = "Document:\n{source}\n\nSummary of the document:\n"
WITHOUT_SOURCE = "Summary of a document:\n"
PROMPT_VERSION = 1

#: The weights' dtype on CPU (a GPU always reads bfloat16). `auto` is bfloat16 where the CPU multiplies it natively
#: (AVX512-BF16 or AMX): SmolLM2-135M scores a QAGS item in 0.59 s instead of 1.07 s on 2 cores, and a sentence's
#: mean moves by 0.01 nats on average (0.04 at most, 40 dev items; BENCHMARKS.md), so the thresholds hold. Without
#: native bfloat16 it is emulated and slower than float32, so `auto` keeps float32.
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16")
Feature = Literal["cond", "pmi"]
FEATURES: tuple[str, ...] = ("cond", "pmi")
#: A token whose `cond` is below this (nats; e^-6 ≈ 1 in 400) is shown as a flagged span inside a flagged sentence.
LOW_TOKEN_LOGPROB = -6.0


@dataclass(frozen=True)
class SentenceLikelihood:
    """One summary sentence's mean per-token scores (nats) under its best source window."""

    index: int
    text: str
    start: int
    end: int
    tokens: int
    cond: float
    pmi: float
    window: int
    """Which source window scored it best (0 when the source fits one window)."""


@dataclass(frozen=True)
class TokenLikelihood:
    """One summary token: its character span in the summary and its two scores (nats)."""

    start: int
    end: int
    cond: float
    pmi: float


@dataclass(frozen=True)
class LikelihoodScores:
    """Every score the judge reads for one (source, summary) pair."""

    sentences: tuple[SentenceLikelihood, ...]
    tokens: tuple[TokenLikelihood, ...]
    windows: int

    def features(self) -> dict[str, float]:
        """Summary-level features (nats per token): means over tokens and the weakest sentence of each."""
        if not self.tokens:
            return {"cond": 0.0, "pmi": 0.0, "min_sentence_cond": 0.0, "min_sentence_pmi": 0.0, "low_token_share": 0.0}
        return {
            "cond": sum(t.cond for t in self.tokens) / len(self.tokens),
            "pmi": sum(t.pmi for t in self.tokens) / len(self.tokens),
            "min_sentence_cond": min(s.cond for s in self.sentences),
            "min_sentence_pmi": min(s.pmi for s in self.sentences),
            "low_token_share": sum(t.cond < LOW_TOKEN_LOGPROB for t in self.tokens) / len(self.tokens),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LikelihoodScores":
        return cls(sentences=tuple(SentenceLikelihood(**s) for s in data["sentences"]),
                   tokens=tuple(TokenLikelihood(**t) for t in data["tokens"]), windows=int(data["windows"]))


class LikelihoodScorer:
    """Source-conditioned and unconditioned token log-probabilities of summaries under one causal LM.

    Pass `model_path` (a folder `from_pretrained` reads: the run's base model by default) or a loaded
    `model` and `tokenizer` (e.g. an NF4 model on a GPU). `max_source_tokens` is the window a source is cut
    into (SmolLM2-135M reads 8,192 tokens; a smaller window is faster and a CNN/DM article is ~600-900 tokens).
    """

    def __init__(self, model_path: str | Path | None = None, *, model: Any = None, tokenizer: Any = None,
                 device: str | None = None, max_source_tokens: int = 768, window_overlap_tokens: int = 128,
                 batch_size: int = 4, cache_dir: str | Path | None = None, dtype: str = "auto"):
        if model is None and model_path is None:
            raise UserError("the likelihood judge needs a causal LM: set evaluate.likelihood_model to a model folder "
                            "(empty uses the run's base model)")
        if max_source_tokens < 16 or not 0 <= window_overlap_tokens < max_source_tokens // 2:
            raise UserError(f"likelihood window {max_source_tokens} tokens with overlap {window_overlap_tokens}: use a "
                            f"window of at least 16 tokens and an overlap below half of it")
        if batch_size < 1:
            raise UserError(f"likelihood batch_size {batch_size} must be at least 1")
        if dtype not in DTYPES:
            raise UserError(f"likelihood dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        self._dtype, self._dtype_resolved = dtype, False
        self.model_path = str(model_path) if model_path is not None else None
        self._model, self._tokenizer = model, tokenizer
        self._device = device
        self.max_source_tokens = max_source_tokens
        self.window_overlap_tokens = window_overlap_tokens
        self.batch_size = batch_size
        self._memory: dict[str, LikelihoodScores] = {}
        self._cache_file: Path | None = None
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None

    # -- the model ---------------------------------------------------------------------------------------------
    @property
    def dtype(self) -> str:
        """The dtype the weights are loaded in, made concrete on first use: what the cache key records. A GPU
        always scores in bfloat16 whatever was asked (`_load`), so a float32 CPU run never reads a GPU's scores."""
        if not self._dtype_resolved:
            self._dtype, self._dtype_resolved = resolved_dtype(self._dtype, self._device), True
        return self._dtype

    def _load(self) -> None:
        if self._model is not None and self._tokenizer is not None:
            return
        path = Path(self.model_path or "")
        if not (path / "config.json").is_file():
            raise UserError(f"likelihood model {self.model_path} is not a model folder (no config.json); set "
                            f"evaluate.likelihood_model to a folder written by save_pretrained or `faithforge model "
                            f"import`")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.dtype == "bfloat16" else torch.float32  # bfloat16 on any GPU
        self._tokenizer = self._tokenizer or AutoTokenizer.from_pretrained(path)
        self._model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self._device = device

    @property
    def fingerprint(self) -> str:
        """What the cached scores depend on besides the texts: the model's weights file sizes and config, the
        prompt and the window."""
        if self.model_path is not None:
            path = Path(self.model_path)
            parts = [f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in sorted(path.glob("*"))
                     if p.is_file() and p.suffix in (".safetensors", ".bin", ".json")]
            model_id = str(path.resolve()) + "|" + ",".join(parts)
        else:
            config = getattr(self._model, "config", None)
            model_id = "object:" + (config.to_json_string() if config is not None else repr(self._model))
        key = [model_id, PROMPT_VERSION, self.max_source_tokens, self.window_overlap_tokens]
        if self.model_path is not None and self.dtype != "float32":  # float32 keeps the key caches were written under
            key.append(self.dtype)
        raw = json.dumps(key)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    # -- the cache ---------------------------------------------------------------------------------------------
    def _key(self, source: str, summary: str) -> str:
        return hashlib.sha256(json.dumps([self.fingerprint, source, summary]).encode()).hexdigest()

    def _open_cache(self) -> None:
        if self._cache_dir is None or self._cache_file is not None:
            return
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        self._cache_file = self._cache_dir / f"likelihood-{self.fingerprint}.jsonl"
        if self._cache_file.is_file():
            for line in self._cache_file.read_text(encoding="utf-8").splitlines():
                try:  # a line cut by a kill is skipped and recomputed, never trusted
                    row = json.loads(line)
                    self._memory[row["key"]] = LikelihoodScores.from_dict(row["scores"])
                except (ValueError, KeyError, TypeError):
                    continue

    def _remember(self, key: str, scores: LikelihoodScores) -> None:
        self._memory[key] = scores
        if self._cache_file is not None:
            with self._cache_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "scores": scores.to_dict()}) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    # -- scoring -----------------------------------------------------------------------------------------------
    def score(self, source: str, summary: str) -> LikelihoodScores:
        return self.score_many([(source, summary)])[0]

    def score_many(self, items: Sequence[tuple[str, str]],
                   progress: Callable[[int, int], None] | None = None) -> list[LikelihoodScores]:
        """Scores of every (source, summary), in order; cached items are not recomputed."""
        self._load()
        self._open_cache()
        keys = [self._key(src, summ) for src, summ in items]
        out: dict[int, LikelihoodScores] = {}
        todo = []
        for i, key in enumerate(keys):
            if key in self._memory:
                out[i] = self._memory[key]
            else:
                todo.append(i)
        for done, i in enumerate(todo, 1):
            if keys[i] in self._memory:  # the same pair twice in one call
                out[i] = self._memory[keys[i]]
            else:
                scores = self._score_one(*items[i])
                self._remember(keys[i], scores)
                out[i] = scores
            if progress is not None:
                progress(done, len(todo))
        return [out[i] for i in range(len(items))]

    def _windows(self, source: str) -> list[list[int]]:
        ids = self._tokenizer(source, add_special_tokens=False)["input_ids"]
        size, step = self.max_source_tokens, self.max_source_tokens - self.window_overlap_tokens
        if len(ids) <= size:
            return [ids]
        starts = list(range(0, len(ids) - size + 1, step))
        if starts[-1] + size < len(ids):
            starts.append(len(ids) - size)
        return [ids[s:s + size] for s in starts]

    def _score_one(self, source: str, summary: str) -> LikelihoodScores:
        tok = self._tokenizer
        encoded = tok(summary, add_special_tokens=False, return_offsets_mapping=True)
        summary_ids: list[int] = list(encoded["input_ids"])
        offsets = [tuple(o) for o in encoded["offset_mapping"]]
        analysis = analyze(summary)
        if not summary_ids or not analysis.sentence_spans:
            return LikelihoodScores(sentences=(), tokens=(), windows=0)
        head, tail = WITH_SOURCE.split("{source}")
        head_ids = tok(head, add_special_tokens=False)["input_ids"]
        tail_ids = tok(tail, add_special_tokens=False)["input_ids"]
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        windows = self._windows(source)
        contexts = [bos + head_ids + w + tail_ids for w in windows]
        contexts.append(bos + tok(WITHOUT_SOURCE, add_special_tokens=False)["input_ids"])
        logprobs = self._summary_logprobs(contexts, summary_ids)  # one row per context
        prior = logprobs[-1]
        sentence_of = [_sentence_of(offsets[j], analysis.sentence_spans) for j in range(len(summary_ids))]
        sentences, best_window = [], {}
        for index, (start, end) in enumerate(analysis.sentence_spans):
            members = [j for j, s in enumerate(sentence_of) if s == index]
            if not members:
                continue
            means = [sum(row[j] for j in members) / len(members) for row in logprobs[:-1]]
            w = max(range(len(means)), key=means.__getitem__)
            best_window[index] = w
            pmi = sum(logprobs[w][j] - prior[j] for j in members) / len(members)
            sentences.append(SentenceLikelihood(index=index, text=summary[start:end], start=start, end=end,
                                                tokens=len(members), cond=means[w], pmi=pmi, window=w))
        tokens = []
        for j, (start, end) in enumerate(offsets):
            w = best_window.get(sentence_of[j], 0)
            tokens.append(TokenLikelihood(start=int(start), end=int(end), cond=logprobs[w][j],
                                          pmi=logprobs[w][j] - prior[j]))
        return LikelihoodScores(sentences=tuple(sentences), tokens=tuple(tokens), windows=len(windows))

    def _summary_logprobs(self, contexts: list[list[int]], summary_ids: list[int]) -> list[list[float]]:
        """log p(summary token j | context, summary[:j]) for every context, batched and left-padded.

        Shape: one list of len(summary_ids) floats per context."""
        import torch

        rows: dict[int, list[float]] = {}
        pad = self._tokenizer.pad_token_id
        pad = pad if pad is not None else (self._tokenizer.eos_token_id or 0)
        n = len(summary_ids)
        target = torch.tensor(summary_ids, device=self._device)
        for members in _length_batches([len(c) for c in contexts], self.batch_size):
            batch = [contexts[i] + summary_ids for i in members]
            width = max(len(b) for b in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, seq in enumerate(batch):
                ids[r, width - len(seq):] = torch.tensor(seq)
                mask[r, width - len(seq):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self._model(input_ids=ids.to(self._device), attention_mask=mask.to(self._device),
                                     position_ids=positions.to(self._device), logits_to_keep=n + 1).logits
            # logits[:, k] predicts the token after position width-(n+1)+k: the summary's tokens come from k < n.
            logp = torch.log_softmax(logits[:, :n].float(), dim=-1)  # (batch, n, vocab)
            picked = logp.gather(-1, target.expand(len(batch), n).unsqueeze(-1)).squeeze(-1)  # (batch, n)
            rows.update(zip(members, picked.cpu().tolist()))
        return [rows[i] for i in range(len(contexts))]


def _length_batches(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices grouped into batches of at most `size`, longest first, never putting a row with a batch whose first
    row is over twice as long: padded, the short no-source row (~5 tokens before the summary) cost as much as a
    1,024-token window beside it, 0.93 s against 0.59 s per QAGS item at batch 4 (BENCHMARKS.md)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        if batches and len(batches[-1]) < size and 2 * lengths[i] >= lengths[batches[-1][0]]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def resolved_dtype(dtype: str, device: str | None = None) -> str:
    """The dtype the scorer loads its weights in: bfloat16 on a GPU (any setting), else the setting, with `auto`
    made concrete for the CPU: bfloat16 where the CPU has it natively, else float32 (see DTYPES)."""
    import torch

    if device not in (None, "cpu") or (device is None and torch.cuda.is_available()):
        return "bfloat16"
    if dtype != "auto":
        return dtype
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bfloat16" if native else "float32"


def _sentence_of(offset: tuple[int, int], spans: Sequence[tuple[int, int]]) -> int:
    """The sentence a token belongs to: the one holding its first non-space character (else the nearest before)."""
    start = offset[0]
    found = 0
    for index, (s, _e) in enumerate(spans):
        if s <= start or index == 0:
            found = index
        else:
            break
    return found


class LikelihoodJudge:
    """Flags a summary sentence whose mean `feature` (nats per token) is below `threshold`.

    The threshold is a property of the model and the kind of text: choose it on labeled development data
    (`faithforge eval calibrate --judge likelihood`, or the fitted combination); the defaults are the values
    chosen on the development half of the QAGS human labels with SmolLM2-135M (bench/judges_real_text.py).
    """

    name = "likelihood"

    def __init__(self, scorer: LikelihoodScorer, *, feature: Feature = "cond", threshold: float | None = None):
        if feature not in FEATURES:
            raise UserError(f"likelihood feature {feature!r}: choose one of {', '.join(FEATURES)}")
        self.scorer = scorer
        self.feature = feature
        self.threshold = DEFAULT_THRESHOLDS[feature] if threshold is None else float(threshold)
        if not math.isfinite(self.threshold):
            raise UserError(f"likelihood threshold {threshold!r} must be a finite number of nats per token")

    @property
    def checkpoint(self) -> str:
        """Which model scores, and how (`heldout.judge_checkpoint`): a calibration made with one model is not
        shown for another. The folder's name, the scorer's fingerprint (weights, window, dtype) and the feature."""
        where = Path(self.scorer.model_path).name if self.scorer.model_path else "a loaded model"
        return f"likelihood {where} {self.scorer.fingerprint} {self.feature}"

    def judge(self, source: str, summary: str, *, truncated: bool = False) -> Verdict:
        text = drop_truncated_word(summary) if truncated else summary
        scores = self.scorer.score(source, text)
        return self.verdict(scores, truncated=truncated)

    def judge_many(self, items: Sequence[tuple[str, str]]) -> list[Verdict]:
        """Verdicts for many pairs, scored in one batched call."""
        return [self.verdict(s) for s in self.scorer.score_many(items)]

    def verdict(self, scores: LikelihoodScores, *, truncated: bool = False) -> Verdict:
        sentences, flags = [], []
        for s in scores.sentences:
            value = getattr(s, self.feature)
            supported = value >= self.threshold
            sentences.append(SentenceResult(index=s.index, text=s.text, supported=supported, score=value))
            if supported:
                continue
            low = [t for t in scores.tokens if s.start <= t.start < s.end and t.cond < LOW_TOKEN_LOGPROB]
            for t in _runs(low) or [(s.start, s.end)]:
                flags.append(Flag(text=s.text[t[0] - s.start:t[1] - s.start], span=t, kind="claim",
                                  sentence_index=s.index,
                                  reason=f"the source makes this unlikely: mean {self.feature} {value:.2f} nats/token "
                                         f"< {self.threshold:.2f}"))
        values = [getattr(s, self.feature) for s in scores.sentences]
        return Verdict(judge=self.name, hallucinated=any(not s.supported for s in sentences),
                       sentences=tuple(sentences), flags=tuple(flags), score=min(values) if values else None,
                       truncated=truncated, features=scores.features())


def _runs(tokens: Sequence[TokenLikelihood]) -> list[tuple[int, int]]:
    """Adjacent low tokens joined into character spans."""
    spans: list[tuple[int, int]] = []
    for t in tokens:
        if spans and t.start <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], t.end)
        else:
            spans.append((t.start, t.end))
    return spans


#: Sentence thresholds (nats per token) for SmolLM2-135M-Instruct, chosen on the development half of the QAGS
#: labels (bench/judges_real_text.py prints the choice); another model or kind of text needs its own.
DEFAULT_THRESHOLDS: dict[str, float] = {"cond": -1.84, "pmi": 2.18}


__all__ = ["DEFAULT_THRESHOLDS", "FEATURES", "LikelihoodJudge", "LikelihoodScorer", "LikelihoodScores",
           "SentenceLikelihood", "TokenLikelihood"]


#: `build` keywords that configure the scorer (the rest configure the judge).
SCORER_OPTIONS = ("model", "tokenizer", "device", "max_source_tokens", "window_overlap_tokens", "batch_size",
                  "cache_dir", "dtype")


def build(**options: Any) -> LikelihoodJudge:
    """The registered builder (`faithforge.core.judge_registry`): a `scorer`, or a causal LM (`model_path`, or a
    loaded `model` and `tokenizer`) with the scorer's options; `feature` and `threshold` for the judge."""
    if options.pop("deferred", False) or not (options.get("model_path") or options.get("scorer")
                                              or options.get("model")):
        raise UserError("the likelihood judge needs a causal LM: set evaluate.likelihood_model (the `eval` "
                        "commands' --likelihood-model) to a model folder; it defaults to the run's base model inside a "
                        "pipeline run")
    scorer = options.pop("scorer", None) or LikelihoodScorer(
        options.pop("model_path", None), **{k: options.pop(k) for k in SCORER_OPTIONS if k in options})
    return LikelihoodJudge(scorer, **options)


def options_from_config(cfg, *, base_model: str | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """`build`'s keywords from the `evaluate` section. The model is `evaluate.likelihood_model`, else the run's
    base model; before the run (preflight) it may be unknown, and the options say so (`deferred`)."""
    model = getattr(cfg, "likelihood_model", None) or base_model
    options: dict[str, Any] = {"feature": cfg.likelihood_feature, "threshold": cfg.likelihood_threshold,
                               "max_source_tokens": cfg.likelihood_window_tokens,
                               "window_overlap_tokens": min(128, cfg.likelihood_window_tokens // 4),
                               "dtype": getattr(cfg, "likelihood_dtype", "auto")}
    if cache_dir:
        options["cache_dir"] = cache_dir
    if model is None:
        return {**options, "model_path": None, "deferred": True}
    if not (Path(model).expanduser() / "config.json").is_file():
        raise UserError(f"evaluate.likelihood_model {model} has no config.json; set it to a causal LM folder "
                        f"(save_pretrained or `faithforge model import`), or leave it empty for the run's model")
    return {**options, "model_path": str(Path(model).expanduser())}
