"""Judging fanned out as mapped Prefect tasks — on a real Dask LocalCluster of 2 worker processes and on a thread
pool — gives exactly the serial report (rates, intervals, every item), for a single judge and a judge list."""

from __future__ import annotations

import pytest

from faithforge.core.config import load_config
from faithforge.data.teacher import generate_split
from faithforge.evaluation import EvalItem
from faithforge.evaluation.compare import evaluate_single
from faithforge.evaluation.fanout import judge_all, make_chunks


def _items_and_summaries(n: int = 40):
    examples = list(generate_split("test", n, 5, 0.5))
    items = [EvalItem(id=e.id, source=e.source, key_facts=list(e.key_facts), category=e.category,
                      reference=e.faithful or None) for e in examples]
    # Half faithful, half with an invented detail: the judge has something to find.
    summaries = [e.faithful if i % 2 else (e.faithful + " It happened in Lisbon on Friday.")
                 for i, e in enumerate(examples)]
    return items, summaries


def test_chunks_cover_every_item_once_in_order():
    items, summaries = _items_and_summaries(7)
    chunks = make_chunks({"name": "grounding"}, items, summaries, None, 3)
    assert [len(c[1]) for c in chunks] == [3, 3, 1]
    assert [i.id for c in chunks for i in c[1]] == [i.id for i in items]
    with pytest.raises(ValueError, match="chunk size"):
        make_chunks({"name": "grounding"}, items, summaries, None, 0)


@pytest.mark.parametrize("judge", ["grounding", ["grounding", "grounded-qa"]])
def test_serial_chunks_equal_one_pass(judge):
    items, summaries = _items_and_summaries()
    serial = evaluate_single(items, summaries, judge, label="m")
    chunked = evaluate_single(items, summaries, judge, label="m",
                              results=judge_all({"name": judge, "options": {}}, items, summaries, None, size=7))
    assert chunked.model_dump() == serial.model_dump()
    assert 0 < serial.rate < 1


@pytest.mark.timeout(600)
@pytest.mark.parametrize("runner", ["dask", "threads"])
def test_mapped_prefect_tasks_give_the_serial_report(prefect_harness, runner):
    from faithforge.tasks.judging import judging_mapper

    items, summaries = _items_and_summaries()
    cut = [i % 5 == 0 for i in range(len(items))]
    cfg = load_config(None, environ={}, overrides={"distributed": {"judge_runner": runner, "judge_workers": 2,
                                                                   "judge_chunk": 6}})
    mapper = judging_mapper(cfg)
    spec = {"name": "grounding", "options": {}}
    results = judge_all(spec, items, summaries, cut, size=cfg.distributed.judge_chunk, mapper=mapper)
    fanned = evaluate_single(items, summaries, "grounding", label="m", truncated=cut, results=results)
    serial = evaluate_single(items, summaries, "grounding", label="m", truncated=cut)
    assert fanned.model_dump() == serial.model_dump()
    assert (fanned.rate, fanned.rate_ci, fanned.hallucinated) == (serial.rate, serial.rate_ci, serial.hallucinated)


def test_serial_runner_maps_nothing_and_a_bad_runner_is_refused():
    from faithforge.core.errors import ConfigError
    from faithforge.tasks.judging import JUDGE_RUNNERS, judging_mapper

    assert judging_mapper(load_config(None, environ={})) is None
    assert set(JUDGE_RUNNERS) == {"threads", "dask"}
    with pytest.raises(ConfigError, match="judge_runner"):
        load_config(None, environ={}, overrides={"distributed": {"judge_runner": "processes"}})
