"""Every documents configuration runs to the end or is refused before any work, with one line.

The matrix: `data.documents_path` / `data.eval_path` / `data.key_facts_column` present or not × `pairs.builder` ×
`warm_start.enabled` × `control.sft_on_chosen` (64 cells). The documents are real news: 16 CNN/DailyMail articles
of the development half of the QAGS labels (bench/data/qags-human-labels.jsonl, `label_split` → `dev`), each cut
to its first sentences (at most 40 words) so the tiny model's 128 positions hold them; `key_facts` are the two
longest content words of each article's first sentence (a column to read, not a claim about the article). The
model is the tiny random-init Llama with those articles' words in its vocabulary (your own model, warm start
off, as a user of `data.documents_path` has it); without documents the cells run the template task.

The stages are the ones the Prefect tasks call (tests/fixtures/inprocess_pipeline.py), in one process and one workspace:
cells that share a stage's inputs share its output (keyed by content), so the matrix costs what its distinct
stages cost. `on-policy` pairs use `pairs.margin: 0` here: a random model's samples rarely differ by a whole
verdict, and the matrix tests what the configuration does, not what pairs a random model earns.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from tests.fixtures.inprocess_pipeline import run_stages

from faithforge.core.config import deep_merge, load_config
from faithforge.core.errors import UserError

DATA = Path(__file__).parents[1] / "data"
DOCUMENTS = DATA / "qags-dev-short.jsonl"
HELD_OUT = DATA / "qags-dev-short-eval.jsonl"

SMALL = {
    "generate": {"train_sources": 12, "val_sources": 10, "test_sources": 10, "val_share": 0.2, "test_share": 0.3},
    "warm_start": {"steps": 4, "batch_size": 8, "checkpoint_every": 4},
    "reference": {"shard_size": 64},
    "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2},
    "evaluate": {"bootstrap_samples": 100, "max_new_tokens": 8},
    "pairs": {"samples_per_source": 2, "margin": 0.0},
}

AXES = ("documents", "eval", "key_facts", "builder", "warm", "control")
CELLS = list(itertools.product([True, False], [True, False], [True, False], ["on-policy", "synthetic"],
                               [True, False], [True, False]))


def _cell_id(cell) -> str:
    docs, ev, kf, builder, warm, control = cell
    return "-".join([f"docs{int(docs)}", f"eval{int(ev)}", f"kf{int(kf)}", builder, f"warm{int(warm)}",
                     f"ctl{int(control)}"])


def _refusal(cell) -> str | None:
    """What the configuration must be refused for (a phrase of the one-line message), or None: it must run."""
    docs, ev, kf, builder, warm, _ = cell
    if ev and not docs:
        return "data.eval_path is the held-out file"
    if kf and not docs:
        return "data.key_facts_column names a column of data.documents_path"
    if docs and warm:
        return "no reference answers to warm-start on"
    if docs and builder == "synthetic":
        return "needs pairs from your model's own samples or a file"
    return None


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One workspace for every cell, and the tiny model that knows the articles' words."""
    from faithforge.training.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("documents-matrix")
    texts = [json.loads(line)["document"] for f in (DOCUMENTS, HELD_OUT) for line in f.read_text().splitlines()]
    model = build_tiny_model(root / "documents-model", seed=0, extra_corpus=texts)
    return {"workspace": root / "ws", "model": model}


def _overrides(cell, shared) -> dict:
    docs, ev, kf, builder, warm, control = cell
    data = {}
    if docs:
        data["documents_path"], data["id_column"] = str(DOCUMENTS), "id"
    if ev:
        data["eval_path"] = str(HELD_OUT)
    if kf:
        data["key_facts_column"] = "key_facts"
    cell_options = {"workspace": str(shared["workspace"]), "data": data, "pairs": {"builder": builder},
                    "warm_start": {"enabled": warm}, "control": {"sft_on_chosen": control}}
    if docs:
        cell_options["model"] = {"path": str(shared["model"])}
    return deep_merge(SMALL, cell_options)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("cell", CELLS, ids=[_cell_id(c) for c in CELLS])
def test_documents_configuration_runs_through_evaluate_or_is_refused_with_one_line(cell, shared):
    docs, ev, kf, builder, warm, control = cell
    refusal = _refusal(cell)
    workspace = shared["workspace"]
    outputs_before = sorted(p.name for p in workspace.glob("*/*")) if workspace.exists() else []
    if refusal:
        with pytest.raises(UserError) as error:
            run_stages(load_config(None, overrides=_overrides(cell, shared), environ={}))
        message = str(error.value)
        assert refusal in message and "\n" not in message
        after = sorted(p.name for p in workspace.glob("*/*")) if workspace.exists() else []
        assert after == outputs_before  # refused before any work: no stage wrote anything
        return
    out = run_stages(load_config(None, overrides=_overrides(cell, shared), environ={}))
    ev_out = out["evaluate"]
    assert set(ev_out.models) == {"before", "after"} | ({"control"} if control else set())
    assert Path(ev_out.markdown_path).is_file() and Path(ev_out.chart).is_file()
    test_rows = [json.loads(line) for line in Path(out["generate"].files["test"]).read_text().splitlines()]
    assert ev_out.items == len(test_rows) > 0
    if ev:  # the held-out file is the test split, whole
        assert [r["id"] for r in test_rows] == [json.loads(line)["id"] for line in HELD_OUT.read_text().splitlines()]
    if docs:
        assert out["warm_start"].skipped and out["warm_start"].path == str(shared["model"])
        assert {r["category"] for r in test_rows} == {"document"}
        # recall exists exactly when the documents name their key facts (today's crash: it was None and dereferenced)
        assert (ev_out.difference["recall"] is not None) == kf
        assert all((m.recall is not None) == kf for m in ev_out.models.values())
    assert ev_out.difference["rate"]["n"] == ev_out.items
    if control:
        assert out["control"] is not None and ev_out.control_difference is not None
    else:
        assert out["control"] is None and ev_out.control_difference is None


def test_every_refusal_is_a_configuration_error_before_the_workspace_exists(tmp_path):
    """The refused cells fail in `load_config` itself: nothing is opened, not even the workspace folder."""
    refused = [c for c in CELLS if _refusal(c)]
    assert len(refused) == 48 and len(CELLS) - len(refused) == 16
    for cell in refused:
        with pytest.raises(UserError) as error:
            load_config(None, overrides=_overrides(cell, {"workspace": tmp_path / "ws", "model": tmp_path}),
                        environ={})
        assert _refusal(cell) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "ws").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_documents_on_policy_without_warm_start_or_key_facts_reach_the_report(shared):
    """Regression: this configuration ran every stage and then crashed in evaluate with `'NoneType' object has no
    attribute 'model_dump'` (the recall difference is None when the documents list no key facts)."""
    cell = (True, False, False, "on-policy", False, True)
    out = run_stages(load_config(None, overrides=_overrides(cell, shared), environ={}))
    ev_out = out["evaluate"]
    assert ev_out.difference["recall"] is None and ev_out.difference["rate"]["n"] == ev_out.items > 0
    assert ev_out.difference["retention"] is not None  # content retention stands in for recall
    assert "hallucination" in Path(ev_out.markdown_path).read_text().lower()
