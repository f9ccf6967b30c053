"""Hallucination evaluation: judges, metrics, before/after comparisons, calibration and reports.

Plain Python (no Prefect): the pipeline's tasks call `evaluate_pair` / `evaluate_single` /
`compare_reports`, the CLI calls calibration and `compare_runs`. The `nli` judge imports transformers
only when it is built.
"""

from faithforge.evaluation.compare import compare_reports, evaluate_pair, evaluate_single
from faithforge.evaluation.grounding import GroundingJudge
from faithforge.evaluation.items import EvalItem, check_disjoint
from faithforge.evaluation.judges import DEFAULT_JUDGE, get_judge
from faithforge.evaluation.persist import compare_runs, load_evaluation, save_evaluation
from faithforge.evaluation.report import bar_chart, markdown_report, table_rows
from faithforge.evaluation.results import ComparisonReport, ItemResult, ModelReport
from faithforge.evaluation.verdict import Flag, Judge, SentenceResult, Verdict

__all__ = [
    "DEFAULT_JUDGE", "ComparisonReport", "EvalItem", "Flag", "GroundingJudge", "ItemResult", "Judge",
    "ModelReport", "SentenceResult", "Verdict", "check_disjoint", "compare_reports", "evaluate_pair",
    "evaluate_single", "get_judge", "compare_runs", "load_evaluation", "save_evaluation", "bar_chart",
    "markdown_report", "table_rows",
]
