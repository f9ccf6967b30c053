"""A pair's common prefix goes through the backbone once (`faithforge.training.shared_prefix`): the same hidden
states and gradients as the plain forward, fewer tokens, and the plain forward wherever sharing cannot hold."""

from __future__ import annotations

import pytest
import torch
from tests.fixtures.dpo_support import build_cache, dpo_args, lora_policy, make_pairs

from faithforge.training.shared_prefix import pair_prefix_lengths, share_pair_prefixes


def _tiny_llama(dtype=torch.float32, **config):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    settings = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(LlamaConfig(**{**settings, **config})).to(dtype)


def _pair_batch():
    """Three pairs, chosen rows then rejected rows, right-padded: prompts of 7, 12 and 4 tokens; the second
    pair's answers also share their first two tokens, so its common prefix runs past the prompt."""
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 100, (n,), generator=generator).tolist() for n in (7, 12, 4)]
    rows = []
    for side in range(2):
        for i, prompt in enumerate(prompts):
            answer = torch.randint(3, 100, (2 + 2 * side + i,), generator=generator).tolist()
            rows.append(prompt + ([5, 6] + answer if i == 1 else answer))
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return ids, mask


def _true_float64(monkeypatch):
    """Llama's RMSNorm and rotary embedding compute in float32 whatever the model's dtype; in float64 throughout,
    the two ways of computing differ only by float64 rounding, so exactness can be tested."""
    import transformers.models.llama.modeling_llama as llama

    def norm(self, hidden):
        return self.weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rotary(self, x, position_ids):
        inv = self.inv_freq.double()[None, :, None].expand(position_ids.shape[0], -1, 1)
        freqs = (inv @ position_ids[:, None, :].double()).transpose(1, 2)
        angles = torch.cat((freqs, freqs), dim=-1)
        return (angles.cos() * self.attention_scaling).to(x.dtype), (angles.sin() * self.attention_scaling).to(x.dtype)

    monkeypatch.setattr(llama.LlamaRMSNorm, "forward", norm)
    monkeypatch.setattr(llama.LlamaRotaryEmbedding, "forward", rotary)


def test_the_prefix_lengths_are_where_each_pair_diverges():
    ids, mask = _pair_batch()
    assert pair_prefix_lengths(ids, mask).tolist() == [7, 14, 4]


# eager attention's softmax runs in float32 whatever the model's dtype (transformers' `eager_attention_forward`):
# there the two ways agree to float32 rounding only
@pytest.mark.parametrize("attention, tolerance", [("sdpa", 1e-12), ("eager", 1e-6)])
def test_shared_hidden_states_and_gradients_equal_the_plain_forward_in_float64(monkeypatch, attention, tolerance):
    _true_float64(monkeypatch)
    model = _tiny_llama(torch.float64, attn_implementation=attention).train()
    ids, mask = _pair_batch()
    real = mask.bool()
    readout = torch.randn(int(real.sum()), 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def run():
        hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        grads = torch.autograd.grad((hidden[real] * readout).sum(), list(model.model.parameters()))
        return hidden, grads

    plain_hidden, plain_grads = run()
    with share_pair_prefixes(model):
        shared_hidden, shared_grads = run()
    assert "forward" not in model.model.__dict__  # the backbone's own forward is back
    assert (shared_hidden - plain_hidden)[real].abs().max() < tolerance
    for plain, shared in zip(plain_grads, shared_grads):
        assert (shared - plain).abs().max() <= tolerance * max(1.0, float(plain.abs().max()))


@pytest.mark.parametrize("architecture", ["gpt-neo local window", "mpt alibi", "gpt2"])
def test_architectures_that_measure_distance_by_cache_position_get_the_same_hidden_states(architecture):
    """GPT-Neo's local window and MPT's ALiBi count distance in cache positions, not position ids: the shared
    prefix keeps every token at the position the plain forward gives it, whatever the pairs' prefix lengths
    (here 7, 14 and 4 tokens: a per-pair prefix padded to the longest would open a gap and move them)."""
    import transformers
    from transformers import AutoModelForCausalLM

    settings = {
        "gpt-neo local window": ("GPTNeoConfig", dict(hidden_size=64, num_layers=2, num_heads=4, window_size=4,
                                                      attention_types=[[["global", "local"], 1]], resid_dropout=0.0,
                                                      embed_dropout=0.0, attention_dropout=0.0)),
        "mpt alibi": ("MptConfig", dict(d_model=64, n_layers=2, n_heads=4)),
        "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                                    attn_pdrop=0.0)),
    }
    name, config = settings[architecture]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(getattr(transformers, name)(vocab_size=100, **config)).float().train()
    ids, mask = _pair_batch()
    real = mask.bool()
    plain = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    with share_pair_prefixes(model):
        shared = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    assert (shared - plain)[real].abs().max() < 1e-5


def test_a_tensor_argument_sends_the_call_down_the_plain_forward():
    """Keyword tensors (Gemma 3's language model is always called with `inputs_embeds`) are not the shared pass's
    to interpret: the plain forward runs, with them."""
    model = _tiny_llama()
    ids, mask = _pair_batch()
    embeds = model.model.embed_tokens(ids)
    expected = model.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    with share_pair_prefixes(model):
        hidden = model.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        positioned = model.model(input_ids=ids, attention_mask=mask,
                                 position_ids=torch.arange(ids.shape[1]).expand_as(ids)).last_hidden_state
    assert torch.equal(hidden, expected) and torch.equal(positioned, expected)


def _count_tokens(monkeypatch, model_class):
    """Real tokens (attention mask ones) each call of the backbone class's forward is given."""
    import functools

    calls: list[int] = []
    plain = model_class.forward

    @functools.wraps(plain)  # keeps the signature the shared pass reads its cache argument's name from
    def counting(self, *args, **kwargs):
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids")
        calls.append(int(ids.numel() if mask is None else mask[:, -ids.shape[1]:].sum()))
        return plain(self, *args, **kwargs)

    monkeypatch.setattr(model_class, "forward", counting)
    return calls


def test_each_shared_prefix_is_encoded_once(monkeypatch):
    from transformers.models.llama.modeling_llama import LlamaModel

    model = _tiny_llama()
    ids, mask = _pair_batch()
    calls = _count_tokens(monkeypatch, LlamaModel)
    with torch.no_grad(), share_pair_prefixes(model):
        model.model(input_ids=ids, attention_mask=mask)
    # two calls: the batch's shortest common prefix (4 tokens) once per pair, then the rest of every row
    assert calls == [3 * 4, int(mask.sum()) - 2 * 3 * 4]


@pytest.mark.parametrize("case", ["odd rows", "left padding", "gradient checkpointing", "no common prefix",
                                  "rotary angles chosen per call"])
def test_the_plain_forward_runs_where_sharing_cannot_hold(monkeypatch, case):
    from transformers.models.llama.modeling_llama import LlamaModel

    # "dynamic" NTK scaling picks its frequencies from the longest position of each call (a review measured 2e-3
    # between a split and a whole pass past the original context of 16)
    dynamic = {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}, "max_position_embeddings": 16}
    model = _tiny_llama(**(dynamic if case == "rotary angles chosen per call" else {})).train()
    ids, mask = _pair_batch()
    if case == "odd rows":
        ids, mask = ids[:5], mask[:5]
    elif case == "left padding":
        ids, mask = ids.flip(1), mask.flip(1)
    elif case == "gradient checkpointing":  # the layers would drop the cache the suffix pass reads
        model.gradient_checkpointing_enable()
    else:
        ids[3:, 0] = (ids[:3, 0] + 1) % 100
    calls = _count_tokens(monkeypatch, LlamaModel)
    expected = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    with share_pair_prefixes(model):
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert len(calls) == 2 and calls[0] == calls[1] == int(mask.sum())  # one plain call each
    assert torch.equal(hidden, expected)


def test_a_dpo_step_encodes_each_pair_prompt_once_and_keeps_the_loss(tiny_model_dir, tmp_path, monkeypatch):
    """In FaithForge's DPO trainer the backbone gets each pair's prompt once (the reference cache's pass too), and
    step 0 still reproduces the cached reference numbers: loss ln 2."""
    import math

    from faithforge.training.dpo import run_dpo
    from faithforge.training.reference_cache import tokenize_pair

    pairs = make_pairs(4)
    cache, _ = build_cache(tiny_model_dir, pairs, tmp_path / "cache", shard_size=8, batch_size=len(pairs))
    policy, tokenizer = lora_policy(tiny_model_dir)
    decoder_class = type(policy.get_decoder())
    calls = _count_tokens(monkeypatch, decoder_class)
    out = run_dpo(policy, tokenizer, pairs, cache.load(),
                  dpo_args(tmp_path / "run", steps=1, micro_batch=len(pairs), max_length=None, checkpoint_every=100))
    tokenized = [tokenize_pair(tokenizer, p) for p in pairs]
    prompts = sum(len(t["prompt_ids"]) for t in tokenized)
    every_row = sum(2 * len(t["prompt_ids"]) + len(t["chosen_ids"]) + len(t["rejected_ids"]) for t in tokenized)
    assert calls[0] >= prompts  # the shared prefixes: the prompts, plus any first answer tokens both share
    assert sum(calls) <= every_row - prompts  # no prompt token was encoded twice
    assert abs(out["history"][0]["loss"] - math.log(2)) < 1e-4
