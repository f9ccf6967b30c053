"""The layers' MLPs compute a padded batch's real tokens only (`faithforge.training.real_tokens`): the same hidden
states at every real position and the same gradients as computing the padding too, with the MLP given only the
real positions; and the plain MLP wherever that cannot hold."""

from __future__ import annotations

import pytest
import torch
from tests.fixtures.dpo_support import build_cache, dpo_args, lora_policy, make_pairs
from tests.training.test_shared_prefix import _pair_batch, _tiny_llama, _true_float64

from faithforge.training.real_tokens import mlp_on_real_tokens
from faithforge.training.shared_prefix import share_pair_prefixes


def _positions_seen(linear) -> list[int]:
    """Positions (batch × seq_len) each call of a linear layer inside an MLP is given (a forward hook)."""
    seen: list[int] = []
    linear.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[:-1].numel()))
    return seen


@pytest.mark.parametrize("with_shared_prefix", [False, True])
def test_real_positions_and_gradients_equal_computing_the_padding_too(monkeypatch, with_shared_prefix):
    """In float64 the two ways differ only by float64 rounding; alone and around the shared-prefix pass (whose
    suffix call is given the whole rows' mask while it computes only the positions after the cache)."""
    _true_float64(monkeypatch)
    model = _tiny_llama(torch.float64).train()
    ids, mask = _pair_batch()
    real = mask.bool()
    readout = torch.randn(int(real.sum()), 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    seen = _positions_seen(model.model.layers[0].mlp.gate_proj)

    def run():
        hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return hidden, torch.autograd.grad((hidden[real] * readout).sum(), list(model.model.parameters()))

    plain_hidden, plain_grads = run()
    assert seen == [ids.numel()]
    sharing = share_pair_prefixes(model) if with_shared_prefix else torch.enable_grad()
    with mlp_on_real_tokens(model), sharing:
        hidden, grads = run()
    assert "forward" not in model.model.__dict__ and "forward" not in model.model.layers[0].mlp.__dict__
    # alone: one call on the real tokens; shared: the prefix (3 pairs × 4 tokens) then the rest's real tokens
    assert seen[1:] == ([3 * 4, int(mask.sum()) - 2 * 3 * 4] if with_shared_prefix else [int(mask.sum())])
    assert (hidden - plain_hidden)[real].abs().max() < 1e-12
    for plain, ours in zip(plain_grads, grads):
        assert (ours - plain).abs().max() <= 1e-12 * max(1.0, float(plain.abs().max()))


@pytest.mark.parametrize("case", ["no padding", "no mask", "gradient checkpointing", "switched off"])
def test_the_plain_mlp_runs_where_real_tokens_cannot_be_picked(case):
    model = _tiny_llama().train()
    ids, mask = _pair_batch()
    if case == "no padding":
        mask = torch.ones_like(mask)
    elif case == "gradient checkpointing":  # in backward the layers run again, after the call's mask is gone
        model.gradient_checkpointing_enable()
    seen = _positions_seen(model.model.layers[0].mlp.gate_proj)
    arguments = {"input_ids": ids} if case == "no mask" else {"input_ids": ids, "attention_mask": mask}
    expected = model.model(**arguments).last_hidden_state
    with mlp_on_real_tokens(model, enabled=case != "switched off"):
        hidden = model.model(**arguments).last_hidden_state
    assert seen == [ids.numel(), ids.numel()]  # the whole batch both times
    assert torch.equal(hidden, expected)


class _TupleMlp(torch.nn.Module):
    """An MLP that returns its output with a router's logits beside it (as some mixture-of-experts blocks do)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, hidden):
        return self.proj(hidden), hidden.sum(-1)


class _Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = _TupleMlp()

    def forward(self, hidden):
        return hidden + self.mlp(hidden)[0]


class _Decoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 8)
        self.layers = torch.nn.ModuleList([_Layer()])

    def forward(self, input_ids=None, attention_mask=None):
        hidden = self.embed(input_ids)
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


class _Lm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = _Decoder()

    def get_decoder(self):
        return self.model


def test_an_mlp_that_returns_a_tuple_is_called_plainly_from_then_on():
    """Such an output is not a per-position tensor to put back in place: that call reruns plainly, and the
    following calls go straight to the plain MLP (no second, wasted pass)."""
    model = _Lm()
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    seen = _positions_seen(model.model.layers[0].mlp.proj)
    expected = model.model(input_ids=ids, attention_mask=mask)
    with mlp_on_real_tokens(model):
        first = model.model(input_ids=ids, attention_mask=mask)
        second = model.model(input_ids=ids, attention_mask=mask)
    assert seen == [6, 5, 6, 6]  # plain; the real 5 then plain once; plain
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_a_model_without_decoder_layers_is_left_alone():
    model = torch.nn.Linear(4, 4)
    with mlp_on_real_tokens(model):
        out = model(torch.ones(2, 4))
    assert out.shape == (2, 4) and "forward" not in model.__dict__


def test_a_dpo_step_and_a_control_step_keep_their_losses(tiny_model_dir, tmp_path):
    """In FaithForge's DPO trainer (prompt shared) and the SFT control: the loss of the first steps equal with the
    MLPs on real tokens and on every position, to float32 rounding."""
    from faithforge.training.dpo import run_dpo
    from faithforge.training.modeling import use_chunked_head_loss
    from faithforge.training.sft import SftExample, train_sft

    pairs = make_pairs(4)
    cache, _ = build_cache(tiny_model_dir, pairs, tmp_path / "cache", shard_size=8, batch_size=len(pairs))
    losses = {}
    for on in (False, True):
        policy, tokenizer = lora_policy(tiny_model_dir)
        out = run_dpo(policy, tokenizer, pairs, cache.load(),
                      dpo_args(tmp_path / f"run-{on}", steps=2, micro_batch=len(pairs), max_length=None,
                               checkpoint_every=100, mlp_real_tokens=on))
        control, tokenizer = lora_policy(tiny_model_dir)
        use_chunked_head_loss(control)
        examples = [SftExample(p["prompt"], p["chosen"][0]["content"]) for p in pairs]
        sft = train_sft(control, tokenizer, examples, steps=2, batch_size=4, learning_rate=1e-3, seed=0,
                        max_length=64, mlp_real_tokens=on)
        losses[on] = ([h["loss"] for h in out["history"]], sft)
    for plain, real in zip(losses[False], losses[True]):
        assert plain == pytest.approx(real, abs=1e-5)


def test_the_shared_pass_inside_still_passes_the_cache_by_the_backbones_own_keyword():
    """The recording wrapper keeps the backbone's signature, which `share_pair_prefixes` reads the cache keyword's
    name from: transformers 5.2x takes `cache` and warns that `past_key_values` goes away."""
    import warnings

    from faithforge.training.shared_prefix import _cache_argument

    model = _tiny_llama().train()
    ids, mask = _pair_batch()
    with mlp_on_real_tokens(model):
        assert _cache_argument(model.model.forward) == _cache_argument(type(model.model).forward)
        with share_pair_prefixes(model), warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # the deprecated keyword would warn here
            model.model(input_ids=ids, attention_mask=mask)


def test_a_second_entry_on_the_same_model_leaves_the_work_to_the_first():
    """Nested, the outer MLP wrapper would be handed the inner one's gathered rows: a padded batch of one row
    then had its real positions zeroed (a review measured 0.46 off). The inner entry is a no-op instead."""
    model = _tiny_llama().eval()
    ids, mask = _pair_batch()
    ids, mask = ids[:1], mask[:1]
    assert not mask.all()
    real = mask.bool()
    expected = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    with mlp_on_real_tokens(model), mlp_on_real_tokens(model):
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (hidden - expected)[real].abs().max() < 1e-5
    assert "forward" not in model.model.__dict__ and "forward" not in model.model.layers[0].mlp.__dict__


def test_one_mlp_serving_two_layers_is_patched_once_and_put_back():
    model = _tiny_llama()
    model.model.layers[1].mlp = model.model.layers[0].mlp
    ids, mask = _pair_batch()
    expected = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    with mlp_on_real_tokens(model):
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert "forward" not in model.model.layers[0].mlp.__dict__
    assert (hidden - expected)[mask.bool()].abs().max() < 1e-5


def test_a_mixture_of_experts_that_records_router_logits_runs_as_before():
    """transformers records the router logits from inside the MLP, one row per position, and its load-balancing
    loss counts them against the (batch, seq_len) mask: with the padding skipped the rows would not match."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    model = MixtralForCausalLM(MixtralConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True,
        max_position_embeddings=64))
    ids, mask = _pair_batch()
    expected = model(input_ids=ids, attention_mask=mask, labels=ids)
    with mlp_on_real_tokens(model):
        out = model(input_ids=ids, attention_mask=mask, labels=ids)
    assert torch.equal(out.loss, expected.loss) and torch.equal(out.aux_loss, expected.aux_loss)
