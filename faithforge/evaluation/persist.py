"""Store evaluation reports in the run store and compare two stored evaluations."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select

from faithforge.core.errors import UserError
from faithforge.evaluation.results import ComparisonReport
from faithforge.core.store import Artifact, Store

ARTIFACT_KIND = "evaluation"


def save_evaluation(store: Store, report: ComparisonReport, *, uri: str, run_id: str | None = None,
                    parents: list[str] | tuple[str, ...] = (), control: ComparisonReport | None = None) -> str:
    """Record the report as an `evaluation` artifact (report dict in `meta`); returns the artifact id."""
    meta: dict[str, Any] = {"report": report.to_dict()}
    if control is not None:
        meta["control"] = control.to_dict()
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    return store.add_artifact(ARTIFACT_KIND, uri, digest, run_id=run_id, meta=meta, parents=parents)


def load_evaluation(store: Store, reference: str) -> tuple[str, ComparisonReport]:
    """The evaluation with this artifact id, or the newest one of the run with this id."""
    artifact = store.artifact(reference)
    if artifact is None:
        with store.session() as session:
            artifact = session.scalars(select(Artifact).where(Artifact.run_id == reference,
                                                              Artifact.kind == ARTIFACT_KIND)
                                       .order_by(Artifact.created_at.desc())).first()
    if artifact is None or artifact.kind != ARTIFACT_KIND:
        what = f"a {artifact.kind} artifact" if artifact is not None else "unknown"
        raise UserError(f"{reference!r} is {what}, not an evaluation; pass the id of an evaluation artifact "
                        f"or of a run that produced one")
    if "report" not in (artifact.meta or {}):
        raise UserError(f"evaluation artifact {artifact.id} holds no report; re-run the evaluation stage")
    return artifact.id, ComparisonReport.from_dict(artifact.meta["report"])


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def compare_runs(store: Store, artifact_a: str, artifact_b: str) -> dict[str, Any]:
    """How two stored evaluations differ: the after-model rates, recall and improvement, B − A.

    Warns (in `warnings`) when the two used different judges or item sets, since their numbers are then
    not directly comparable.
    """
    id_a, a = load_evaluation(store, artifact_a)
    id_b, b = load_evaluation(store, artifact_b)
    if id_a == id_b:  # a table of zeros said nothing of it (an attack, 2026-12-07); a run id names its evaluation
        named = "" if artifact_a == artifact_b else f", named {artifact_a!r} and {artifact_b!r}"
        raise UserError(f"A and B are the same evaluation ({id_a}{named}); pass two different evaluations or runs")
    warnings = []
    if a.judge != b.judge:
        warnings.append(f"different judges ({a.judge} vs {b.judge}): rates are not directly comparable")
    elif None not in (a.after.judge_checkpoint, b.after.judge_checkpoint) and \
            a.after.judge_checkpoint != b.after.judge_checkpoint:  # same name, another checkpoint or other settings
        warnings.append(f"the judge {a.judge} differs ({a.after.judge_checkpoint} vs {b.after.judge_checkpoint}): "
                        "rates are not directly comparable")
    if [i.id for i in a.after.items] != [i.id for i in b.after.items]:
        warnings.append("different evaluation items: differences include sampling of items")
    rows = []
    for name, get in [
        ("before rate", lambda r: r.before.rate), ("after rate", lambda r: r.after.rate),
        ("rate difference", lambda r: r.rate.difference), ("before recall", lambda r: r.before.recall),
        ("after recall", lambda r: r.after.recall), ("after sentence rate", lambda r: r.after.sentence_rate),
        ("McNemar p", lambda r: r.mcnemar_p),
    ]:
        rows.append({"metric": name, "a": get(a), "b": get(b), "b_minus_a": _delta(get(a), get(b))})
    return {"a": id_a, "b": id_b, "judge_a": a.judge, "judge_b": b.judge, "n_a": a.n_paired, "n_b": b.n_paired,
            "rate_ci_a": [a.rate.ci_low, a.rate.ci_high], "rate_ci_b": [b.rate.ci_low, b.rate.ci_high],
            "rows": rows, "warnings": warnings}
