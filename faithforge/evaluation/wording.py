"""The words a run's outputs use for what it judges, from one place: the terminal, `report.md`, the Prefect
report and the dataset's folder name all read `task_words(config)`.

A `grounded-qa` run judges answers to questions and its recall is answer accuracy; the toy task and the user's
own documents judge summaries and their recall is key-fact recall. Before this, a question-answering run was
written to `datasets/summaries-…` and reported per "summary" with a "fact recall" column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TaskWords:
    unit: str
    """One judged output, singular ("summary", "answer")."""
    units: str
    """Plural, for "rates are shares of judged …"."""
    recall: str
    """The name of the recall column (what a higher value means for this task)."""
    dataset: str
    """The stem of the dataset folder under `datasets/`."""
    rule: str
    """When one output counts as hallucinated, in a sentence."""


SUMMARIES = TaskWords("summary", "summaries", "key-fact recall", "summaries",
                      "a summary counts as hallucinated when at least one of its sentences states something the "
                      "source does not support")
WORDS: dict[str, TaskWords] = {
    "summaries": SUMMARIES,
    "grounded-qa": TaskWords("answer", "answers", "answer recall (key fact of an answerable question)", "questions",
                             "an answer counts as hallucinated when it states something its document does not "
                             "support (e.g. a day, count or city the document never gives)"),
    "documents": SUMMARIES,
}
"""Task name → its words. `documents`: the user's own documents (`data.documents_path`), summarized."""


def task_name(config: Any) -> str:
    """The task a pipeline config runs: `documents` when the sources are the user's files, else
    `generate.task`."""
    return "documents" if getattr(config.data, "documents_path", None) else config.generate.task


def task_words(config: Any) -> TaskWords:
    return WORDS[task_name(config)]
