"""A combination of judges fitted on human labels: logistic regression over what each judge measured.

`evaluate.judge: [likelihood, grounding]` with `evaluate.judge_rule: logistic` reads every judge's verdict as
features (`verdict_features`: its decision, its score and its named features, e.g. the likelihood judge's mean
log-probabilities), and decides "hallucinated" when the fitted probability reaches the threshold. The weights,
the feature scaling and the threshold are fitted on a development split of labels only
(`fit_combination`; `faithforge eval fit-combination`, or bench/judges_real_text.py on the QAGS
development half) and saved as JSON with where they came from; figures are then reported on held-out labels.

The fit is L2-regularized logistic regression by Newton's method (a handful of features, a few hundred rows: no
solver library needed); the threshold maximizes balanced accuracy on the development rows' probabilities.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from faithforge.core.errors import UserError
from faithforge.evaluation.verdict import Verdict


def verdict_features(verdict: Verdict) -> dict[str, float]:
    """Every number a (possibly combined) verdict carries, named `judge.what`: `judge.flagged` (0/1),
    `judge.score` when the judge has one, and `judge.<feature>` for its named features."""
    parts = verdict.parts or (verdict,)
    out: dict[str, float] = {}
    for part in parts:
        out[f"{part.judge}.flagged"] = 1.0 if part.hallucinated else 0.0
        out[f"{part.judge}.flags"] = float(len(part.flags))
        if part.score is not None:
            out[f"{part.judge}.score"] = float(part.score)
        for name, value in part.features.items():
            out[f"{part.judge}.{name}"] = float(value)
    return out


@dataclass(frozen=True)
class FittedCombination:
    """Logistic weights over named features, the scaling they were fitted with, and the decision threshold."""

    features: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float
    """Hallucinated when P(hallucinated) ≥ threshold (chosen for balanced accuracy on the fitting rows)."""
    fitted_on: dict[str, Any] = field(default_factory=dict)
    """Where the labels came from (file, split rule, counts): the report cites it."""

    def probability(self, values: dict[str, float]) -> float:
        """P(hallucinated) for one item's features; a feature the fit used but the item lacks is an error."""
        missing = [name for name in self.features if name not in values]
        if missing:
            raise UserError(f"the fitted judge combination needs {', '.join(missing)}, which the configured judges "
                            f"did not measure; configure the judges it was fitted on ({', '.join(self.judges)})")
        z = self.bias + sum(w * (values[name] - m) / s
                            for name, m, s, w in zip(self.features, self.means, self.scales, self.weights))
        return _sigmoid(z)

    @property
    def judges(self) -> list[str]:
        return sorted({name.split(".", 1)[0] for name in self.features})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        from faithforge.core.workspace import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FittedCombination":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            combo = cls(features=tuple(raw["features"]), means=tuple(map(float, raw["means"])),
                        scales=tuple(map(float, raw["scales"])), weights=tuple(map(float, raw["weights"])),
                        bias=float(raw["bias"]), threshold=float(raw["threshold"]),
                        fitted_on=dict(raw.get("fitted_on") or {}))
        except FileNotFoundError:
            raise UserError(f"judge combination {path} not found; fit one with `faithforge eval calibrate --rule "
                            f"logistic` or set evaluate.judge_rule to any") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"judge combination {path} is unreadable ({str(exc)[:120]}); fit it again") from None
        if not (len(combo.features) == len(combo.means) == len(combo.scales) == len(combo.weights)) or \
                not combo.features:
            raise UserError(f"judge combination {path}: features, means, scales and weights differ in length; "
                            f"fit it again")
        return combo


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def fit_combination(rows: Sequence[dict[str, float]], hallucinated: Sequence[bool], features: Sequence[str], *,
                    l2: float = 1.0, iterations: int = 50, fitted_on: dict[str, Any] | None = None
                    ) -> FittedCombination:
    """Fit P(hallucinated | features) on labeled rows (development labels only), then the threshold.

    `l2` penalizes the standardized weights (not the bias): with a few hundred rows it keeps a weak feature from
    taking a large weight by chance."""
    import numpy as np

    if len(rows) != len(hallucinated) or len(rows) < 4:
        raise UserError(f"fitting a judge combination needs at least 4 labeled rows with features ({len(rows)} given)")
    if len(set(hallucinated)) < 2:
        raise UserError("fitting a judge combination needs both faithful and hallucinated labels")
    names = list(features)
    missing = sorted({n for r in rows for n in names if n not in r})
    if missing:
        raise UserError(f"feature(s) {', '.join(missing)} missing from some labeled rows; every row needs every feature")
    x = np.array([[r[n] for n in names] for r in rows], dtype=float)
    y = np.array([1.0 if h else 0.0 for h in hallucinated])
    means, scales = x.mean(axis=0), x.std(axis=0)
    scales[scales < 1e-12] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - means) / scales])
    theta = np.zeros(z.shape[1])
    penalty = np.eye(z.shape[1]) * l2
    penalty[0, 0] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z @ theta)))
        gradient = z.T @ (p - y) + penalty @ theta
        hessian = (z.T * (p * (1 - p))) @ z + penalty + np.eye(z.shape[1]) * 1e-9
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    probabilities = 1.0 / (1.0 + np.exp(-(z @ theta)))
    threshold = best_balanced_threshold(probabilities.tolist(), [bool(v) for v in y])
    return FittedCombination(features=tuple(names), means=tuple(means.tolist()), scales=tuple(scales.tolist()),
                             weights=tuple(theta[1:].tolist()), bias=float(theta[0]), threshold=threshold,
                             fitted_on=dict(fitted_on or {}, rows=len(rows), hallucinated=int(y.sum()), l2=l2))


def best_balanced_threshold(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """The cut (positive when score ≥ cut) that maximizes balanced accuracy on these rows; ties → the midpoint
    of the widest gap, so a threshold is never placed on a score it was fitted on."""
    pairs = sorted(zip(scores, positive))
    n_pos = sum(positive)
    n_neg = len(pairs) - n_pos
    if not n_pos or not n_neg:
        raise UserError("choosing a threshold needs both labels among the rows")
    best, best_cut = -1.0, pairs[0][0] - 1e-6
    below_pos = below_neg = 0
    for i in range(len(pairs) + 1):
        if i == 0 or i == len(pairs) or pairs[i][0] != pairs[i - 1][0]:
            cut = pairs[0][0] - 1e-6 if i == 0 else (pairs[-1][0] + 1e-6 if i == len(pairs) else
                                                      (pairs[i - 1][0] + pairs[i][0]) / 2)
            tpr = (n_pos - below_pos) / n_pos
            tnr = below_neg / n_neg
            if (tpr + tnr) / 2 > best:
                best, best_cut = (tpr + tnr) / 2, cut
        if i < len(pairs):
            below_pos += pairs[i][1]
            below_neg += not pairs[i][1]
    return float(best_cut)


__all__ = ["FittedCombination", "best_balanced_threshold", "fit_combination", "verdict_features"]
