"""Run each decoder layer's MLP on the batch's real tokens only, not on its padding.

A training batch is padded to its longest row, and every layer computes every position. On `demo --real`'s
pairs (seed 6) a DPO step's backbone computes 1,326 positions on average for 991 tokens (the shared-prefix pass's
16 answer rows are padded to the longest one), and an SFT-control step 889 for 751 (`bench/mlp_real_tokens.py`
counts them). The MLP is most of a layer's arithmetic (SmolLM2-135M: 3 × 576 × 1,536 multiply-adds a token
against 576 × (576 + 2 × 192 + 576) for the attention's projections) and, unlike attention, it is a function of
one position at a time, in every decoder (dense, gated, mixture of experts; a model asked for its router
logits runs as before, since its load-balancing loss counts them per position). So gathering the real positions,
running the MLP on those, and putting the result back in place gives every real position the same numbers up to
float rounding, with the padding's share of the MLP's work gone. Measured side by side on real TRL steps with
that run's pairs on 2 cores: a DPO step 1.21× faster, a control step 1.07×, losses within 1.2e-6 (BENCHMARKS.md,
issue 28). The attention's linear projections treated the same way gained nothing measurable (a gather and a
scatter per projection cost what the smaller matmuls save), so they compute the padding as before.

Padding positions get an MLP output of 0 instead of whatever the MLP made of a pad token. No real position reads
them: a padded key is masked out of attention, and losses, log-probs and metrics read only labelled positions.

`mlp_on_real_tokens(model)` puts this in place while a loss is computed. It records each backbone call's 2D
`attention_mask` (the shared-prefix pass calls the backbone twice per batch, with its own mask each time) and the
layers' MLPs read it. Calls without a 2D mask, batches with no padding, MLPs that return more than a tensor, and
decoders whose blocks are not `layers[i].mlp` (GPT-2's `h`) run as before. Under gradient checkpointing it does
nothing: the layers' forward runs again in backward, after the mask is gone, and would then compute a different
graph than the one it saved. The patches sit on the model instance: one thread runs the model while inside. With
dropout > 0 in the MLP (0 in every FaithForge default) its masks are drawn for the real rows only: another draw.
"""

from __future__ import annotations

import contextlib
from typing import Any


class _CallMask:
    """The real positions of the backbone call in progress: the (batch * seq_len,) flat indices of mask 1, for
    one hidden-state shape, computed once per call and read by every layer's MLP."""

    def __init__(self) -> None:
        self.mask = None  # (batch, mask_len) long/bool, the call's attention_mask, or None outside a call
        self.cached = False  # the call continues a KV cache: its mask also covers the cached positions
        self._index = None
        self._shape: tuple[int, int] | None = None

    def index_for(self, batch: int, seq_len: int):
        """Flat indices of the real positions among the last `seq_len` columns of the mask (a pass over a cached
        prefix gets the whole rows' mask and computes only the positions after the cache), or None when the mask
        does not fit these hidden states or every position is real. Without a cache the hidden states must span
        the whole mask: anything shorter is not this call's rows. Shape: the mask (batch, mask_len), 0/1;
        returns (n_real,) long, flat positions into batch * seq_len."""
        mask = self.mask
        if mask is None or mask.shape[0] != batch or mask.shape[1] < seq_len \
                or (mask.shape[1] != seq_len and not self.cached):
            return None
        if self._shape != (batch, seq_len):
            real = mask[:, mask.shape[1] - seq_len:].reshape(-1).bool()
            self._index = None if bool(real.all()) else real.nonzero().squeeze(1)
            self._shape = (batch, seq_len)
        return self._index

    def start(self, mask, cached: bool = False) -> None:
        self.mask, self.cached, self._index, self._shape = mask, cached, None, None

    def stop(self) -> None:
        self.start(None)


def mlp_rows(mlp_forward, hidden, index):
    """The MLP's output for the positions in `index` only, the other positions 0.

    Shapes: `hidden` (batch, seq_len, hidden_size); `index` (n_real,) long, flat positions into batch * seq_len.
    Returns (batch, seq_len, out_size), differentiable in `hidden` and in the MLP's parameters. The MLP is called
    on (1, n_real, hidden_size): a batch of one, as the layer would call it, so MLPs that read a 3D shape work."""
    batch, seq_len, width = hidden.shape
    flat = hidden.reshape(batch * seq_len, width)
    out = mlp_forward(flat.index_select(0, index).unsqueeze(0))
    if not hasattr(out, "shape"):  # a tuple (e.g. a router's logits beside the output): not this module's case
        return None
    out = out.squeeze(0)
    full = out.new_zeros(batch * seq_len, out.shape[-1]).index_copy(0, index, out)
    return full.view(batch, seq_len, out.shape[-1])


@contextlib.contextmanager
def mlp_on_real_tokens(model, enabled: bool = True):
    """While inside, every decoder layer's MLP computes only the positions the backbone call's mask marks real.

    `model` is the causal LM or any wrapper of one (PEFT, DDP's `module`). Enter it outside `share_pair_prefixes`
    so that the shared pass's two backbone calls are each seen with their own mask. A no-op when `enabled` is
    False, for models without `layers[i].mlp`, under gradient checkpointing, for a model that records its
    router logits, and inside another entry on the same model.
    """
    import functools

    from faithforge.training.shared_prefix import decoder_of

    backbone = decoder_of(model) if enabled else None
    mlps = list({id(layer.mlp): layer.mlp  # one module may serve several layers: patch it once
                 for layer in getattr(backbone, "layers", None) or () if hasattr(layer, "mlp")}.values())
    if (not mlps or getattr(backbone, _PATCHED, False)  # entered already: the outer context does the work
            or any(getattr(m, "gradient_checkpointing", False) for m in backbone.modules())
            or _records_router_logits(backbone)):
        yield
        return
    call = _CallMask()
    plain_backbone = backbone.forward

    @functools.wraps(plain_backbone)  # its signature: `share_pair_prefixes` reads the cache keyword's name from it
    def backbone_forward(*args: Any, **kwargs: Any):
        mask = kwargs.get("attention_mask")
        cached = any(kwargs.get(name) is not None for name in ("cache", "past_key_values"))
        call.start(mask if getattr(mask, "dim", lambda: 0)() == 2 else None, cached)
        try:
            return plain_backbone(*args, **kwargs)
        finally:
            call.stop()

    def real_token_forward(mlp):
        plain = mlp.forward
        returns_tuple = False  # learned on the first call: such an MLP is then called plainly

        def forward(*args: Any, **kwargs: Any):
            nonlocal returns_tuple
            hidden = args[0] if len(args) == 1 and not kwargs else None
            index = None if returns_tuple or getattr(hidden, "dim", lambda: 0)() != 3 else \
                call.index_for(hidden.shape[0], hidden.shape[1])
            out = None if index is None else mlp_rows(plain, hidden, index)
            if index is not None and out is None:
                returns_tuple = True
            return plain(*args, **kwargs) if out is None else out

        return forward

    patched = [(backbone, backbone_forward)] + [(mlp, real_token_forward(mlp)) for mlp in mlps]
    saved = [(module, module.__dict__.get("forward")) for module, _ in patched]
    for module, forward in patched:
        module.forward = forward
    setattr(backbone, _PATCHED, True)
    try:
        yield
    finally:
        delattr(backbone, _PATCHED)
        for module, own in saved:  # a forward set on the instance (accelerate's hooks) is put back
            if own is None:
                module.__dict__.pop("forward", None)  # the class's forward shows through again
            else:
                module.forward = own


#: Set on a backbone while its MLPs are patched, so a nested entry leaves them to the outer one.
_PATCHED = "_faithforge_mlp_on_real_tokens"


def _records_router_logits(backbone) -> bool:
    """A mixture-of-experts model asked for its router logits: transformers records them from inside the MLP, one
    row per position, and its load-balancing loss counts them against the (batch, seq_len) mask; with the
    padding skipped there are fewer rows than the mask has positions (a review's tiny Mixtral failed so)."""
    config = getattr(backbone, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "output_router_logits", False))
