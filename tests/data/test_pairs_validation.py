"""Bad pair files are refused through the stage loader with the file, the row and the fix."""

from __future__ import annotations

import json

import pytest
from tests.fixtures.dpo_support import make_pairs

from faithforge.core.errors import UserError
from faithforge.data.pairs import split_by_source
from faithforge.stages.pairs import load_pairs


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_good_file_loads(tmp_path):
    pairs = make_pairs(3)
    assert load_pairs(_write(tmp_path / "train.jsonl", pairs)) == pairs


@pytest.mark.parametrize("row, problem", [
    (lambda p: {k: v for k, v in p.items() if k != "chosen"}, "missing or empty field(s) chosen"),
    (lambda p: {**p, "rejected": []}, "missing or empty field(s) rejected"),
    (lambda p: {**p, "id": ""}, "missing or empty field(s) id"),
    (lambda p: {**p, "chosen": [{"role": "assistant", "content": "   "}]}, "chosen is empty"),
    (lambda p: {**p, "prompt": [{"content": "no role"}]}, "prompt has a message without 'role'"),
    (lambda p: {**p, "rejected": p["chosen"]}, "chosen equals rejected"),
    (lambda p: [p["id"], p["prompt"]], "not a JSON object"),
    (lambda p: {**p, "rejected": [{"role": "assistant", "content": " " + p["chosen"][0]["content"] + " "}]},
     "chosen equals rejected"),
])
def test_bad_row_is_named_with_file_row_and_fix(tmp_path, row, problem):
    pairs = make_pairs(3)
    pairs[1] = row(pairs[1])
    path = _write(tmp_path / "train.jsonl", pairs)
    with pytest.raises(UserError) as error:
        load_pairs(path)
    message = str(error.value)
    assert message.startswith(path)
    assert f"row 2: {problem}" in message
    assert "Fix or remove those rows" in message


def test_every_bad_row_is_reported_not_just_the_first(tmp_path):
    pairs = make_pairs(3)
    pairs[0] = {**pairs[0], "rejected": pairs[0]["chosen"]}
    pairs[2] = {**pairs[2], "id": pairs[1]["id"]}
    with pytest.raises(UserError, match=r"2 unusable pair row\(s\): row 1: chosen equals rejected.*row 3: duplicate id"):
        load_pairs(_write(tmp_path / "train.jsonl", pairs))


def test_split_keeps_every_pair_of_a_source_on_one_side():
    pairs = make_pairs(30)
    train, val = split_by_source(pairs, 0.3, seed=1)
    assert len(train) + len(val) == len(pairs) and train and val
    assert not {p["source_id"] for p in train} & {p["source_id"] for p in val}
    assert split_by_source(pairs, 0.3, seed=1) == (train, val)
