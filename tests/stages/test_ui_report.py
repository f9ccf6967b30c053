"""The UI's markdown: charts travel inside it as data URIs; the gate's artifact says where a stage runs."""

from __future__ import annotations

import base64

from faithforge.stages.ui_report import (MAX_EMBEDDED_PNG_BYTES, image_markdown, pipeline_report_markdown, plan_markdown,
                                  png_data_uri, runs_on)


def _png(path, size=(40, 20)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(size[0] / 10, size[1] / 10), dpi=10)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def test_png_becomes_a_data_uri_and_anything_else_a_note(tmp_path):
    png = _png(tmp_path / "rates.png")
    uri = png_data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == png.read_bytes()
    assert image_markdown("Rates", png) == f"![Rates]({uri})"
    (tmp_path / "fake.png").write_text("not a png")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * MAX_EMBEDDED_PNG_BYTES)
    for path in (tmp_path / "missing.png", tmp_path / "fake.png", big, None):
        assert png_data_uri(path) is None
        note = image_markdown("Rates", path)
        assert note.startswith("*Rates: no chart") and "/" not in note.replace("2 MB", "")  # no path to a disk


def test_plan_markdown_says_where_the_stage_runs():
    record = {"stage": "reference", "placement": "gpu", "model": "tiny", "batch_size": 8, "grad_accum": 1,
              "estimated_peak_bytes": 2**29, "usable_bytes": 2**33, "reason": "fits",
              "snapshot": {"profile": "rtx5070-12gb"}}
    where = runs_on(record, cuda_available=False)
    assert where == ("this machine's CPU: the plan is for the simulated GPU `rtx5070-12gb`, and there is no CUDA "
                     "device here")
    assert runs_on(record, cuda_available=True).startswith("this machine's GPU")
    assert runs_on({**record, "placement": "offload", "offload_target": "a100"}, False).startswith("the `a100` work pool")
    assert runs_on({**record, "placement": "cpu"}, True) == "this machine's CPU"
    text = plan_markdown(record, where)
    assert f"**Runs on:** {where}" in text and "| gpu | tiny | 8 × 1 | 0.50 GiB | 8.00 GiB |" in text


def test_pipeline_report_has_rates_charts_report_and_where_each_stage_ran(tmp_path):
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "report.md").write_text("## Hallucination report\n\nDetails.\n")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    _png(adapter / "training.png")
    stages = {
        "warm_start": {"path": "x", "reused": True, "wall_seconds": 0.1},
        "train": {"path": str(adapter), "reused": False, "wall_seconds": 12.5, "offloaded_to": "a100",
                  "offload_flow_run": "brave-fox"},
        "evaluate": {"path": str(evaluation), "markdown_path": str(evaluation / "report.md"),
                     "chart": str(_png(evaluation / "rates.png")), "reused": False, "wall_seconds": 3.0,
                     "models": {"before": {"rate": 0.5, "rate_ci": [0.4, 0.6], "recall": 1.0},
                                "after": {"rate": 0.0, "rate_ci": [0.0, 0.02], "recall": 0.98}}},
        "control": None,
    }
    text = pipeline_report_markdown("run-1", stages)
    assert text.startswith("# FaithForge run run-1")
    assert "| before | 50.0% [40.0%, 60.0%], recall 100.0% |" in text
    assert text.count("](data:image/png;base64,") == 2 and "## Hallucination report" in text
    assert "| train | pool a100 (flow run brave-fox) | no | 12.5 |" in text
    assert "| warm_start | this machine | yes | 0.1 |" in text
