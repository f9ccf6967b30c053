"""The nli judge's families, each built random-init (or hand-set) and saved locally — no hub.

Random weights make the verdicts meaningless, so these tests check what does not depend on them, exactly:
label mapping by name, the scores the judge reads from the model (against a direct model call), the
seq2seq answer-token read-out, the overlapping chunk boundaries, and the trust_remote_code gate. The
custom-code checker's `predict` is a hand-written rule, so its verdicts on crafted pairs are hand-checked.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from faithforge.core.errors import UserError
from faithforge.evaluation.nli import MINICHECK_TEMPLATE, NliJudge, supported_index

CORPUS = ["On Monday , Alice bought 3 lamps in Paris .", "The weather was mild .", "Bob sold 5 maps in Lima .",
          "Nobody seemed surprised .", "It was a busy morning on Tuesday .", "Alice did not buy lamps .",
          "predict : 1 0 yes no"]


def word_tokenizer(max_length: int = 64, t5: bool = False):
    """A word-level tokenizer (one token per word) built with the tokenizers library."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"] if t5 else ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    core = Tokenizer(models.WordLevel(unk_token=specials[2] if t5 else "[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=specials))
    if t5:
        eos = core.token_to_id("</s>")
        core.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B:1 </s>:1",
                                                            special_tokens=[("</s>", eos)])
        return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                       unk_token="<unk>", model_max_length=max_length)
    cls, sep = core.token_to_id("[CLS]"), core.token_to_id("[SEP]")
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_max_length=max_length)


def save_classifier(path: Path, family: str, id2label: dict[int, str]) -> Path:
    import torch
    import transformers

    tokenizer = word_tokenizer()
    common = dict(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, pad_token_id=tokenizer.pad_token_id, id2label=id2label,
                  label2id={v: k for k, v in id2label.items()})
    if family == "deberta-v2":
        config = transformers.DebertaV2Config(max_position_embeddings=64, **common)
        model_class = transformers.DebertaV2ForSequenceClassification
    elif family == "roberta":
        config = transformers.RobertaConfig(max_position_embeddings=66, **common)  # roberta offsets by pad+1
        model_class = transformers.RobertaForSequenceClassification
    else:
        config = transformers.BertConfig(max_position_embeddings=64, **common)
        model_class = transformers.BertForSequenceClassification
    torch.manual_seed(0)
    model_class(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("id2label, expected", [
    ({0: "contradiction", 1: "neutral", 2: "entailment"}, 2),        # roberta-large-mnli
    ({0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}, 0),         # deberta MNLI exports
    ({0: "entailment", 1: "not_entailment"}, 0),
    ({0: "supported", 1: "unsupported"}, 0),
    ({0: "hallucinated", 1: "consistent"}, 1),
    ({0: "Inconsistent", 1: "other"}, 1),                             # the other of a named negative
    ({0: "LABEL_0", 1: "LABEL_1"}, 1),                                # unnamed: HHEM/MiniCheck convention
])
def test_labels_are_mapped_by_name(id2label, expected):
    assert supported_index(id2label, len(id2label)) == expected


def test_unmappable_labels_are_a_clear_error():
    with pytest.raises(UserError, match="none is named like.*supported_label=INDEX"):
        supported_index({0: "neutral", 1: "apple", 2: "pear"}, 3)
    with pytest.raises(UserError, match="none is named like"):
        supported_index({0: "apple", 1: "pear"}, 2)
    assert supported_index({0: "apple", 1: "pear"}, 2, supported_label=0) == 0
    assert supported_index({0: "LABEL_0"}, 1) is None  # one logit: a sigmoid score


@pytest.mark.parametrize("family, id2label, supported", [
    ("deberta-v2", {0: "entailment", 1: "neutral", 2: "contradiction"}, 0),
    ("roberta", {0: "contradiction", 1: "neutral", 2: "entailment"}, 2),
    ("bert", {0: "unsupported", 1: "supported"}, 1),
])
def test_sequence_classifier_families_load_and_read_the_supported_class(tmp_path, family, id2label, supported):
    import torch

    path = save_classifier(tmp_path / family, family, id2label)
    judge = NliJudge(path, batch_size=2)
    assert (judge.family, judge.supported_label) == ("classifier", supported)
    premise, hypothesis = "On Monday , Alice bought 3 lamps in Paris .", "Alice bought 3 lamps ."
    (score,) = judge.score_pairs([premise], [hypothesis])
    batch = judge.tokenizer([premise], [hypothesis], return_tensors="pt")
    with torch.no_grad():
        logits = judge.model(**{k: v for k, v in batch.items() if k in judge._inputs}).logits
    assert score == pytest.approx(float(torch.softmax(logits, -1)[0, supported]), abs=1e-6)


def save_t5(path: Path) -> Path:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = word_tokenizer(t5=True)
    config = T5Config(vocab_size=max(tokenizer.get_vocab().values()) + 1, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id, n_positions=64)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_seq2seq_checker_reads_the_answer_token_logits(tmp_path):
    import torch

    path = save_t5(tmp_path / "t5")
    judge = NliJudge(path)
    assert judge.family == "seq2seq"
    yes, no = judge.tokenizer.convert_tokens_to_ids(["1", "0"])
    assert judge.answer_ids == (yes, no) and judge.template == MINICHECK_TEMPLATE
    premise, hypothesis = "Alice bought 3 lamps in Paris .", "Alice did not buy lamps ."
    prompt = judge.seq2seq_prompt(premise, hypothesis)
    assert prompt == "predict: Alice bought 3 lamps in Paris .</s>Alice did not buy lamps ."
    (score,) = judge.score_pairs([premise], [hypothesis])
    ids = judge.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        logits = judge.model(**ids, decoder_input_ids=torch.tensor([[judge.decoder_start]])).logits[0, 0]
    assert score == pytest.approx(float(torch.softmax(logits[[yes, no]], -1)[0]), abs=1e-6)
    verdict = NliJudge(path, seq2seq_answers=("yes", "no"), threshold=1.0).judge(premise, hypothesis)
    assert verdict.hallucinated and verdict.flags[0].text == hypothesis  # the flagged sentence is shown
    with pytest.raises(UserError, match="start with the same token"):
        NliJudge(path, seq2seq_answers=("yes", "yes"))


CUSTOM_CONFIG = '''
from transformers import PretrainedConfig


class WordCheckConfig(PretrainedConfig):
    model_type = "word-check"

    def __init__(self, vocab_size=8, foundation=None, **kwargs):
        self.vocab_size = vocab_size
        self.foundation = foundation
        super().__init__(**kwargs)
'''

CUSTOM_MODEL = '''
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_word_check import WordCheckConfig

NEGATIONS = {"not", "no", "never", "nobody"}


class WordCheckForSequenceClassification(PreTrainedModel):
    """A hand-set checker: supported (1.0) when every hypothesis word is in the premise and both agree on
    negation, else 0.0. Its `predict(pairs)` follows HHEM's custom-code interface."""

    config_class = WordCheckConfig

    def __init__(self, config):
        super().__init__(config)
        self.bias = torch.nn.Parameter(torch.zeros(2))
        self.post_init()
        if config.foundation:  # like HHEM: the tokenizer comes from a foundation model, not the checkpoint
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(config.foundation)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return SequenceClassifierOutput(logits=self.bias.expand(input_ids.shape[0], 2))

    def predict(self, pairs):
        out = []
        for premise, hypothesis in pairs:
            p, h = set(premise.lower().split()), set(hypothesis.lower().split())
            out.append(1.0 if h <= p and bool(p & NEGATIONS) == bool(h & NEGATIONS) else 0.0)
        return torch.tensor(out)
'''


def save_custom(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "configuration_word_check.py").write_text(textwrap.dedent(CUSTOM_CONFIG))
    (path / "modeling_word_check.py").write_text(textwrap.dedent(CUSTOM_MODEL))
    word_tokenizer().save_pretrained(path)
    (path / "config.json").write_text(json.dumps({
        "model_type": "word-check", "architectures": ["WordCheckForSequenceClassification"],
        "auto_map": {"AutoConfig": "configuration_word_check.WordCheckConfig",
                     "AutoModelForSequenceClassification": "modeling_word_check.WordCheckForSequenceClassification"},
        "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "vocab_size": 8}))
    return path


def test_a_custom_model_without_tokenizer_files_lends_its_own(tmp_path):
    from safetensors.torch import save_file

    import torch

    path = save_custom(tmp_path / "hhem-like")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (path / name).unlink(missing_ok=True)
    foundation = tmp_path / "foundation"
    word_tokenizer().save_pretrained(foundation)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "foundation": str(foundation)}))
    save_file({"bias": torch.zeros(2)}, str(path / "model.safetensors"))
    judge = NliJudge(path, trust_remote_code=True)
    assert judge.tokenizer is judge.model.tokenizer
    assert not judge.judge(SOURCE, "Alice bought 3 lamps in Paris .").hallucinated


def test_custom_code_needs_an_explicit_opt_in(tmp_path):
    path = save_custom(tmp_path / "custom")
    with pytest.raises(UserError, match=r"ships its own model code .*trust_remote_code=True"):
        NliJudge(path)
    from safetensors.torch import save_file

    import torch

    save_file({"bias": torch.zeros(2)}, str(path / "model.safetensors"))
    judge = NliJudge(path, trust_remote_code=True)
    assert judge.family == "classifier" and judge._predict is not None


SOURCE = "On Monday , Alice bought 3 lamps in Paris . The weather was mild ."


@pytest.mark.parametrize("summary, hallucinated, flagged", [
    ("Alice bought 3 lamps in Paris .", False, None),                   # faithful (copied words)
    ("Alice did not buy lamps .", True, "Alice did not buy lamps ."),   # negation
    ("Bob bought 3 lamps in Paris .", True, "Bob bought 3 lamps in Paris ."),  # swapped entity
    ("Alice bought 5 lamps . The weather was mild .", True, "Alice bought 5 lamps ."),  # changed number
])
def test_custom_checker_verdicts_on_crafted_pairs(tmp_path_factory, summary, hallucinated, flagged):
    from safetensors.torch import save_file

    import torch

    path = tmp_path_factory.getbasetemp() / "crafted-custom"
    if not path.exists():
        save_custom(path)
        save_file({"bias": torch.zeros(2)}, str(path / "model.safetensors"))
    verdict = NliJudge(path, trust_remote_code=True).judge(SOURCE, summary)
    assert verdict.hallucinated is hallucinated
    assert [f.text for f in verdict.flags] == ([flagged] if flagged else [])


def test_long_sources_are_cut_into_overlapping_chunks_and_the_best_one_decides(tmp_path):
    path = save_classifier(tmp_path / "bert", "bert", {0: "unsupported", 1: "supported"})
    judge = NliJudge(path, max_length=32, chunk_overlap=0.3)
    sentences = [f"{w} {w} {w} {w} {w} {w} ." for w in ("Alice", "Bob", "lamps", "maps", "Paris", "Lima", "mild")]
    source = " ".join(sentences)  # 7 sentences of 7 tokens each
    # window = 32 - 5 (hypothesis) - 3 ([CLS] [SEP] [SEP]) = 24 tokens: 3 sentences (21) per chunk; the overlap
    # holds int(24 * 0.3) = 7 tokens = one sentence, so each chunk repeats the previous chunk's last sentence.
    assert judge.window(5) == 24
    expected = [" ".join(sentences[0:3]), " ".join(sentences[2:5]), " ".join(sentences[4:7])]
    assert judge.chunk_source(source, 5) == expected
    no_overlap = NliJudge(path, max_length=32, chunk_overlap=0.0)
    assert no_overlap.chunk_source(source, 5) == [" ".join(sentences[0:3]), " ".join(sentences[3:6]), sentences[6]]
    hypothesis = "Alice bought 3 lamps ."
    per_chunk = judge.score_pairs(expected, [hypothesis] * 3)
    ((_, _, best),) = judge.sentence_scores(source, hypothesis)
    assert best == pytest.approx(max(per_chunk), abs=1e-6)
    strict = NliJudge(path, max_length=32, chunk_overlap=0.3, threshold=1.0).judge(source, hypothesis)
    assert f"source chunk {per_chunk.index(max(per_chunk)) + 1}" in strict.flags[0].reason


def test_a_sentence_longer_than_the_window_is_cut_by_tokens_with_overlap(tmp_path):
    path = save_classifier(tmp_path / "bert", "bert", {0: "unsupported", 1: "supported"})
    judge = NliJudge(path, max_length=32, chunk_overlap=0.25)
    words = ["Alice"] * 30 + ["."]  # 31 tokens > 24-token window
    chunks = judge.chunk_source(" ".join(words), 5)
    # token windows of 24 with a stride of 24 - 6 = 18: tokens 0-23 and 18-30
    assert [len(c.split()) for c in chunks] == [24, 13]


def test_hub_ids_and_missing_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="could not be fetched from the hub.*--local-dir"):
        NliJudge("nobody-here/no-such-checker")
    with pytest.raises(UserError, match="not a folder or a hub id"):
        NliJudge(tmp_path / "missing" / "deeper")
