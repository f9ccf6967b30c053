"""When on-policy pairs from your documents come out empty, the message says so and what to change (issue 25,
item 3's message): it said "no preference pairs to score; run the pairs stage first", and there is no separate
pairs stage to run. (The crash at evaluate in the same setup belongs to the real-documents work.)"""

from __future__ import annotations

import json

import pytest

from faithforge.core.errors import UserError


def test_no_on_policy_pairs_from_documents_says_why_and_what_to_change(tiny_model_dir, tmp_path):
    from faithforge.core.config import load_config
    from faithforge.stages.context import StageContext
    from faithforge.stages.gate import gate
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.outputs import ModelOutput
    from faithforge.stages.pairs import build_pairs

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"document": f"Ann {i} painted the fence on Monday in Oslo."}) + "\n"
                            for i in range(30)))
    cfg = load_config(None, environ={}, overrides={
        "workspace": str(tmp_path / "ws"), "model": {"path": str(tiny_model_dir)},
        "data": {"documents_path": str(docs)}, "warm_start": {"enabled": False},
        # no two samples can differ by 100 points: the builder makes no pair, as it did on the real documents
        "pairs": {"builder": "on-policy", "samples_per_source": 2, "margin": 100.0},
        "evaluate": {"max_new_tokens": 4}})
    ctx = StageContext.open(cfg)
    dataset = generate_examples(ctx)
    with pytest.raises(UserError) as err:
        build_pairs(ctx, dataset, ModelOutput(path=str(tiny_model_dir)), gate(ctx, "evaluate"))
    message = str(err.value)
    assert "made no training pair" in message and "pairs.margin" in message
    assert "run the pairs stage first" not in message
