"""Build the tiny offline model: a word-level tokenizer trained with `tokenizers` and a random-init Llama.

Both are written with `save_pretrained`, so everything downstream loads them through the same
`from_pretrained(path)` code a real model uses. Deterministic for a given seed (same files, same bytes).
"""

from __future__ import annotations

import os
from pathlib import Path

from faithforge.core.config import TinyModelConfig
from faithforge.core.workspace import atomic_directory

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<system>", "<user>", "<assistant>")

# Rendered prompt: "<bos> <system> ... <user> ... <assistant>" then the summary and "<eos>".
# The generation prompt ends on a special token, so prompt tokens are always a prefix of prompt+completion.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<system> {{ message['content'] }} "
    "{% elif message['role'] == 'user' %}<user> {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}<assistant> {{ message['content'] }} {{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def build_tokenizer(corpus: list[str]):
    """Train a word-level tokenizer on `corpus` and wrap it as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    core.train_from_iterator(sorted(corpus), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<system>", "<user>", "<assistant>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"  # generation pads on the left; training collators set their own side
    return tokenizer


def build_tiny_model(path: str | os.PathLike[str], seed: int = 0, spec: TinyModelConfig | None = None,
                     extra_corpus: list[str] | tuple[str, ...] = (), new: bool = False) -> Path:
    """Write tokenizer + random-init `LlamaForCausalLM` to `path` (atomically) and return it. `new`: refuse to
    replace a folder another command wrote there meanwhile (`atomic_directory`).

    `extra_corpus`: more texts whose words join the vocabulary (e.g. real documents a test runs on, so the model's
    samples are words of those documents rather than `<unk>`)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from faithforge.data.teacher import VOCABULARY_TEXTS

    spec = spec or TinyModelConfig()
    tokenizer = build_tokenizer(list(VOCABULARY_TEXTS) + list(extra_corpus))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_directory(path, new=new) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(path)
