"""A judge's measured accuracy: threshold chosen on one split of the labels, accuracy reported on the other.

`calibrate_heldout` splits the labels (by each row's `split` field when every row has one, else by a hash
of the source so a source never sits on both sides), chooses the judge's threshold on the validation
split where it has one (nli: the support score below which a sentence is flagged), and reports
precision, recall and balanced accuracy on the test split, overall and per `dataset` subset.

`choose_judge` calibrates several judges on the same labels and chooses the one that does best on the
validation split.

The result is stored in the workspace (`calibrations/<judge>-<checkpoint digest>.json`) and attached to
every report that uses the same judge and checkpoint; a report whose judge has none says so first.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from faithforge.core.errors import UserError
from faithforge.evaluation.calibration import CalibrationReport, LabeledExample, best_threshold, confusion_report
from faithforge.evaluation.combined import CombinedJudge
from faithforge.evaluation.verdict import Judge
from faithforge.core.workspace import atomic_write_json


def judge_checkpoint(judge: Judge) -> str:
    """What identifies a judge's behaviour besides its name: a checkpoint, a served model, or the rules, and the
    settings of a judge that has its own (`evaluate.judge_options`; `max_words=3` and `max_words=9` are two judges,
    each with its own stored calibration)."""
    if isinstance(judge, CombinedJudge):
        return "+".join(judge_checkpoint(j) for j in judge.judges)
    from faithforge.evaluation.judges import own_settings_of

    checkpoint = getattr(judge, "checkpoint", None)
    named = str(checkpoint) if checkpoint else f"{judge.name}-rules"
    settings = own_settings_of(judge)
    if settings is None:
        return named
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{named}-settings-{digest}"


def split_examples(examples: Sequence[LabeledExample], *, holdout: float = 0.5,
                   seed: int = 0) -> tuple[list[LabeledExample], list[LabeledExample]]:
    """(validation, test). Rows' own `split` fields win when every row has one; otherwise a row goes to
    test when the hash of (seed, source) falls below `holdout`, so one source never sits on both sides."""
    with_split = sum(1 for e in examples if e.split)
    if 0 < with_split < len(examples):
        raise UserError(f"{with_split} of {len(examples)} label rows have a split field and the others do not; give "
                        f"every row a split (validation or test) or none (rows are then split by source)")
    if with_split:
        validation = [e for e in examples if e.split == "validation"]
        test = [e for e in examples if e.split == "test"]
    else:
        if not 0.0 < holdout < 1.0:
            raise UserError(f"--holdout is the share of labels kept for the report, in (0, 1) (got {holdout})")

        def share(source: str) -> float:
            digest = hashlib.sha256(f"{seed}\0{source}".encode()).digest()
            return int.from_bytes(digest[:8], "big") / 2 ** 64

        test = [e for e in examples if share(e.source) < holdout]
        validation = [e for e in examples if share(e.source) >= holdout]
    for name, part in (("validation", validation), ("test", test)):
        positives = sum(e.hallucinated for e in part)
        if positives in (0, len(part)):
            raise UserError(f"the {name} split has {len(part)} labels, {positives} hallucinated: it needs both "
                            f"kinds; add labels, change --split-seed/--holdout, or set each row's split field")
    return validation, test


def _thresholded(judge: Judge) -> list[Any]:
    parts = judge.judges if isinstance(judge, CombinedJudge) else [judge]
    return [j for j in parts if hasattr(j, "sentence_scores") and hasattr(j, "threshold")]


def _summary_score(judge: Any, example: LabeledExample) -> float:
    return min((s for _, _, s in judge.sentence_scores(example.source, example.summary)), default=1.0)


@dataclass(frozen=True)
class HeldOutCalibration:
    """A judge's accuracy on held-out labels, with the thresholds chosen on the validation split."""

    judge: str
    checkpoint: str
    labels: str
    labels_sha256: str
    validation: int
    test: CalibrationReport
    thresholds: dict[str, float] = field(default_factory=dict)
    per_subset: dict[str, CalibrationReport] = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"judge": self.judge, "checkpoint": self.checkpoint, "labels": self.labels,
                "labels_sha256": self.labels_sha256, "validation": self.validation, "test": self.test.to_dict(),
                "thresholds": dict(self.thresholds),
                "per_subset": {k: v.to_dict() for k, v in self.per_subset.items()}, "created": self.created}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeldOutCalibration":
        return cls(judge=data["judge"], checkpoint=data["checkpoint"], labels=data["labels"],
                   labels_sha256=data["labels_sha256"], validation=int(data["validation"]),
                   test=CalibrationReport(**data["test"]), thresholds=dict(data.get("thresholds") or {}),
                   per_subset={k: CalibrationReport(**v) for k, v in (data.get("per_subset") or {}).items()},
                   created=str(data.get("created", "")))

    def summary_line(self) -> str:
        t = self.test

        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2f}"

        thresholds = ", ".join(f"{k} threshold {v:.3f}" for k, v in sorted(self.thresholds.items()))
        return (f"judge `{self.judge}` ({self.checkpoint}) measured on {t.n} held-out labels from "
                f"{Path(self.labels).name}: balanced accuracy {pct(t.balanced_accuracy)}, precision "
                f"{pct(t.precision)}, recall {pct(t.recall)}" + (f"; {thresholds}" if thresholds else "")
                + f" (chosen on {self.validation} validation labels)")


def calibrate_heldout(judge: Judge, examples: Sequence[LabeledExample], *, labels_path: str | Path,
                      holdout: float = 0.5, seed: int = 0) -> HeldOutCalibration:
    """Choose thresholds on the validation split, set them on the judge, report on the test split."""
    validation, test = split_examples(examples, holdout=holdout, seed=seed)
    thresholds = _fit_thresholds(judge, validation)
    truth, predicted = _judged(judge, test)
    single = next(iter(thresholds.values())) if len(thresholds) == 1 else None
    report = confusion_report(judge.name, truth, predicted, threshold=single)
    subsets: dict[str, CalibrationReport] = {}
    for name in sorted({e.dataset for e in test if e.dataset}):
        idx = [i for i, e in enumerate(test) if e.dataset == name]
        subsets[name] = confusion_report(judge.name, [truth[i] for i in idx], [predicted[i] for i in idx],
                                         threshold=single)
    path = Path(labels_path)
    return HeldOutCalibration(judge=judge.name, checkpoint=judge_checkpoint(judge), labels=str(path.resolve()),
                              labels_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                              validation=len(validation), test=report, thresholds=thresholds, per_subset=subsets,
                              created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _fit_thresholds(judge: Judge, validation: Sequence[LabeledExample]) -> dict[str, float]:
    thresholds: dict[str, float] = {}
    for part in _thresholded(judge):  # nli, likelihood, trained: its own best threshold on validation labels only
        scores = [_summary_score(part, e) for e in validation]
        part.threshold = best_threshold(scores, [e.hallucinated for e in validation])
        thresholds[part.name] = part.threshold
    return thresholds


def _judged(judge: Judge, examples: Sequence[LabeledExample]) -> tuple[list[bool], list[bool | None]]:
    """(labels, the judge's verdicts) with None where the judge could not judge."""
    predicted: list[bool | None] = []
    for example in examples:
        verdict = judge.judge(example.source, example.summary)
        predicted.append(verdict.hallucinated if verdict.judgeable else None)
    return [e.hallucinated for e in examples], predicted


@dataclass(frozen=True)
class JudgeChoice:
    """Several judges calibrated on the same labels; the one with the best balanced accuracy on the VALIDATION
    split is chosen, so the held-out figures of every candidate (and of the chosen one) stay unbiased."""

    chosen: str
    """The chosen judge's name."""
    validation_balanced_accuracy: dict[str, float | None]
    """Judge name → balanced accuracy on the validation split at the threshold chosen there (the choosing figure)."""
    calibrations: dict[str, HeldOutCalibration]
    """Judge name → its thresholds and held-out figures, as `calibrate_heldout` gives them."""


def choose_judge(judges: Sequence[Judge], examples: Sequence[LabeledExample], *, labels_path: str | Path,
                 holdout: float = 0.5, seed: int = 0) -> JudgeChoice:
    """Calibrate each judge on the validation split and choose the best there; report every one on the test split.

    On real news the best family depends on the kind of text (QAGS development half: the likelihood judge's
    source-conditioned score on CNN/DM, the trained judge on XSum; BENCHMARKS.md, judges on real text), so a
    user's own labels, not a global default, should pick the judge for their documents."""
    if len(judges) < 2:
        raise UserError("choosing a judge needs two or more candidates: repeat --judge")
    validation, _ = split_examples(examples, holdout=holdout, seed=seed)
    on_validation: dict[str, float | None] = {}
    calibrations: dict[str, HeldOutCalibration] = {}
    for judge in judges:
        calibration = calibrate_heldout(judge, examples, labels_path=labels_path, holdout=holdout, seed=seed)
        truth, predicted = _judged(judge, validation)  # at the thresholds just chosen on these rows
        on_validation[judge.name] = confusion_report(judge.name, truth, predicted).balanced_accuracy
        calibrations[judge.name] = calibration
    ranked = [name for name, value in on_validation.items() if value is not None]
    if not ranked:
        raise UserError("no candidate judge could judge the validation labels; check the judges' settings")
    chosen = max(ranked, key=lambda name: on_validation[name])  # ties: the first named
    return JudgeChoice(chosen=chosen, validation_balanced_accuracy=on_validation, calibrations=calibrations)


def calibration_file(directory: str | Path, judge_name: str, checkpoint: str) -> Path:
    digest = hashlib.sha256(checkpoint.encode()).hexdigest()[:12]
    return Path(directory) / f"{judge_name.replace('+', '_')}-{digest}.json"


def save_calibration(directory: str | Path, calibration: HeldOutCalibration) -> Path:
    """Store the calibration where reports of this judge and checkpoint read it; one that judged no held-out label
    (a server that never answered) is refused, so it never replaces a real one."""
    if calibration.test.n and calibration.test.unjudgeable == calibration.test.n:
        raise UserError(f"the {calibration.judge} judge could judge none of the {calibration.test.n} held-out labels "
                        f"(each one unjudgeable); nothing was stored, so an earlier calibration stays: check the "
                        f"judge's server or model and run again")
    return atomic_write_json(calibration_file(directory, calibration.judge, calibration.checkpoint),
                             calibration.to_dict())


def load_calibration(directory: str | Path | None, judge_name: str, checkpoint: str) -> HeldOutCalibration | None:
    """The stored calibration of this judge and checkpoint, or None (no file, or an unreadable one)."""
    if directory is None:
        return None
    path = calibration_file(directory, judge_name, checkpoint)
    if not path.is_file():
        return None
    try:
        return HeldOutCalibration.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def calibrations_for(directory: str | Path | None, judge: Judge) -> dict[str, dict[str, Any] | None]:
    """Stored calibration (as a dict) of the judge and of each judge it combines; None where there is none."""
    judges = [judge] + (judge.judges if isinstance(judge, CombinedJudge) else [])
    out: dict[str, dict[str, Any] | None] = {}
    for j in judges:
        found = load_calibration(directory, j.name, judge_checkpoint(j))
        out[j.name] = found.to_dict() if found else None
    return out


__all__ = ["HeldOutCalibration", "calibrate_heldout", "calibration_file", "calibrations_for", "judge_checkpoint",
           "load_calibration", "save_calibration", "split_examples"]
