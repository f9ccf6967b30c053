"""Support features of a sentence against a source from the frozen all-MiniLM-L6-v2 encoder, and a logistic head.

The trained judge's default method. The source is encoded once, in chunks of whole sentences that fit the
encoder's window; each summary sentence is encoded alone. For every content token of the sentence, its best
cosine similarity to any source token says whether the source has something like it (BERTScore precision,
Zhang et al. 2020, read per token); the mean-pooled sentence embedding (what all-MiniLM-L6-v2 was trained for)
finds the source sentence it restates. Exact checks from `text.analyze` add what embeddings blur: numbers,
dates and content words absent from the source, word pairs in an order the source never has, a negation or an
opposite relation word against the best-matching source sentence. `FEATURES` names them.

A logistic regression over the standardized features (`LogisticHead`) is fitted on the corruption examples of
the user's documents (`corruptions.py`); its probability is a sentence's support score.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from faithforge.evaluation.corruptions import _RELATION_MAP
from faithforge.evaluation.text_analysis import STOPWORDS, analyze

FEATURES = ("token_min", "token_mean", "token_p20", "tokens_below_0.5", "tokens_below_0.7", "sentence_best",
            "absent_share", "absent_count", "number_absent", "date_absent", "negation_mismatch", "relation_flip",
            "length", "pairs_absent_share")
_NEGATION = re.compile(r"\b(not|never|no|n't|cannot|without|none|nobody|nothing)\b|n't\b", re.IGNORECASE)


@dataclass
class Encoded:
    """Unit-length token vectors (content tokens marked) and the mean-pooled sentence vector(s)."""

    tokens: Any  # torch.Tensor [n, d]
    content: list[bool]
    sentences: Any  # torch.Tensor [m, d]
    sentence_texts: list[str]


@dataclass
class SourceInfo:
    encoded: Encoded
    keys: set[str]
    pairs: set[tuple[str, str]]


def _content_mask(text: str, offsets: list[tuple[int, int]], word_ids: list[int | None]) -> list[bool]:
    spans: dict[int, list[int]] = {}
    for (start, end), word in zip(offsets, word_ids):
        if word is not None:
            first, last = spans.get(word, [start, end])
            spans[word] = [min(first, start), max(last, end)]
    mask = []
    for word in word_ids:
        if word is None:
            mask.append(False)
            continue
        start, end = spans[word]
        token = text[start:end].lower()
        mask.append(any(c.isalnum() for c in token) and token not in STOPWORDS)
    return mask


def _word_pairs(keys: list[str]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in zip(keys, keys[1:])}


class Aligner:
    """The frozen encoder and the feature computation; `cache` source encodings by content."""

    def __init__(self, folder: str | Path, *, max_length: int = 256, batch_size: int = 16, cache: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            self.model = AutoModel.from_pretrained(str(folder))
        finally:
            hf_logging.set_verbosity(level)
        self.model.eval()
        self._torch = torch
        self.max_length = max_length
        self.batch_size = batch_size
        self._cache: OrderedDict[str, SourceInfo] = OrderedDict()
        self._cache_size = cache

    # encoding -----------------------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> list[tuple[Any, list[bool], Any, list[tuple[int, int]]]]:
        """(unit token vectors without specials, content mask, unit mean vector, offsets) per text."""
        torch = self._torch
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                 return_offsets_mapping=True, return_tensors="pt")
            offsets = enc.pop("offset_mapping")
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)
            tokens = torch.nn.functional.normalize(hidden, dim=-1)
            for i, text in enumerate(batch):
                word_ids = enc.word_ids(i)
                keep = [j for j, w in enumerate(word_ids) if w is not None]
                offs = [tuple(int(x) for x in offsets[i, j]) for j in keep]
                content = _content_mask(text, offs, [word_ids[j] for j in keep])
                out.append((tokens[i, keep], content, pooled[i], offs))
        return out

    def source(self, text: str) -> SourceInfo:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest in self._cache:
            self._cache.move_to_end(digest)
            return self._cache[digest]
        torch = self._torch
        analysis = analyze(text)
        sentences = [analysis.sentence_text(i) for i in range(len(analysis.sentence_spans))] or [text]
        budget = self.max_length - 2
        lengths = [len(self.tokenizer(s, add_special_tokens=False)["input_ids"]) for s in sentences]
        chunks: list[list[int]] = []
        for index, size in enumerate(lengths):
            if chunks and sum(lengths[j] for j in chunks[-1]) + size <= budget:
                chunks[-1].append(index)
            else:
                chunks.append([index])
        texts = [" ".join(sentences[j] for j in chunk) for chunk in chunks]
        token_parts, content, sentence_vectors = [], [], []
        for chunk, chunk_text, (tokens, mask, _, offsets) in zip(chunks, texts, self._encode(texts)):
            token_parts.append(tokens)
            content.extend(mask)
            position = 0
            for j in chunk:  # a sentence's vector: the mean of its tokens, encoded in its chunk's context
                start, end = position, position + len(sentences[j])
                position = end + 1
                picked = [k for k, (a, b) in enumerate(offsets) if a >= start and b <= end]
                vector = tokens[picked].mean(0) if picked else tokens.mean(0)
                sentence_vectors.append(torch.nn.functional.normalize(vector, dim=-1))
        keys = [u.key for u in analysis.units if u.is_content]
        info = SourceInfo(Encoded(torch.cat(token_parts), content, torch.stack(sentence_vectors), sentences),
                          {u.key for u in analysis.units if u.is_content}, _word_pairs(keys))
        self._cache[digest] = info
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return info

    def hypotheses(self, texts: list[str]) -> list[Encoded]:
        return [Encoded(tokens, mask, pooled.unsqueeze(0), [text])
                for text, (tokens, mask, pooled, _) in zip(texts, self._encode(texts))]

    # features -----------------------------------------------------------------------------------
    def features(self, source: SourceInfo, hypothesis: Encoded) -> list[float]:
        torch = self._torch
        text = hypothesis.sentence_texts[0]
        tokens = hypothesis.tokens[[i for i, c in enumerate(hypothesis.content) if c]]
        if len(tokens):
            best = (tokens @ source.encoded.tokens.T).max(dim=1).values
            ordered = sorted(float(x) for x in best)
            token_min, token_mean = ordered[0], sum(ordered) / len(ordered)
            p20 = ordered[int(0.2 * (len(ordered) - 1))]
            below5 = sum(x < 0.5 for x in ordered) / len(ordered)
            below7 = sum(x < 0.7 for x in ordered) / len(ordered)
        else:
            token_min = token_mean = p20 = 1.0
            below5 = below7 = 0.0
        similarity = (hypothesis.sentences @ source.encoded.sentences.T)[0]
        best_index = int(torch.argmax(similarity))
        sentence_best = float(similarity[best_index])
        best_sentence = source.encoded.sentence_texts[best_index]
        analysis = analyze(text)
        content = [u for u in analysis.units if u.is_content]
        absent = [u for u in content if u.key not in source.keys]
        pairs = _word_pairs([u.key for u in content])
        words = {w.lower() for w in re.findall(r"[A-Za-z]+", text)}
        best_words = {w.lower() for w in re.findall(r"[A-Za-z]+", best_sentence)}
        flip = any(_RELATION_MAP.get(w) in best_words and w not in best_words for w in words)
        return [
            token_min, token_mean, p20, below5, below7, sentence_best,
            len(absent) / len(content) if content else 0.0,
            min(len(absent), 5) / 5,
            float(any(u.kind == "number" for u in absent)),
            float(any(u.kind == "date" for u in absent)),
            float(bool(_NEGATION.search(text)) != bool(_NEGATION.search(best_sentence))),
            float(flip),
            min(len(content), 30) / 30,
            len(pairs - source.pairs) / len(pairs) if pairs else 0.0,
        ]

    def sentence_features(self, source: str, sentences: Sequence[str]) -> list[list[float]]:
        info = self.source(source)
        return [self.features(info, h) for h in self.hypotheses(list(sentences))]


@dataclass
class LogisticHead:
    """P(supported) = sigmoid(w · (x - mean) / std + b)."""

    weights: list[float]
    bias: float
    mean: list[float]
    std: list[float]

    def probability(self, features: Sequence[float]) -> float:
        z = self.bias + sum(w * (x - m) / s for w, x, m, s in zip(self.weights, features, self.mean, self.std))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def to_tensors(self) -> dict[str, Any]:
        import torch

        return {"weights": torch.tensor(self.weights, dtype=torch.float32),
                "bias": torch.tensor([self.bias], dtype=torch.float32),
                "mean": torch.tensor(self.mean, dtype=torch.float32),
                "std": torch.tensor(self.std, dtype=torch.float32)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Any]) -> "LogisticHead":
        return cls([float(x) for x in tensors["weights"]], float(tensors["bias"][0]),
                   [float(x) for x in tensors["mean"]], [float(x) for x in tensors["std"]])


def fit_logistic(features: Sequence[Sequence[float]], labels: Sequence[int], *, l2: float = 1e-2,
                 iterations: int = 200) -> LogisticHead:
    """A logistic regression (L-BFGS, L2 on the weights) on standardized features; deterministic."""
    import torch

    x = torch.tensor(features, dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.float64)
    mean = x.mean(0)
    std = x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LogisticHead([float(v) for v in w.detach()], float(b.detach()[0]), [float(v) for v in mean],
                        [float(v) for v in std])


__all__ = ["Aligner", "FEATURES", "LogisticHead", "fit_logistic"]
