"""Fixtures and helpers for the prefix-cache engine tests: tiny fp32 models and tokenizers built in memory.

- `word_tokenizer`: word-level tokenizer (trained with `tokenizers`) with a chat template.
- `bpe_tokenizer`: a small byte-level BPE tokenizer, so merges can cross the prefix/request boundary.
- `make_llama(vocab, seed)`: random-init LlamaForCausalLM, hidden 64, 2 layers, 4 heads, fp32, eval mode.
  initializer_range is raised from 0.02 to 0.3 so outputs depend strongly on context: with the default,
  a broken cache can still give near-identical logits (research notes, "random-init models barely depend
  on context"); `test_model_depends_on_context` checks that this holds.
- `reencode_logits`: the reference — next-token logits of a full forward over the ids, no cache.
"""

from __future__ import annotations

import pytest
import torch

WORDS = (
    "the a an of to in and is was it for on with as at by from this that be are or not have had "
    "cat dog bird fish tree river stone house road city king queen day night sun moon rain wind fire water "
    "red blue green black white old new big small fast slow happy sad bright dark cold warm "
    "run walk jump sing read write see hear eat drink sleep think know find give take make "
    "monday tuesday wednesday thursday friday saturday sunday you i we they he she answer question summary"
).split()

# The project's chat template (the tiny model's), so engine tests render prompts the way the pipeline does.
from faithforge.training.tiny_model import CHAT_TEMPLATE  # noqa: E402


SYSTEM_PROMPT = " ".join(WORDS[i % len(WORDS)] for i in range(0, 7 * 40, 7))  # 40 words, deterministic


def build_word_tokenizer():
    """Word-level tokenizer over WORDS plus <pad> <unk> <bos> <eos> <system> <user> <assistant>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>", "<system>", "<user>", "<assistant>"]
    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    core.train_from_iterator([" ".join(WORDS)], trainer=trainers.WordLevelTrainer(special_tokens=specials))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=specials[4:])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_bpe_tokenizer():
    """Byte-level BPE trained on a few sentences; 'quick brown' style words become single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog"] * 50 + [" ".join(WORDS)] * 20
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")


def make_llama(vocab_size: int, seed: int = 0, eos_token_id: int | None = None, attn: str = "sdpa"):
    """Random-init fp32 LlamaForCausalLM (hidden 64, 2 layers, 4 heads) in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         initializer_range=0.3, eos_token_id=eos_token_id, tie_word_embeddings=False,
                         attn_implementation=attn)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def reencode_logits(model, ids: list[int]) -> torch.Tensor:
    """Reference next-token logits [vocab] after `ids`: one plain forward, no cache."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.fixture(scope="session")
def word_tokenizer():
    return build_word_tokenizer()


@pytest.fixture(scope="session")
def word_model(word_tokenizer):
    return make_llama(len(word_tokenizer), seed=0, eos_token_id=word_tokenizer.eos_token_id)


@pytest.fixture(scope="session")
def bpe_tokenizer():
    return build_bpe_tokenizer()


@pytest.fixture(scope="session")
def bpe_model(bpe_tokenizer):
    return make_llama(len(bpe_tokenizer), seed=1, eos_token_id=bpe_tokenizer.eos_token_id)


@pytest.fixture
def chat_engine(word_model, word_tokenizer):
    """An engine whose prefix is a 40-word system prompt rendered through the chat template."""
    from faithforge.engine import PrefixCachedEngine

    return PrefixCachedEngine(word_model, word_tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
