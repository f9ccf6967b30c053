"""The user's own data: imported preference pairs, documents as sources, the text overlap guard."""

from __future__ import annotations

import json

import pytest

from faithforge.core.config import validate_config
from faithforge.core.errors import ConfigError, UserError
from faithforge.data.overlap import check_no_text_overlap, overlapping_sources
from faithforge.data.sources import DOCUMENTS_PROMPT, document_splits, system_prompt
from faithforge.data.pairs import PairsImportError, import_pairs, normalize_pair, split_by_source

STANDARD = {"prompt": "What colour is the sky?", "chosen": "Blue.", "rejected": "Green."}
CONVERSATIONAL = {"prompt": [{"role": "user", "content": "What colour is the sky?"}],
                  "chosen": [{"role": "assistant", "content": "Blue."}],
                  "rejected": [{"role": "assistant", "content": "Green."}]}
IMPLICIT = {"chosen": [{"role": "user", "content": "What colour is the sky?"}, {"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "user", "content": "What colour is the sky?"},
                         {"role": "assistant", "content": "Green."}]}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row", [STANDARD, CONVERSATIONAL, IMPLICIT], ids=["standard", "conversational", "implicit"])
def test_trl_formats_and_triplets_become_the_same_pair(row):
    pair = normalize_pair(row)
    assert pair["prompt"] == [{"role": "user", "content": "What colour is the sky?"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "Blue."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Green."}]
    assert pair["kind"] == "imported"
    assert pair == normalize_pair(STANDARD)  # ids derived from content: same content, same ids


def test_pairs_of_one_prompt_share_a_source_and_one_side_of_the_split():
    rows = [{"prompt": f"question {i // 3}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(300)]
    pairs = [normalize_pair(r) for r in rows]
    assert len({p["id"] for p in pairs}) == 300 and len({p["source_id"] for p in pairs}) == 100
    train, val = split_by_source(pairs, 0.2, seed=0)
    assert train and val and not {p["source_id"] for p in train} & {p["source_id"] for p in val}
    assert normalize_pair({**STANDARD, "source_id": "doc-7", "id": 12})["source_id"] == "doc-7"


def test_every_format_of_file_is_imported(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [dict(STANDARD, prompt=f"q{i}") for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    (tmp_path / "p.csv").write_text("prompt,chosen,rejected\n" + "".join(f"q{i},Blue.,Green.\n" for i in range(5)))
    for path in (_jsonl(tmp_path / "p.jsonl", rows), tmp_path / "p.parquet", tmp_path / "p.csv"):
        assert [p["prompt"][0]["content"] for p in import_pairs(path)] == [f"q{i}" for i in range(5)]


def test_every_bad_row_is_named_with_file_line_and_fix(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join([
        json.dumps(STANDARD),                                     # 1 fine
        json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}),  # 2
        json.dumps({"prompt": "p", "chosen": "x"}),               # 3
        "not json",                                               # 4
        json.dumps({"chosen": "a", "rejected": "b"}),             # 5 text without prompt
        json.dumps({**CONVERSATIONAL, "chosen": [{"content": "x"}]}),  # 6
        json.dumps({**STANDARD, "id": "a"}), json.dumps({**STANDARD, "id": "a", "chosen": "Azure."}),  # 8: dup id
    ]) + "\n")
    with pytest.raises(PairsImportError) as error:
        import_pairs(path)
    message = str(error.value)
    assert isinstance(error.value, UserError) and "\n" not in message and "6 bad pair row(s)" in message
    for expected in (f"{path}:2: chosen equals rejected", f"{path}:3: missing or empty rejected",
                     f"{path}:4: not valid JSON", f"{path}:5: has no prompt; add a prompt column",
                     f"{path}:6: chosen has a message without string 'role'", f"{path}:8: repeats id 'a'"):
        assert expected in message


def test_documents_are_split_by_id_and_an_eval_file_is_held_out(tmp_path):
    docs = [{"document": f"Document number {i} says that Ada bought {i} lamps.", "facts": f"Ada;{i}"}
            for i in range(60)]
    config = validate_config({
        "data": {"documents_path": str(_jsonl(tmp_path / "d.jsonl", docs)), "key_facts_column": "facts"},
        "warm_start": {"enabled": False}, "pairs": {"builder": "on-policy"},
        "generate": {"val_share": 0.2, "test_share": 0.2}})
    splits = document_splits(config)
    assert sum(len(v) for v in splits.values()) == 60 and all(splits.values())
    ids = [{e.id for e in v} for v in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert splits["train"][0].key_facts[0] == "Ada" and system_prompt(config) == DOCUMENTS_PROMPT

    held_out = _jsonl(tmp_path / "eval.jsonl", [{"document": "A held-out document about Bruno.", "facts": "Bruno"}])
    config = config.model_copy(update={"data": config.data.model_copy(update={"eval_path": str(held_out)})})
    splits = document_splits(config)
    assert [e.source for e in splits["test"]] == ["A held-out document about Bruno."]
    assert len(splits["train"]) + len(splits["val"]) == 60

    leaked = _jsonl(tmp_path / "leak.jsonl", [docs[0]])
    config = config.model_copy(update={"data": config.data.model_copy(update={"eval_path": str(leaked)})})
    with pytest.raises(UserError, match="also occur in data.documents_path"):
        document_splits(config)

    # Not the same text, the same words: found here, before any work, not at the evaluate stage after training.
    respaced = _jsonl(tmp_path / "respaced.jsonl", [{"document": "  " + docs[3]["document"].replace(" ", "   ")},
                                                    {"document": "Bruno sold 4 kites."}])
    config = config.model_copy(update={"data": config.data.model_copy(update={"eval_path": str(respaced)})})
    with pytest.raises(UserError, match=r"1 document\(s\) of data.eval_path .* occur inside documents of"):
        document_splits(config)


def test_documents_need_pairs_from_somewhere_and_no_warm_start():
    with pytest.raises(ConfigError, match="warm_start.enabled: false"):
        validate_config({"data": {"documents_path": "d.jsonl"}})
    with pytest.raises(ConfigError, match="pairs.builder: on-policy, or pairs.path"):
        validate_config({"data": {"documents_path": "d.jsonl"}, "warm_start": {"enabled": False}})
    validate_config({"data": {"documents_path": "d.jsonl"}, "warm_start": {"enabled": False},
                     "pairs": {"path": "p.jsonl"}})


def test_overlap_guard_finds_a_document_wrapped_in_an_imported_prompt():
    document = "Vera sold 4 kites in Riga on Monday. The street was quiet. Omar painted 7 vases in Lima."
    wrapped = f"Summarize this article:\n\n{document.upper().replace('.', ' .')}\n\nBe brief."
    assert overlapping_sources({"d1": document, "d2": "Something else entirely, about kites and Riga."},
                               [wrapped, "An unrelated prompt."]) == ["d1"]
    with pytest.raises(UserError, match=r"1 of 1 evaluation sources occur inside training prompts \(d1\)"):
        check_no_text_overlap({"d1": document}, [wrapped], what="test")


def test_overlap_guard_finds_a_held_out_document_shorter_than_a_shingle():
    """A source under 8 words is one shingle of its own length, never among training's 8-word ones: a one-sentence
    held-out document copied from training passed (an attack, 2026-12-07)."""
    training = ["Person3 went to City3 on Monday. They bought 3 apples. The weather was warm."]
    assert overlapping_sources({"short": "Person3 went to  City3 on Monday.", "other": "Person4 went to Oslo."},
                               training) == ["short"]


def test_template_tasks_never_trip_the_guard():
    from faithforge.data.grounded_qa import generate_questions
    from faithforge.data.teacher import generate_split

    for train, test in ((generate_split("train", 2000, 0, 0.5), generate_split("test", 500, 0, 0.5)),
                        (generate_questions("train", 2000, 0), generate_questions("test", 500, 0))):
        assert overlapping_sources({e.id: e.source for e in test}, [e.source for e in train]) == []


def test_pairs_stage_imports_pairs_path_and_splits_by_source(tmp_path):
    from faithforge.stages.context import StageContext
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.pairs import build_pairs, load_pairs

    rows = [{"prompt": f"question {i // 2}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(80)]
    config = validate_config({"workspace": str(tmp_path / "ws"), "pairs": {"path": str(_jsonl(tmp_path / "p.jsonl", rows)),
                              "val_fraction": 0.25},
                              "generate": {"train_sources": 10, "val_sources": 10, "test_sources": 10}})
    ctx = StageContext.open(config)
    out = build_pairs(ctx, generate_examples(ctx))
    train, val = load_pairs(out.train), load_pairs(out.val)
    assert len(train) + len(val) == 80 and out.report["by_kind"] == {"imported": 80}
    assert not {p["source_id"] for p in train} & {p["source_id"] for p in val}
    assert build_pairs(ctx, generate_examples(ctx)).reused
