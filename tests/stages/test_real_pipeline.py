"""The real SmolLM2-135M-Instruct through every stage — import, on-policy pairs, reference, DPO, evaluate — at
CI size (a handful of items; about 2-4 minutes on 2 idle cores), with `demo --real`'s settings otherwise."""

from __future__ import annotations

import pytest
from tests.fixtures.smollm2 import imported_smollm2

from faithforge.core.config import deep_merge, load_config
from faithforge.data.grounded_qa import SYSTEM_PROMPT
from faithforge.app.real_demo import CI_SETTINGS, REAL_SETTINGS


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~3-4 min on 2 idle cores; the limit leaves room for a loaded machine
def test_real_model_runs_every_stage(prefect_harness, tmp_path, tmp_path_factory):
    from faithforge.flows.pipeline import pipeline
    from faithforge.stages.pairs import load_pairs

    model = imported_smollm2(tmp_path_factory)
    cfg = load_config(None, base=deep_merge(REAL_SETTINGS, CI_SETTINGS),
                      overrides={"workspace": str(tmp_path / "ws"), "model": {"path": str(model)}}, environ={})
    stages = pipeline(cfg)["stages"]

    assert stages["warm_start"]["skipped"] and stages["warm_start"]["path"] == str(model)
    pairs = load_pairs(stages["pairs"]["train"]) + load_pairs(stages["pairs"]["val"])
    assert pairs and {p["kind"] for p in pairs} == {"on-policy"}
    for pair in pairs:  # the real task's prompt, and the model's own words on both sides
        assert pair["prompt"][0]["content"] == SYSTEM_PROMPT
        assert pair["prompt"][1]["content"].startswith("Document: ")
        assert pair["chosen"][0]["content"] != pair["rejected"][0]["content"]
    assert stages["reference"]["pairs"] == stages["pairs"]["counts"]["train"]
    assert stages["train"]["steps"] == CI_SETTINGS["train"]["steps"]  # passed the step-0 ln 2 check
    ev = stages["evaluate"]
    assert ev["items"] == CI_SETTINGS["generate"]["test_sources"]
    assert set(ev["models"]) == {"before", "after", "control"}
    from faithforge.engine.gguf_sampler import llama_cpp_available

    if llama_cpp_available():  # CI has it: all three models answered through llama.cpp on f16 files of their weights
        assert ev["sampler"].startswith("llama.cpp on ") and "written as f16" in ev["sampler"]
        kept = sorted(p.name for p in (tmp_path / "ws" / "cache" / "gguf").iterdir())
        assert len(kept) == 1 and kept[0] in ev["sampler"]  # the trained models' files are not kept
        assert kept[0] in stages["pairs"]["report"]["sampler"]  # the pairs were drawn from the same file
        assert not list((tmp_path / "ws" / "tmp").glob("gguf-evaluate-*"))
    for result in ev["models"].values():
        assert 0.0 <= result["rate"] <= 1.0
    report = open(ev["markdown_path"]).read()
    assert "unanswerable" in report or "answerable" in report  # per-category rates of the grounded-qa task
