"""bench/pair_sets.py: one pairs folder's summary counts what its manifest and files hold, worked out by hand."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.bench_scripts import load_bench


def _bench():
    return load_bench("pair_sets")


def _pair(chosen: str, rejected: str) -> str:
    return json.dumps({"chosen": [{"role": "assistant", "content": chosen}],
                       "rejected": [{"role": "assistant", "content": rejected}]}) + "\n"


def test_a_folder_is_summarized_as_by_hand(tmp_path):
    folder = tmp_path / "pairs" / "pairs-1"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text(_pair("On Friday.", "Vera painted them on a Sunday.") +
                                        _pair("In Lima.", "In Graz, I think."))
    (folder / "val.jsonl").write_text(_pair("Three hats.", "Seven."))
    score = {"hallucinated": False, "recall": 1.0}
    scores = [{"chosen": score, "rejected": {"hallucinated": True, "recall": 0.0}},
              {"chosen": {"hallucinated": True, "recall": 0.5}, "rejected": {"hallucinated": True, "recall": 0.0}},
              {"chosen": {"hallucinated": False, "recall": None}, "rejected": {"hallucinated": False, "recall": None}}]
    (folder / "manifest.json").write_text(json.dumps({
        "counts": {"train": 2, "val": 1},
        "report": {"built": 3, "omission_pairs": 1, "sampler": "llama.cpp on abc.f16.gguf", "sample_seconds": 60.0,
                   "dropped_sources": {"no sample may be chosen (recall below 1, or a question)": 2},
                   "scores": scores}}))
    row = _bench().describe(folder)
    assert row["sampler"] == "llama.cpp" and (row["built"], row["train"], row["val"]) == (3, 2, 1)
    assert row["chosen_recall"] == 0.75  # (1.0 + 0.5) / 2; the source without key facts has no recall
    assert row["chosen_flagged"] == pytest.approx(0.333) and row["rejected_flagged"] == pytest.approx(0.667)
    assert row["chosen_words"] == 2.0 and row["rejected_words"] == pytest.approx(3.667)  # (6 + 4 + 1) / 3
