"""The DPO stage survives a CUDA OOM: it halves the micro-batch, doubles accumulation, and records it."""

import pytest

from faithforge.config import load_config
from faithforge.stages.context import StageContext


class FakeOom(RuntimeError):
    pass


FakeOom.__name__ = "OutOfMemoryError"  # how gpu.backoff recognizes torch.cuda.OutOfMemoryError


@pytest.mark.slow
def test_dpo_stage_backs_off_on_oom(tmp_path, monkeypatch):
    import faithforge.dpo as dpo
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.model import base_model
    from faithforge.stages.pairs import build_pairs
    from faithforge.stages.reference import reference_logps
    from faithforge.stages.train import train_dpo

    cfg = load_config(None, environ={}, overrides={
        "workspace": str(tmp_path / "ws"),
        "generate": {"train_sources": 40, "val_sources": 10, "test_sources": 10},
        "train": {"steps": 2, "batch_size": 8, "checkpoint_every": 1}, "control": {"sft_on_chosen": False}})
    ctx = StageContext.open(cfg)
    ctx.run_id = ctx.store.start_run("test", {})
    dataset = generate_examples(ctx)
    model = base_model(ctx)
    pairs = build_pairs(ctx, dataset)
    plan = {"stage": "train", "placement": "cpu", "model": "tiny", "batch_size": 8, "grad_accum": 1,
            "max_tokens": 128, "ref_strategy": "cached", "estimated_peak_bytes": 1, "usable_bytes": None,
            "headroom_bytes": None, "margin_bytes": 0, "breakdown": {}, "reason": "test", "fits": True,
            "policy": "stay-local", "requested_batch_size": 8, "requested_max_tokens": 128}
    reference = reference_logps(ctx, model, pairs, plan)

    real_run_dpo = dpo.run_dpo
    calls = []

    def flaky_run_dpo(*args, **kwargs):
        calls.append((kwargs["micro_batch"], kwargs["grad_accum"]))
        if len(calls) == 1:
            raise FakeOom("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run_dpo(*args, **kwargs)

    monkeypatch.setattr(dpo, "run_dpo", flaky_run_dpo)
    out = train_dpo(ctx, model, pairs, reference, plan)
    assert calls == [(8, 1), (4, 2)]  # effective batch kept at 8
    assert (out["micro_batch"], out["grad_accum"]) == (4, 2)
    assert out["oom_backoffs"][0]["error"].startswith("CUDA out of memory")
    assert any(s.stage == "train:oom-backoff" for s in ctx.store.stages(ctx.run_id))
