"""An evaluation's report folder appears whole or not at all (an attack, 2026-12-07: on a nearly full disk each
failed evaluate left a new `reports/eval-RUN/` holding only `report.md`, and those eat the space a rerun needs)."""

from __future__ import annotations

import copy
import errno

import pytest

from faithforge.core.config import load_config
from faithforge.core.errors import UserError
from tests.fixtures.small_config import SMALL_PIPELINE


def test_a_report_that_fails_midway_leaves_no_folder_and_the_rerun_writes_it_whole(tmp_path, monkeypatch):
    import faithforge.stages.evaluate as evaluate
    from faithforge.core.workspace import disk_full
    from tests.fixtures.inprocess_pipeline import run_stages

    overrides = copy.deepcopy(SMALL_PIPELINE)
    overrides["workspace"] = str(tmp_path / "ws")
    cfg = load_config(None, overrides=overrides, environ={})
    write_jsonl = evaluate.atomic_write_jsonl

    def full_disk(path, rows):  # the last file of the report, after report.md, report.json and the chart
        raise disk_full(path) from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluate, "atomic_write_jsonl", full_disk)
    with pytest.raises(UserError, match="no space left"):
        run_stages(cfg)
    reports = tmp_path / "ws" / "reports"
    assert sorted(p.name for p in reports.iterdir()) == []  # neither the folder nor its temporary

    monkeypatch.setattr(evaluate, "atomic_write_jsonl", write_jsonl)
    out = run_stages(cfg)["evaluate"]
    (folder,) = reports.iterdir()
    assert str(folder) == out.path
    assert {"report.md", "report.json", "rates.png", "outputs.jsonl"} <= {p.name for p in folder.iterdir()}
    assert out.chart == str(folder / "rates.png")
