"""Calibration correction factors: measured peak ÷ predicted peak, per (GPU name, model, stage).

Pure data; reading and writing the JSON file is `faithforge/gpu_calibration/calibrate.py`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from faithforge.gpu.estimate import ESTIMATE_REVISION

#: The stages the gate plans, listed once: the planner's `Stage`, the pipeline's gate and the calibration keys read it.
STAGES = ("generate", "reference", "train", "evaluate", "warm_start")


def correction_key(gpu_name: str, model: str, stage: str) -> str:
    return f"{gpu_name}|{model}|{stage}"


@dataclass(frozen=True)
class Corrections:
    """`factors[correction_key(...)]` multiplies the estimate; missing keys mean 1.0 (uncalibrated)."""

    factors: dict[str, float] = field(default_factory=dict)
    estimate_revision: int = field(default_factory=lambda: ESTIMATE_REVISION)
    """The `ESTIMATE_REVISION` the factors were measured against (files written before it was recorded: 1)."""

    @property
    def current(self) -> bool:
        """Measured against this FaithForge's estimates (else its factors must not be applied)."""
        return self.estimate_revision == ESTIMATE_REVISION

    def factor(self, gpu_name: str, model: str, stage: str) -> float:
        return float(self.factors.get(correction_key(gpu_name, model, stage), 1.0))

    def with_factor(self, gpu_name: str, model: str, stage: str, factor: float) -> "Corrections":
        if not factor > 0:
            raise ValueError(f"a correction factor must be positive, got {factor!r}")
        kept = self.factors if self.current else {}  # factors of older estimates are not carried into a new file
        return Corrections({**kept, correction_key(gpu_name, model, stage): float(factor)})

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "estimate_revision": self.estimate_revision, "factors": dict(sorted(self.factors.items()))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Corrections":
        factors = data.get("factors") if isinstance(data, Mapping) else None
        if not isinstance(factors, Mapping):
            raise ValueError('calibration data must be {"version": 1, "estimate_revision": <n>, "factors": '
                             '{"<gpu>|<model>|<stage>": <factor>}}')
        out: dict[str, float] = {}
        for key, value in factors.items():
            if str(key).count("|") != 2 or str(key).rsplit("|", 1)[1] not in STAGES:
                raise ValueError(f"calibration key {key!r} must be '<gpu name>|<model>|<stage>' with stage in {STAGES}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"calibration factor for {key!r} must be a positive number, got {value!r}")
            out[str(key)] = float(value)
        revision = data.get("estimate_revision", 1)
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
            raise ValueError(f"estimate_revision must be a positive whole number, got {revision!r}")
        return cls(out, revision)
