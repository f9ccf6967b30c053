"""Judging split into chunks that can run anywhere (threads, Dask worker processes), with the same result as one
serial pass. No Prefect here: `tasks/judging.py` maps `judge_chunk` as Prefect tasks on the configured task runner.

A chunk carries the judge's *spec* (`{"name", "options"}`, what `get_judge` builds from), not the judge object: a
worker process builds the judge once and keeps it for every later chunk it gets. Each item is judged alone
(`judge_item`), and the chunks are put back in item order, so the report is the serial one.
"""

from __future__ import annotations

import copy
import json
import threading
from typing import Any, Callable, Sequence

from faithforge.evaluation.compare import judge_item
from faithforge.evaluation.items import EvalItem
from faithforge.evaluation.results import ItemResult

#: spec key → the judge this process built for it.
_JUDGES: dict[str, Any] = {}
_LOCK = threading.Lock()

#: One chunk of work: (judge spec, items, summaries, truncation flags).
Chunk = tuple[dict, list[EvalItem], list[str], list[bool]]
#: What runs the chunks (serially, or mapped as Prefect tasks) and returns their results in chunk order.
ChunkMapper = Callable[[list[Chunk]], list[list[ItemResult]]]


def spec_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, default=repr)


def judge_for(spec: dict):
    """The judge `spec` describes, built once per process (judges with models load them once)."""
    key = spec_key(spec)
    with _LOCK:
        if key not in _JUDGES:
            from faithforge.evaluation.judges import get_judge

            _JUDGES[key] = get_judge(spec["name"], **copy.deepcopy(spec.get("options") or {}))
        return _JUDGES[key]


def judge_chunk(spec: dict, items: Sequence[EvalItem], summaries: Sequence[str],
                truncated: Sequence[bool]) -> list[ItemResult]:
    """Judge one chunk of items (what one mapped task runs)."""
    judge = judge_for(spec)
    return [judge_item(judge, item, summary, cut) for item, summary, cut in zip(items, summaries, truncated)]


def make_chunks(spec: dict, items: Sequence[EvalItem], summaries: Sequence[str], truncated: Sequence[bool] | None,
                size: int) -> list[Chunk]:
    """The items in consecutive chunks of `size` (the last one shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")
    cut = list(truncated) if truncated is not None else [False] * len(summaries)
    return [(spec, list(items[i:i + size]), list(summaries[i:i + size]), cut[i:i + size])
            for i in range(0, len(items), size)]


def judge_all(spec: dict, items: Sequence[EvalItem], summaries: Sequence[str], truncated: Sequence[bool] | None,
              *, size: int, mapper: ChunkMapper | None = None) -> list[ItemResult]:
    """Every item judged, chunk by chunk through `mapper` (None: serially here), back in item order."""
    chunks = make_chunks(spec, items, summaries, truncated, size)
    done = mapper(chunks) if mapper is not None else [judge_chunk(*chunk) for chunk in chunks]
    if len(done) != len(chunks):
        raise RuntimeError(f"{len(chunks)} judging chunks sent, {len(done)} came back")
    return [result for chunk in done for result in chunk]
