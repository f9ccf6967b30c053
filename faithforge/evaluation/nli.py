"""The `nli` judge: a consistency checkpoint scores every summary sentence against the source.

The families users pick, from a local folder or a hub id:

- **sequence classifiers** (DeBERTa/RoBERTa/BERT MNLI, MiniCheck-RoBERTa/DeBERTa, HHEM's exported head):
  the support score is the softmax probability of the label that means "supported". Labels are mapped
  by *name* from `config.id2label`: entailment / supported / consistent / faithful / … is the supported
  class; with two labels, a class named contradiction / unsupported / hallucinated / … makes the other
  one supported; neutral is never supported. Only a two-label model with generic names (`LABEL_0`,
  `LABEL_1`) falls back to the HHEM/MiniCheck convention 1 = supported. A single logit is a sigmoid score.
- **seq2seq yes/no checkers** (MiniCheck-Flan-T5 and other T5/BART checkers): the premise and hypothesis
  go into a prompt (`seq2seq_template`, MiniCheck's `predict: {premise}</s>{hypothesis}` by default) and
  the score is the probability of the "yes" answer token against the "no" one at the first decoding step
  (`seq2seq_answers`, MiniCheck's ("1", "0") by default; the first token of each answer is read — for T5
  these are the ids 209 and 3 MiniCheck uses).
- **custom-code models** (HHEM-2.1-open ships its own modeling file): loaded only with an explicit
  `trust_remote_code=True`, which runs Python from the checkpoint; otherwise a clear error says so. A
  custom model with a `predict(pairs)` method (HHEM) is scored through it.

Long sources (SummaC zero-shot): the source is cut into chunks of whole sentences that fit the
checkpoint's window beside the summary sentence, consecutive chunks overlapping by about
`chunk_overlap` of the window so a fact on a chunk border is seen whole; every summary sentence is
scored against every chunk and keeps its best support. Sentences are the unit: a summary is
hallucinated when any sentence's best support is below `threshold`, and the flagged sentence is shown.
Calibrate the threshold on labeled data (`faithforge eval calibrate --judge nli`).
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

from faithforge.core.errors import UserError
from faithforge.evaluation.text_analysis import analyze, drop_truncated_word
from faithforge.evaluation.verdict import Verdict, thresholded_verdict

#: Label names (lower case, `-`/space as `_`) that mean "the hypothesis is supported".
SUPPORTED_LABEL_NAMES = ("entailment", "entailed", "supported", "consistent", "faithful", "factual", "yes", "true")
#: Label names that mean "not supported"; with two labels the other one is the supported class.
UNSUPPORTED_LABEL_NAMES = ("contradiction", "not_entailment", "unsupported", "not_supported", "inconsistent",
                           "hallucinated", "hallucination", "unfaithful", "refuted", "no", "false")
MINICHECK_TEMPLATE = "predict: {premise}{eos}{hypothesis}"
MINICHECK_ANSWERS = ("1", "0")
_FALLBACK_MAX_LENGTH = 512
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_GENERIC_LABEL = re.compile(r"^label_\d+$")


def _norm(name: Any) -> str:
    return re.sub(r"[\s-]+", "_", str(name).strip().lower())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_config(checkpoint: str) -> dict[str, Any]:
    """config.json of a local folder, or of a hub id (from the local cache or the hub)."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise UserError(f"nli checkpoint {path} has no config.json; pass a folder written by save_pretrained "
                            f"or a hub id")
        text = config_file.read_text(encoding="utf-8", errors="replace")
    elif path.exists() or not _HUB_ID.match(checkpoint):
        raise UserError(f"nli checkpoint {checkpoint} is not a folder or a hub id; pass the directory of a model "
                        f"saved with save_pretrained, or a hub id such as lytang/MiniCheck-Flan-T5-Large")
    else:
        try:
            from huggingface_hub import hf_hub_download

            text = Path(hf_hub_download(checkpoint, "config.json")).read_text(encoding="utf-8")
        except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated repo: all say the same to the user
            raise UserError(f"nli checkpoint {checkpoint!r} is not a local folder and could not be fetched from "
                            f"the hub ({_first_line(exc)}); download it (huggingface-cli download "
                            f"{checkpoint} --local-dir DIR) and pass DIR") from None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise UserError(f"nli checkpoint {checkpoint}: config.json is unreadable ({exc}); re-save the model "
                        f"with save_pretrained") from None
    if not isinstance(config, dict):
        raise UserError(f"nli checkpoint {checkpoint}: config.json is not a JSON object; re-save the model")
    return config


def supported_index(id2label: dict[Any, Any], num_labels: int, supported_label: int | None = None,
                    where: str = "the checkpoint") -> int | None:
    """Index of the "supported" class, mapped by label name; None for a single-logit model (sigmoid)."""
    if supported_label is not None:
        if num_labels == 1 and supported_label != 0 or not 0 <= supported_label < max(num_labels, 1):
            raise UserError(f"supported_label {supported_label} is out of range for nli checkpoint {where} "
                            f"with {num_labels} label(s) ({id2label}); pick an index below {num_labels}")
        return None if num_labels == 1 else supported_label
    if num_labels == 1:
        return None
    names = {int(index): _norm(name) for index, name in id2label.items()}
    supported = [i for i, name in sorted(names.items()) if name in SUPPORTED_LABEL_NAMES]
    if len(supported) == 1:
        return supported[0]
    if num_labels == 2 and not supported:
        unsupported = [i for i, name in names.items() if name in UNSUPPORTED_LABEL_NAMES]
        if len(unsupported) == 1:
            return 1 - unsupported[0]
        if all(_GENERIC_LABEL.match(name) for name in names.values()):
            return 1  # HHEM / MiniCheck convention for unnamed labels: 1 = supported
    raise UserError(f"nli checkpoint {where} has {num_labels} labels ({id2label}) and none is named like "
                    f"{'/'.join(SUPPORTED_LABEL_NAMES[:4])}; pass supported_label=INDEX of the 'supported' class "
                    f"(evaluate.nli_supported_label)")


class NliJudge:
    """Premise/hypothesis consistency scoring with a Hugging Face checkpoint (see the module docstring)."""

    name = "nli"

    def __init__(self, checkpoint: str | Path, *, threshold: float = 0.5, supported_label: int | None = None,
                 batch_size: int = 16, max_length: int | None = None, trust_remote_code: bool = False,
                 chunk_overlap: float = 0.25, seq2seq_template: str = MINICHECK_TEMPLATE,
                 seq2seq_answers: tuple[str, str] = MINICHECK_ANSWERS):
        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"nli threshold must be within [0, 1] (got {threshold})")
        if batch_size < 1:
            raise UserError(f"nli batch_size must be at least 1 (got {batch_size})")
        if not 0.0 <= chunk_overlap < 0.9:
            raise UserError(f"nli chunk_overlap is a share of the window in [0, 0.9) (got {chunk_overlap})")
        where = str(checkpoint)
        config = _read_config(where)
        architectures = list(config.get("architectures") or [])
        auto_map = config.get("auto_map")
        if auto_map and not trust_remote_code:
            raise UserError(
                f"nli checkpoint {where} ships its own model code ({', '.join(sorted(auto_map))} in its auto_map); "
                f"loading it runs that Python code: read it, then opt in with trust_remote_code=True "
                f"(evaluate.nli_trust_remote_code: true, or --trust-remote-code)")
        self.family = self._family(config, architectures, bool(auto_map), where)
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer

        loader = AutoModelForSeq2SeqLM if self.family == "seq2seq" else AutoModelForSequenceClassification
        source = str(Path(where).expanduser()) if Path(where).expanduser().is_dir() else where
        try:
            self.model = loader.from_pretrained(source, trust_remote_code=trust_remote_code)
            self.tokenizer = self._load_tokenizer(AutoTokenizer, source, trust_remote_code)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise UserError(f"nli checkpoint {where} could not be loaded as a tokenizer + {loader.__name__[4:]} "
                            f"({_first_line(exc)}); check it holds config.json, weights and tokenizer files") from None
        self.model.eval()
        self._torch = torch
        self.checkpoint = where
        self.threshold = threshold
        self.batch_size = batch_size
        self.chunk_overlap = chunk_overlap
        self._predict = getattr(self.model, "predict", None) if auto_map and self.family == "classifier" else None
        if self.tokenizer.pad_token is None:
            fallback = self.tokenizer.eos_token or self.tokenizer.unk_token
            if fallback is None:
                raise UserError(f"the tokenizer of nli checkpoint {where} has no pad, eos or unk token; add a pad "
                                f"token and re-save it")
            self.tokenizer.pad_token = fallback
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.supported_label: int | None = None
        if self.family == "classifier":
            self.supported_label = supported_index(self.model.config.id2label, int(self.model.config.num_labels),
                                                   supported_label, where)
        else:
            self._setup_seq2seq(seq2seq_template, seq2seq_answers, where)
        self.max_length = max_length or self._model_max_length()
        self._inputs = set(inspect.signature(self.model.forward).parameters)

    def _load_tokenizer(self, auto_tokenizer: Any, source: str, trust_remote_code: bool) -> Any:
        """The checkpoint's tokenizer; a custom-code model without one (HHEM-2.1-open ships none and builds its
        own from its foundation model) lends the tokenizer it holds, used here only to size chunks."""
        try:
            return auto_tokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError):
            own = getattr(self.model, "tokenizer", None)
            if trust_remote_code and callable(getattr(self.model, "predict", None)) and own is not None:
                return own
            raise

    @staticmethod
    def _family(config: dict[str, Any], architectures: list[str], custom: bool, where: str) -> str:
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            return "classifier"
        if any(a.endswith("ForConditionalGeneration") for a in architectures) and config.get("is_encoder_decoder"):
            return "seq2seq"
        if not architectures and custom:
            return "classifier"
        if not architectures:
            raise UserError(f"nli checkpoint {where}: config.json names no architecture; re-save the model with "
                            f"save_pretrained")
        raise UserError(
            f"nli checkpoint {where} is a {', '.join(architectures)}, not a sequence classifier or a seq2seq "
            f"yes/no checker; the nli judge needs a *ForSequenceClassification model (an MNLI model, HHEM, "
            f"MiniCheck-RoBERTa) or a *ForConditionalGeneration checker (MiniCheck-Flan-T5) — or use "
            f"--judge grounding")

    def _setup_seq2seq(self, template: str, answers: tuple[str, str], where: str) -> None:
        if "{premise}" not in template or "{hypothesis}" not in template:
            raise UserError(f"seq2seq_template must contain {{premise}} and {{hypothesis}} (got {template!r})")
        ids = []
        for answer in answers:
            tokens = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            if not tokens:
                raise UserError(f"nli checkpoint {where}: answer {answer!r} encodes to no token; pick "
                                f"seq2seq_answers the tokenizer knows")
            ids.append(int(tokens[0]))
        if ids[0] == ids[1]:
            raise UserError(f"nli checkpoint {where}: answers {answers} start with the same token {ids[0]}; pick "
                            f"seq2seq_answers whose first tokens differ")
        self.answer_ids = (ids[0], ids[1])
        self.template = template
        start = getattr(self.model.config, "decoder_start_token_id", None)
        self.decoder_start = int(start if start is not None else self.model.config.pad_token_id or 0)

    def _model_max_length(self) -> int:
        config = self.model.config
        candidates = [getattr(config, "max_position_embeddings", None), getattr(config, "n_positions", None),
                      self.tokenizer.model_max_length]
        sane = [int(c) for c in candidates if isinstance(c, int) and 0 < c < 1_000_000]
        return min(sane) if sane else _FALLBACK_MAX_LENGTH

    # chunking -----------------------------------------------------------------------------------
    def _special_tokens(self) -> int:
        if self.family == "seq2seq":
            empty = self.template.format(premise="", hypothesis="", eos=self.tokenizer.eos_token or "")
            return len(self.tokenizer(empty)["input_ids"])
        return int(self.tokenizer.num_special_tokens_to_add(pair=True))

    def _length(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def window(self, hypothesis_tokens: int) -> int:
        """Source tokens that fit beside a hypothesis of that many tokens."""
        budget = self.max_length - hypothesis_tokens - self._special_tokens()
        if budget < 8:
            raise UserError(f"nli checkpoint {self.checkpoint}: a summary sentence of {hypothesis_tokens} tokens "
                            f"leaves no room for the source within max_length {self.max_length}; use a model "
                            f"with a longer context or shorter summary sentences")
        return budget

    def chunk_source(self, source: str, hypothesis_tokens: int) -> list[str]:
        """The source as overlapping chunks of whole sentences that fit beside the hypothesis.

        Each chunk packs sentences greedily up to the window; the next chunk starts at the earliest of the
        chunk's trailing sentences that together hold at most `chunk_overlap` of the window (always at
        least one sentence further on), so consecutive chunks share those sentences. A sentence longer than
        the window is cut into token windows with the same overlap.
        """
        budget = self.window(hypothesis_tokens)
        overlap = int(budget * self.chunk_overlap)
        analysis = analyze(source)
        pieces: list[tuple[str, int]] = []
        for index in range(len(analysis.sentence_spans)):
            sentence = analysis.sentence_text(index)
            size = self._length(sentence)
            if size <= budget:
                pieces.append((sentence, size))
                continue
            ids = self.tokenizer(sentence, add_special_tokens=False)["input_ids"]
            stride = max(1, budget - overlap)
            for start in range(0, len(ids), stride):
                window = ids[start:start + budget]
                pieces.append((self.tokenizer.decode(window), len(window)))
                if start + budget >= len(ids):
                    break
        chunks: list[str] = []
        start = 0
        while start < len(pieces):
            end, used = start, 0
            while end < len(pieces) and (end == start or used + pieces[end][1] <= budget):
                used += pieces[end][1]
                end += 1
            chunks.append(" ".join(text for text, _ in pieces[start:end]))
            if end >= len(pieces):
                break
            nxt, shared = end, 0
            while nxt - 1 > start and shared + pieces[nxt - 1][1] <= overlap:
                nxt -= 1
                shared += pieces[nxt][1]
            start = nxt
        return chunks or [""]

    # scoring ------------------------------------------------------------------------------------
    def score_pairs(self, premises: list[str], hypotheses: list[str]) -> list[float]:
        """Probability that each hypothesis is supported by its premise."""
        scores: list[float] = []
        for start in range(0, len(premises), self.batch_size):
            batch_p = premises[start:start + self.batch_size]
            batch_h = hypotheses[start:start + self.batch_size]
            if self._predict is not None:
                scores.extend(float(s) for s in self._predict(list(zip(batch_p, batch_h))))
            elif self.family == "seq2seq":
                scores.extend(self._score_seq2seq(batch_p, batch_h))
            else:
                scores.extend(self._score_classifier(batch_p, batch_h))
        return scores

    def _score_classifier(self, premises: list[str], hypotheses: list[str]) -> list[float]:
        torch = self._torch
        batch = self.tokenizer(premises, hypotheses, padding=True, truncation="only_first",
                               max_length=self.max_length, return_tensors="pt")
        batch = {key: value for key, value in batch.items() if key in self._inputs}
        with torch.no_grad():
            logits = self.model(**batch).logits.float()
        if self.supported_label is None:
            return [float(p) for p in torch.sigmoid(logits[:, 0])]
        return [float(p) for p in torch.softmax(logits, dim=-1)[:, self.supported_label]]

    def seq2seq_prompt(self, premise: str, hypothesis: str) -> str:
        return self.template.format(premise=premise, hypothesis=hypothesis, eos=self.tokenizer.eos_token or " ")

    def _score_seq2seq(self, premises: list[str], hypotheses: list[str]) -> list[float]:
        torch = self._torch
        texts = [self.seq2seq_prompt(p, h) for p, h in zip(premises, hypotheses)]
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        decoder = torch.full((len(texts), 1), self.decoder_start, dtype=torch.long)
        with torch.no_grad():
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                decoder_input_ids=decoder).logits[:, 0, :].float()
        pair = logits[:, list(self.answer_ids)]  # (yes, no): a two-way softmax, as MiniCheck reads it
        return [float(p) for p in torch.softmax(pair, dim=-1)[:, 0]]

    def sentence_scores(self, source: str, summary: str) -> list[tuple[int, str, float]]:
        """(index, text, best-chunk support score) for every summary sentence."""
        return [(index, text, score) for index, text, score, _ in self._scored(source, summary)]

    def _scored(self, source: str, summary: str) -> list[tuple[int, str, float, int]]:
        analysis = analyze(summary)
        sentences = [(i, analysis.sentence_text(i)) for i in range(len(analysis.sentence_spans))]
        premises, hypotheses, owners, chunk_of = [], [], [], []
        for index, text in sentences:
            for number, chunk in enumerate(self.chunk_source(source, self._length(text))):
                premises.append(chunk)
                hypotheses.append(text)
                owners.append(index)
                chunk_of.append(number)
        scores = self.score_pairs(premises, hypotheses) if premises else []
        best: dict[int, tuple[float, int]] = {}
        for owner, number, score in zip(owners, chunk_of, scores):
            if owner not in best or score > best[owner][0]:
                best[owner] = (score, number)
        return [(index, text, best[index][0], best[index][1]) for index, text in sentences]

    def judge(self, source: str, summary: str, *, truncated: bool = False) -> Verdict:
        """Score each summary sentence; `truncated`: its cut-off last word is not judged."""
        checked = drop_truncated_word(summary) if truncated else summary
        scored = ((index, text, score, f"best support score {score:.3f} (source chunk {chunk + 1}) is below the "
                                       f"threshold {self.threshold:g}")
                  for index, text, score, chunk in self._scored(source, checked))
        return thresholded_verdict(self.name, analyze(checked).sentence_spans, scored, self.threshold,
                                   truncated=truncated)


def build(checkpoint: str | Path | None = None, **options: Any) -> NliJudge:
    """The registered builder (`faithforge.core.judge_registry`): `checkpoint` (a local folder or hub id) and
    optionally `threshold`, `supported_label`, `batch_size`, `trust_remote_code`."""
    if not checkpoint:
        raise UserError("the nli judge needs a checkpoint: pass the folder (or hub id) of a sequence-classification "
                        "model or seq2seq checker (e.g. --checkpoint PATH)")
    return NliJudge(checkpoint, **options)


def options_from_config(cfg, *, base_model: str | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """`build`'s keywords from the `evaluate` section, checked before any model runs."""
    if not cfg.nli_checkpoint:
        raise UserError("evaluate.judge includes nli but evaluate.nli_checkpoint is empty (the eval commands' "
                        "--checkpoint); set it to the folder (or hub id) of a sequence-classification or seq2seq "
                        "checker")
    options: dict[str, Any] = {"checkpoint": cfg.nli_checkpoint, "threshold": cfg.nli_threshold,
                               "supported_label": cfg.nli_supported_label}
    if getattr(cfg, "nli_trust_remote_code", False):  # an explicit opt-in only: it runs the checkpoint's code
        options["trust_remote_code"] = True
    return options
