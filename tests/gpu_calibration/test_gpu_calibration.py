"""`faithforge gpu calibrate`'s logic: the calibration file of measured ÷ predicted factors, and a measurement of the
real stage code (on the CPU here: its peak is the RSS)."""

from __future__ import annotations

import pytest

from faithforge.core.errors import UserError
from faithforge.gpu.corrections import Corrections
from faithforge.gpu.estimate import estimate_reference
from faithforge.gpu.model_shape import load_model_shape
from faithforge.gpu_calibration.calibrate import correction_factor, load_corrections, measure_stage, save_corrections


def test_calibration_file_round_trip_and_bad_file(tmp_path):
    path = tmp_path / "cal" / "gpu.json"
    assert load_corrections(path) == Corrections()
    saved = Corrections().with_factor("NVIDIA GeForce RTX 5070", "qwen2.5-7b", "train", 1.2)
    save_corrections(path, saved)
    assert load_corrections(path).factor("NVIDIA GeForce RTX 5070", "qwen2.5-7b", "train") == 1.2
    path.write_text('{"factors": {"just-a-name": 2}}', encoding="utf-8")
    with pytest.raises(UserError, match="unusable"):
        load_corrections(path)
    estimate = estimate_reference(load_model_shape("llama-3-8b"), batch_size=1, seq_len=128)
    assert correction_factor(estimate, estimate.total_bytes - (512 << 20)) == pytest.approx(1.0)


@pytest.mark.slow
def test_calibration_runs_the_real_stage_code_on_a_random_nf4_folder_on_cpu(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256}
    train = measure_stage(cfg, "train", precision="nf4", seq_len=48, batch_size=1, steps=2, lora_r=4, device="cpu",
                          workdir=tmp_path)
    # TRL's DPOTrainer ran both steps; without CUDA the nf4 plan loads on the CPU and the peak is the RSS
    assert {k: v for k, v in train.items() if k not in ("seconds", "peak_rss_bytes")} == {
        "stage": "train", "steps": 2, "device": "cpu"}
    assert train["peak_rss_bytes"] > 0
    for stage in ("reference", "evaluate"):
        run = measure_stage(cfg, stage, precision="nf4", seq_len=48, batch_size=2, steps=1, max_new_tokens=4,
                            device="cpu", workdir=tmp_path)
        assert set(run) == {"stage", "device", "peak_rss_bytes", "seconds"}, run  # no CUDA counters off CUDA
        assert (run["stage"], run["device"]) == (stage, "cpu") and run["peak_rss_bytes"] > 0
    assert list(tmp_path.iterdir()) == []  # the random model folders and caches went with their temp dirs


def test_factors_measured_against_other_estimates_are_set_aside(tmp_path, monkeypatch, caplog):
    """A factor is measured ÷ predicted: after the estimates change (ESTIMATE_REVISION), an old factor would
    multiply an estimate it was not measured against (a review, 2026-12-07). It is set aside, said in the log, and
    the next calibration writes a file of the new revision without it."""
    import json
    import logging

    from faithforge.gpu import corrections, estimate

    path = tmp_path / "gpu.json"
    save_corrections(path, Corrections().with_factor("GPU", "qwen2.5-7b", "train", 1.3))
    stored = json.loads(path.read_text())
    assert stored["estimate_revision"] == estimate.ESTIMATE_REVISION
    del stored["estimate_revision"]  # a file written before the revision was recorded: revision 1
    path.write_text(json.dumps(stored))
    assert load_corrections(path).factor("GPU", "qwen2.5-7b", "train") == 1.3

    monkeypatch.setattr(corrections, "ESTIMATE_REVISION", 2)
    monkeypatch.setattr(estimate, "ESTIMATE_REVISION", 2)
    with caplog.at_level(logging.WARNING):
        loaded = load_corrections(path)
    assert loaded.factor("GPU", "qwen2.5-7b", "train") == 1.0
    assert "measured against estimate revision 1, and these estimates are revision 2" in caplog.text
    save_corrections(path, loaded.with_factor("GPU", "qwen2.5-7b", "reference", 1.1))
    assert json.loads(path.read_text()) == {"version": 1, "estimate_revision": 2,
                                            "factors": {"GPU|qwen2.5-7b|reference": 1.1}}
    path.write_text(json.dumps({"version": 1, "estimate_revision": "two", "factors": {}}))
    with pytest.raises(UserError, match="estimate_revision must be a positive whole number"):
        load_corrections(path)
