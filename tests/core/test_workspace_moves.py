"""A copied or moved workspace reuses its own outputs and nothing outside it (issue 25, item 4).

After `cp -a A B` a run on B listed its outputs under `A/...`; after `mv A A.moved` it said "base model … reused",
then failed with "No such file or directory": manifests recorded absolute paths, and the SFT control's key held
them (the same inputs in another folder got another key).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TINY = {
    "generate": {"train_sources": 40, "val_sources": 10, "test_sources": 10},
    "warm_start": {"steps": 4, "batch_size": 8, "checkpoint_every": 2},
    "reference": {"shard_size": 32},
    "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 1},
}


def _run_stages(workspace: Path) -> dict:
    from faithforge.core.config import load_config
    from faithforge.stages.context import StageContext
    from faithforge.stages.gate import gate
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.model import base_model, warm_start
    from faithforge.stages.pairs import build_pairs
    from faithforge.stages.reference import reference_logps
    from faithforge.stages.train import train_dpo, train_sft_control

    ctx = StageContext.open(load_config(None, overrides={**TINY, "workspace": str(workspace)}, environ={}))
    plan = gate(ctx, "train")
    out = {"generate": generate_examples(ctx)}
    out["base_model"] = base_model(ctx)
    out["warm_start"] = warm_start(ctx, out["base_model"], out["generate"], gate(ctx, "warm_start"))
    out["pairs"] = build_pairs(ctx, out["generate"])
    out["reference"] = reference_logps(ctx, out["warm_start"], out["pairs"], gate(ctx, "reference"))
    out["train"] = train_dpo(ctx, out["warm_start"], out["pairs"], out["reference"], plan)
    out["control"] = train_sft_control(ctx, out["warm_start"], out["pairs"], plan)
    ctx.store.engine.dispose()
    return out


def _paths(outputs: dict) -> list[str]:
    """Every path string in the stages' results."""
    found = []

    def walk(value):
        if isinstance(value, str) and value.startswith("/"):
            found.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for out in outputs.values():
        walk(json.loads(out.model_dump_json()))
    return found


def test_a_copied_then_moved_workspace_reuses_its_own_outputs(tmp_path):
    first = _run_stages(tmp_path / "A")
    shutil.copytree(tmp_path / "A", tmp_path / "B", symlinks=True)
    copied = _run_stages(tmp_path / "B")
    assert {name: out.reused for name, out in copied.items()} == {name: True for name in copied}
    paths = _paths(copied)
    assert paths and all(p.startswith(str(tmp_path / "B") + "/") for p in paths), paths
    assert copied["control"].path == str(tmp_path / "B" / Path(first["control"].path).relative_to(tmp_path / "A"))

    (tmp_path / "A").rename(tmp_path / "A.moved")
    moved = _run_stages(tmp_path / "A.moved")
    assert {name: out.reused for name, out in moved.items()} == {name: True for name in moved}
    assert all(p.startswith(str(tmp_path / "A.moved") + "/") for p in _paths(moved))
    for name, out in moved.items():  # every output it names is there
        assert Path(out.path).exists(), (name, out.path)
