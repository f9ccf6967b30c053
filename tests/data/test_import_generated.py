"""LLM-generated examples (the generation flow's export) become the pipeline's train/val/test splits."""

import hashlib
import json

import pytest

from faithforge.core.config import load_config
from faithforge.core.errors import UserError
from faithforge.generation.job import ExportedExamples
from faithforge.stages.context import StageContext
from faithforge.stages.generate import import_generated, load_split
from faithforge.data.teacher import make_example


def _export(path, n):
    rows = []
    for i in range(n):
        e = make_example("generated", i, 7, 0.5)
        rows.append({"spec": "grounded-summaries", "category": e.category, "params": {"i": i},
                     "content_hash": hashlib.sha256(e.source.encode() + bytes([i % 256, i // 256])).hexdigest(), "data": {"source_document": e.source, "summary": e.faithful,
                                                            "key_facts": list(e.key_facts),
                                                            "hallucinated_summary": e.hallucinated}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ExportedExamples(path=str(path), examples=n)


def _ctx(tmp_path):
    cfg = load_config(None, overrides={"workspace": str(tmp_path / "ws"),
                                       "generate": {"backend": "ollama", "val_share": 0.1, "test_share": 0.2}},
                      environ={})
    return StageContext.open(cfg)


def test_export_is_split_deterministically_and_reused(tmp_path):
    ctx = _ctx(tmp_path)
    export = _export(tmp_path / "export.jsonl", 300)
    first = import_generated(ctx, export)
    assert sum(first.counts.values()) == 300 and not first.reused
    assert 30 < first.counts["test"] < 90 and 10 < first.counts["val"] < 55
    test = load_split(first, "test")
    assert test[0].facts is None and test[0].key_facts and test[0].hallucinated
    train_ids = {e.id for e in load_split(first, "train")}
    assert not train_ids & {e.id for e in test}
    again = import_generated(ctx, export)
    assert again.reused and again.counts == first.counts

    # A top-up (more lines) never moves an earlier example out of the test split.
    bigger = import_generated(ctx, _export(tmp_path / "export2.jsonl", 400))
    test_after = {e.id for e in load_split(bigger, "test")}
    assert {e.id for e in test} <= test_after


def test_rows_without_the_required_fields_are_named(tmp_path):
    ctx = _ctx(tmp_path)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"content_hash": "ab" * 32, "data": {"summary": "x"}}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl: line 1 lacks source_document, key_facts"):
        import_generated(ctx, ExportedExamples(path=str(path), examples=1))
