"""The `nli` judge: a local sequence-classification checkpoint scores (source chunk, summary sentence).

Works with any premise/hypothesis consistency classifier saved with `save_pretrained` (HHEM, MiniCheck,
an MNLI model): the source is cut into chunks that fit the model beside the sentence, every summary
sentence is scored against every chunk, and its best chunk decides. A sentence is supported when that
score (the probability of the "supported" label) is at least `threshold`. Calibrate the threshold on
labeled data (`faithforge eval calibrate --judge nli`).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from faithforge.errors import UserError
from faithforge.evaluation.text import analyze
from faithforge.evaluation.verdict import Flag, SentenceResult, Verdict, verdict_from_sentences

#: Label names that mean "the hypothesis is supported", looked up case-insensitively in `config.id2label`.
SUPPORTED_LABEL_NAMES = ("entailment", "supported", "consistent", "faithful", "factual", "entailed")
_FALLBACK_MAX_LENGTH = 512


def _architectures(checkpoint: Path) -> list[str]:
    config_file = checkpoint / "config.json"
    if not config_file.is_file():
        raise UserError(f"nli checkpoint {checkpoint} has no config.json; pass a folder written by "
                        f"save_pretrained (a local sequence-classification model)")
    try:
        return list(json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or [])
    except (OSError, ValueError) as exc:
        raise UserError(f"nli checkpoint {checkpoint}: config.json is unreadable ({exc}); re-save the model "
                        f"with save_pretrained") from None


def _resolve_supported_label(config: Any, supported_label: int | None, checkpoint: Path) -> int | None:
    """Index of the "supported" class; None for a single-logit model (sigmoid score)."""
    num_labels = int(config.num_labels)
    if supported_label is not None:
        if not 0 <= supported_label < max(num_labels, 1) or num_labels == 1 and supported_label != 0:
            raise UserError(f"supported_label {supported_label} is out of range for nli checkpoint {checkpoint} "
                            f"with {num_labels} label(s) ({config.id2label}); pick an index below {num_labels}")
        return None if num_labels == 1 else supported_label
    if num_labels == 1:
        return None
    for index, name in sorted(config.id2label.items()):
        if str(name).lower() in SUPPORTED_LABEL_NAMES:
            return int(index)
    if num_labels == 2:
        return 1  # HHEM / MiniCheck convention: 1 = consistent
    raise UserError(f"nli checkpoint {checkpoint} has {num_labels} labels ({config.id2label}) and none is named "
                    f"like {'/'.join(SUPPORTED_LABEL_NAMES)}; pass supported_label=INDEX of the 'supported' class")


class NliJudge:
    """Premise/hypothesis consistency scoring with a local Hugging Face classifier."""

    name = "nli"

    def __init__(self, checkpoint: str | Path, *, threshold: float = 0.5, supported_label: int | None = None,
                 batch_size: int = 16, max_length: int | None = None):
        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"nli threshold must be within [0, 1] (got {threshold})")
        if batch_size < 1:
            raise UserError(f"nli batch_size must be at least 1 (got {batch_size})")
        path = Path(checkpoint)
        if not path.is_dir():
            raise UserError(f"nli checkpoint {path} is not a folder; pass the directory of a local "
                            f"sequence-classification model saved with save_pretrained")
        architectures = _architectures(path)
        if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise UserError(
                f"nli checkpoint {path} is a {', '.join(architectures)}, not a sequence classifier; the nli judge "
                f"needs a *ForSequenceClassification model (e.g. HHEM, MiniCheck, an MNLI model) — or use "
                f"--judge grounding")
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"nli checkpoint {path} could not be loaded as a tokenizer + sequence classifier "
                            f"({first}); check the folder holds config.json, weights and tokenizer files") from None
        self.model.eval()
        self._torch = torch
        self.checkpoint = str(path)
        self.threshold = threshold
        self.batch_size = batch_size
        self.supported_label = _resolve_supported_label(self.model.config, supported_label, path)
        if self.tokenizer.pad_token is None:
            fallback = self.tokenizer.eos_token or self.tokenizer.unk_token
            if fallback is None:
                raise UserError(f"the tokenizer of nli checkpoint {path} has no pad, eos or unk token; add a pad "
                                f"token and re-save it")
            self.tokenizer.pad_token = fallback
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = max_length or self._model_max_length()
        self._inputs = set(inspect.signature(self.model.forward).parameters)

    def _model_max_length(self) -> int:
        candidates = [getattr(self.model.config, "max_position_embeddings", None), self.tokenizer.model_max_length]
        sane = [int(c) for c in candidates if isinstance(c, int) and 0 < c < 1_000_000]
        return min(sane) if sane else _FALLBACK_MAX_LENGTH

    # chunking -----------------------------------------------------------------------------------
    def _special_tokens(self) -> int:
        return int(self.tokenizer.num_special_tokens_to_add(pair=True))

    def _length(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chunk_source(self, source: str, hypothesis_tokens: int) -> list[str]:
        """Source sentences packed greedily into chunks that fit beside a hypothesis of that many tokens;
        a sentence longer than a chunk is split by tokens."""
        budget = self.max_length - hypothesis_tokens - self._special_tokens()
        if budget < 8:
            raise UserError(f"nli checkpoint {self.checkpoint}: a summary sentence of {hypothesis_tokens} tokens "
                            f"leaves no room for the source within max_length {self.max_length}; use a model "
                            f"with a longer context or shorter summary sentences")
        analysis = analyze(source)
        chunks: list[str] = []
        current: list[str] = []
        used = 0
        for index in range(len(analysis.sentence_spans)):
            sentence = analysis.sentence_text(index)
            size = self._length(sentence)
            if size > budget:
                if current:
                    chunks.append(" ".join(current))
                    current, used = [], 0
                ids = self.tokenizer(sentence, add_special_tokens=False)["input_ids"]
                chunks.extend(self.tokenizer.decode(ids[i:i + budget]) for i in range(0, len(ids), budget))
                continue
            if used + size > budget and current:
                chunks.append(" ".join(current))
                current, used = [], 0
            current.append(sentence)
            used += size
        if current:
            chunks.append(" ".join(current))
        return chunks or [""]

    # scoring ------------------------------------------------------------------------------------
    def score_pairs(self, premises: list[str], hypotheses: list[str]) -> list[float]:
        """Probability that each hypothesis is supported by its premise."""
        torch = self._torch
        scores: list[float] = []
        for start in range(0, len(premises), self.batch_size):
            batch = self.tokenizer(premises[start:start + self.batch_size], hypotheses[start:start + self.batch_size],
                                   padding=True, truncation="only_first", max_length=self.max_length,
                                   return_tensors="pt")
            batch = {key: value for key, value in batch.items() if key in self._inputs}
            with torch.no_grad():
                logits = self.model(**batch).logits.float()
            if self.supported_label is None:
                probs = torch.sigmoid(logits[:, 0])
            else:
                probs = torch.softmax(logits, dim=-1)[:, self.supported_label]
            scores.extend(float(p) for p in probs)
        return scores

    def sentence_scores(self, source: str, summary: str) -> list[tuple[int, str, float]]:
        """(index, text, best-chunk support score) for every summary sentence."""
        analysis = analyze(summary)
        sentences = [(i, analysis.sentence_text(i)) for i in range(len(analysis.sentence_spans))]
        premises, hypotheses, owners = [], [], []
        for index, text in sentences:
            for chunk in self.chunk_source(source, self._length(text)):
                premises.append(chunk)
                hypotheses.append(text)
                owners.append(index)
        scores = self.score_pairs(premises, hypotheses) if premises else []
        best: dict[int, float] = {}
        for owner, score in zip(owners, scores):
            best[owner] = max(best.get(owner, 0.0), score)
        return [(index, text, best[index]) for index, text in sentences]

    def judge(self, source: str, summary: str) -> Verdict:
        analysis = analyze(summary)
        results: list[SentenceResult] = []
        flags: list[Flag] = []
        for index, text, score in self.sentence_scores(source, summary):
            supported = score >= self.threshold
            results.append(SentenceResult(index=index, text=text, supported=supported, score=score))
            if not supported:
                flags.append(Flag(text, analysis.sentence_spans[index], "inconsistent", index,
                                  f"best support score {score:.3f} over the source is below the threshold "
                                  f"{self.threshold:g}"))
        score = min((r.score for r in results if r.score is not None), default=1.0)
        return verdict_from_sentences(self.name, results, flags, score=score)
