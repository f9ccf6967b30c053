"""The nli judge with a tiny BERT-like classifier built and saved locally, loaded back through the judge."""

from __future__ import annotations

from pathlib import Path

import pytest

from faithforge.core.errors import UserError
from faithforge.evaluation import get_judge
from faithforge.evaluation.nli import NliJudge

CORPUS = ["On Monday , Alice bought 3 lamps in Paris .", "The weather was mild .", "Bob sold 5 maps in Lima .",
          "Nobody seemed surprised .", "It was a busy morning on Tuesday ."]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    cls, sep = core.token_to_id("[CLS]"), core.token_to_id("[SEP]")
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_max_length=32)


def _save(path: Path, model_class: str, **config) -> Path:
    import torch
    import transformers

    tokenizer = _tokenizer()
    bert = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                                   pad_token_id=tokenizer.pad_token_id, **config)
    torch.manual_seed(0)
    getattr(transformers, model_class)(bert).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("nli") / "clf", "BertForSequenceClassification",
                 id2label={0: "hallucinated", 1: "consistent"}, label2id={"hallucinated": 0, "consistent": 1})


@pytest.fixture(scope="module")
def judge(classifier_dir) -> NliJudge:
    return NliJudge(classifier_dir, threshold=0.5, batch_size=4)


SOURCE = "The weather was mild . On Monday , Alice bought 3 lamps in Paris . Nobody seemed surprised ."


def test_loads_and_scores_every_sentence(judge):
    assert judge.supported_label == 1  # found by name in id2label
    assert judge.max_length == 32
    verdict = judge.judge(SOURCE, "Alice bought 3 lamps . Bob sold 5 maps in Lima .")
    assert verdict.judge == "nli" and len(verdict.sentences) == 2
    assert all(0.0 <= s.score <= 1.0 for s in verdict.sentences)
    assert verdict.hallucinated == any(s.score < 0.5 for s in verdict.sentences)


def test_source_is_chunked_and_the_best_chunk_decides(judge):
    hypothesis = "Alice bought 3 lamps ."
    long_source = SOURCE + " It was a busy morning on Tuesday . Bob sold 5 maps in Lima ."
    chunks = judge.chunk_source(long_source, judge._length(hypothesis))
    assert len(chunks) > 1  # 32 tokens cannot hold the whole source beside the sentence
    budget = judge.max_length - judge._length(hypothesis) - judge._special_tokens()
    assert all(judge._length(c) <= budget for c in chunks)
    per_chunk = judge.score_pairs(chunks, [hypothesis] * len(chunks))
    ((_, _, best),) = judge.sentence_scores(long_source, hypothesis)
    assert best == pytest.approx(max(per_chunk), abs=1e-6)


def test_threshold_decides(classifier_dir):
    summary = "Alice bought 3 lamps in Paris ."
    lenient = NliJudge(classifier_dir, threshold=0.0).judge(SOURCE, summary)
    strict = NliJudge(classifier_dir, threshold=1.0).judge(SOURCE, summary)
    assert not lenient.hallucinated
    assert strict.hallucinated and strict.flags[0].kind == "inconsistent"
    assert strict.flags[0].span == (0, len(summary))
    assert "below the threshold 1" in strict.flags[0].reason


def test_registry_builds_nli(classifier_dir):
    judge = get_judge("nli", checkpoint=str(classifier_dir), threshold=0.3, supported_label=0)
    assert (judge.name, judge.threshold, judge.supported_label) == ("nli", 0.3, 0)


def test_not_a_classifier_is_a_clear_error(tmp_path):
    path = _save(tmp_path / "mlm", "BertForMaskedLM")
    with pytest.raises(UserError, match=r"mlm is a BertForMaskedLM, not a sequence classifier.*--judge grounding"):
        NliJudge(path)


def test_bad_checkpoints_and_options(tmp_path, classifier_dir):
    with pytest.raises(UserError, match="is not a folder"):
        NliJudge(tmp_path / "missing")
    with pytest.raises(UserError, match="has no config.json"):
        NliJudge(tmp_path)
    with pytest.raises(UserError, match="threshold must be within"):
        NliJudge(classifier_dir, threshold=1.5)
    with pytest.raises(UserError, match="supported_label 5 is out of range"):
        NliJudge(classifier_dir, supported_label=5)


def test_calibrate_nli_picks_the_best_threshold(classifier_dir, tmp_path):
    from typer.testing import CliRunner

    from faithforge.app.cli_eval import app
    from faithforge.evaluation.calibration import best_threshold, calibrate_nli, make_calibration_set, read_labels

    labels = make_calibration_set(tmp_path / "cal.jsonl", n=12, seed=0)
    examples = read_labels(labels)
    judge = NliJudge(classifier_dir)
    scores = [min(s for _, _, s in judge.sentence_scores(e.source, e.summary)) for e in examples]
    report = calibrate_nli(judge, examples)
    assert report.threshold == judge.threshold == best_threshold(scores, [e.hallucinated for e in examples])
    assert report.balanced_accuracy >= 0.5  # never worse than flagging everything or nothing
    # The CLI chooses the threshold on the validation split only and reports on the held-out one.
    from faithforge.evaluation.heldout import split_examples

    labels = make_calibration_set(tmp_path / "cal40.jsonl", n=40, seed=0)
    validation, _ = split_examples(read_labels(labels))
    val_scores = [min(s for _, _, s in judge.sentence_scores(e.source, e.summary)) for e in validation]
    chosen = best_threshold(val_scores, [e.hallucinated for e in validation])
    result = CliRunner().invoke(app, ["calibrate", "--labels", str(labels), "--judge", "nli",
                                      "--checkpoint", str(classifier_dir), "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    assert f"nli threshold {chosen:.4f}" in result.output
