"""Watching what the stages load: every stage loads its model through `faithforge.training.modeling.load_for_plan`."""

from __future__ import annotations

from typing import Any, Callable


def watch_load_for_plan(monkeypatch, on_load: Callable[[Any, Any], None]) -> None:
    """Every `load_for_plan` call still loads for real; then `on_load(model, plan)` sees what it loaded (to record
    it, or to hook into it) before the stage gets it."""
    import faithforge.training.modeling as modeling

    real = modeling.load_for_plan

    def watched(path, plan):
        model, device = real(path, plan)
        on_load(model, plan)
        return model, device

    monkeypatch.setattr(modeling, "load_for_plan", watched)
