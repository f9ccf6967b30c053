"""Offload plumbing without a server: storage transfer, portable references, configs, messages, the yaml twin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faithforge.offload import dispatch as offload, storage
from faithforge.core.config import PipelineConfig
from faithforge.core.errors import UserError


def _tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)))


def test_publish_fetch_round_trip_and_skip_when_unchanged(tmp_path):
    """Offload moves stage folders (and single files) through faithforge.offload.storage, checksummed."""
    src = tmp_path / "src"
    _tree(src)
    url = str(tmp_path / "store" / "obj")
    index = storage.publish(src, url)
    assert {f["path"] for f in index["files"]} == {"a.txt", "sub/b.bin"}
    assert (Path(url) / storage.INDEX).is_file()
    dest = tmp_path / "dest" / "obj"
    storage.fetch(url, dest)
    assert (dest / "sub" / "b.bin").read_bytes() == bytes(range(256)) and (dest / "a.txt").read_text() == "alpha"
    # Same content: nothing is uploaded again (the stored bytes are left alone).
    stored = Path(url) / "a.txt"
    before = stored.stat().st_mtime_ns
    storage.publish(src, url)
    assert stored.stat().st_mtime_ns == before
    # A single file travels too, and comes back as a file.
    storage.publish(src / "a.txt", url + "-file")
    storage.fetch(url + "-file", tmp_path / "one.txt")
    assert (tmp_path / "one.txt").read_text() == "alpha"


def test_fetch_refuses_corrupt_or_incomplete_objects(tmp_path):
    src = tmp_path / "src"
    _tree(src)
    url = str(tmp_path / "store" / "obj")
    storage.publish(src, url)
    (Path(url) / "a.txt").write_text("tampered")
    dest = tmp_path / "dest"
    with pytest.raises(UserError, match="does not match the published checksum"):
        storage.fetch(url, dest)
    assert not dest.exists()  # nothing half-written is left behind
    with pytest.raises(UserError, match="nothing is published"):
        storage.fetch(str(tmp_path / "store" / "missing"), dest)


def test_portable_paths_move_between_two_workspaces(tmp_path):
    storage = str(tmp_path / "storage")
    parent_ws, child_ws = tmp_path / "parent", tmp_path / "child"
    pairs_dir = parent_ws / "pairs" / "pairs-k1"
    pairs_dir.mkdir(parents=True)
    (pairs_dir / "train.jsonl").write_text("{}\n")
    own_model = tmp_path / "models" / "my-sft"
    own_model.mkdir(parents=True)
    (own_model / "config.json").write_text("{}")
    inputs = {"pairs": {"path": str(pairs_dir), "train": str(pairs_dir / "train.jsonl"), "key": "k1",
                        "counts": {"train": 3}},
              "model": {"path": str(own_model)}, "note": "/definitely/not/a/real/path"}
    portable = offload.to_portable(inputs, parent_ws, storage)
    assert portable["pairs"]["path"] == "@storage/workspace/pairs/pairs-k1"
    assert portable["pairs"]["train"] == "@storage/workspace/pairs/pairs-k1/train.jsonl"
    assert portable["model"]["path"].startswith("@storage/external/") and portable["model"]["path"].endswith("/my-sft")
    assert portable["note"] == "/definitely/not/a/real/path" and portable["pairs"]["counts"] == {"train": 3}
    json.dumps(portable)  # small JSON only

    local = offload.from_portable(portable, child_ws, storage)
    assert local["pairs"]["train"] == str(child_ws / "pairs" / "pairs-k1" / "train.jsonl")
    assert Path(local["pairs"]["train"]).read_text() == "{}\n"
    assert (Path(local["model"]["path"]) / "config.json").is_file()
    assert Path(local["model"]["path"]).is_relative_to(child_ws)


def test_relocate_markers_points_reused_outputs_at_this_workspace(tmp_path):
    folder = tmp_path / "ws" / "adapters" / "dpo-k"
    folder.mkdir(parents=True)
    (folder / "faithforge.json").write_text(json.dumps({"path": "/worker/ws/adapters/dpo-k", "steps": 4,
                                                       "other": "/elsewhere/x"}))
    offload.relocate_markers(folder, "/worker/ws", str(tmp_path / "ws"))
    data = json.loads((folder / "faithforge.json").read_text())
    assert data == {"path": str(folder), "steps": 4, "other": "/elsewhere/x"}


def test_child_and_worker_configs():
    parent = PipelineConfig.model_validate({"workspace": "/home/me/ws", "database_url": "sqlite:////home/me/x.db",
                                            "storage_url": "s3://bucket/ff", "model": {"path": "/home/me/model"},
                                            "gpu": {"offload_pool": "a100", "profile": "rtx5070-12gb",
                                                    "offload_stages": ["train"]}})
    sent = offload.child_config(parent, "@storage/external/abc/model")
    assert sent["gpu"]["offload_pool"] is None and sent["gpu"]["profile"] is None
    assert sent["gpu"]["offload_stages"] == []  # offloaded on purpose once, run there, never sent on
    assert sent["database_url"] is None and sent["model"]["path"] == "@storage/external/abc/model"
    received = PipelineConfig.model_validate(sent)
    cfg = offload.worker_config(received, {"FAITHFORGE_WORKSPACE": "/data/ws", "FAITHFORGE_STORAGE_URL": "gs://b/ff",
                                           "FAITHFORGE_TRAIN__STEPS": "7", "FAITHFORGE_GPU_PROFILE": "a100-80gb"})
    assert cfg.workspace == "/data/ws" and cfg.storage_url == "gs://b/ff" and cfg.train.steps == 7
    assert cfg.gpu.offload_pool is None and cfg.gpu.profile is None  # the probe reads FAITHFORGE_GPU_PROFILE itself
    fallback = offload.worker_config(received, {})
    assert fallback.workspace.endswith(".faithforge-worker") and fallback.storage_url == "s3://bucket/ff"


def test_offload_stages_offload_on_purpose_and_need_a_pool():
    from faithforge.core.errors import ConfigError
    from faithforge.stages.gate import plan_pipeline
    from faithforge.gpu.profiles import profile_snapshot

    cfg = PipelineConfig.model_validate({"gpu": {"offload_pool": "a100", "offload_stages": ["train"],
                                                 "offload_profile": "a100-80gb"}})
    plans = plan_pipeline(cfg, profile_snapshot("rtx5070-12gb"))
    assert plans["train"].placement == "offload" and plans["train"].offload_target == "a100" and plans["train"].fits
    assert plans["train"].reason.startswith("gpu.offload_stages lists train, so it is offloaded to the pool 'a100'")
    assert "A100" in plans["train"].reason  # sized for the pool's GPU, not this one
    assert {plans[s].placement for s in ("reference", "evaluate", "warm_start")} == {"gpu"}  # the tiny model fits
    from faithforge.core.config import validate_config

    with pytest.raises(ConfigError, match="offload_stages .* needs offload_pool"):
        validate_config({"gpu": {"offload_stages": ["train"]}})
    with pytest.raises(ConfigError, match="offload_stages"):
        validate_config({"gpu": {"offload_pool": "a100", "offload_stages": ["warm_start"]}})


def test_a_stage_that_cannot_be_offloaded_says_it_runs_here():
    planned = {"stage": "warm_start", "placement": "offload", "offload_target": "a100", "reason": "Too large here."}
    ran = offload.runs_here(planned)
    assert ran["placement"] == "cpu" and ran["planned_placement"] == "offload" and ran["offload_target"] is None
    assert ran["reason"].endswith("warm_start cannot be offloaded (no deployment runs it), so it runs on this "
                                  "machine's CPU.")
    train = {**planned, "stage": "train"}
    assert offload.runs_here(train) is train  # an offloadable stage's offload plan is what happens


def test_settings_and_messages():
    cfg = PipelineConfig()
    assert offload.offload_timeout_s(cfg) == 600.0
    assert offload.offload_timeout_s(PipelineConfig(gpu={"offload_timeout_s": 12.5})) == 12.5
    with pytest.raises(offload.OffloadError, match="storage_url"):
        offload.storage_root(cfg, {})
    assert offload.storage_root(cfg, {"FAITHFORGE_STORAGE_URL": "s3://b/x/"}) == "s3://b/x"
    assert offload.deployment_name("train", "a100") == "faithforge-train/a100"
    with pytest.raises(offload.OffloadError):
        offload.deployment_name("generate", "a100")
    message = offload.no_worker_message("train", "a100", 30, 33.4)
    assert "within 30 s (gpu.offload_timeout_s; waited 33 s)" in message
    assert "'a100'" in message and "prefect worker start --pool a100" in message and "30 s" in message


def test_result_json_round_trip(tmp_path):
    import numpy as np

    storage = str(tmp_path / "storage")
    offload.write_result(storage, "run-1", {"outputs": {"rate": np.float64(0.25)}, "reused": False})
    assert offload.read_result(storage, "run-1") == {"outputs": {"rate": 0.25}, "reused": False}
    with pytest.raises(offload.OffloadError, match="same storage"):
        offload.read_result(storage, "run-2")


def test_docker_template_exposes_container_kwargs():
    from faithforge.deployments.deploy import docker_base_job_template

    template = {"job_configuration": {"image": "{{ image }}"}, "variables": {"properties": {"image": {}}}}
    out = docker_base_job_template(template)
    assert out["job_configuration"]["container_create_kwargs"] == "{{ container_create_kwargs }}"
    assert "container_create_kwargs" in out["variables"]["properties"] and "container_create_kwargs" not in \
        template["job_configuration"]


def test_gpu_slot_without_a_limit(prefect_harness, monkeypatch):
    """A deployed run (enforced) on a server without the `gpu` limit fails and says how to create it; the
    local demo (not enforced) and CPU plans take no slot."""
    from prefect import flow

    import faithforge.tasks.offload as glue
    from faithforge.core.errors import UserError
    from faithforge.gpu.planner import Plan

    cfg = PipelineConfig()

    @flow
    def guarded(placement: str) -> str:
        with glue.gpu_slot(cfg, Plan.manual("train", placement)):
            return "ran"

    assert guarded("gpu") == "ran"  # not under a deployment: no slot, no error
    monkeypatch.setattr(glue, "enforce_gpu_limit", lambda config: True)
    assert guarded("cpu") == "ran"
    state = guarded("gpu", return_state=True)
    assert state.is_failed()
    with pytest.raises(UserError, match="prefect gcl create gpu"):
        state.result()


def test_a_run_taken_by_a_worker_that_never_starts_it_ends_within_the_offload_timeout(monkeypatch):
    """A worker that died between taking the child run and starting its flow left the run Pending and the
    pipeline waiting for ever (an attack, 2026-12-07): the Pending state now has the same time limit as the wait
    for a worker, and the child is cancelled. The client is a stand-in: a real server cannot be made to hold a run
    in Pending on demand; the states are Prefect's own."""
    import logging
    from types import SimpleNamespace

    from prefect.states import Pending, Scheduled

    from faithforge.tasks import offload as offload_tasks

    states = iter([Scheduled(), Pending()])
    set_states = []

    class Client:
        def read_flow_run(self, flow_run_id):
            return SimpleNamespace(state=next(states, Pending()))

        def set_flow_run_state(self, flow_run_id, state, force=False):
            set_states.append((state.type.value, state.message, force))

    monkeypatch.setattr(offload_tasks, "POLL_S", 0.01)
    monkeypatch.setattr(offload_tasks, "get_run_logger", lambda: logging.getLogger("test-offload"))
    with pytest.raises(offload.OffloadError) as err:
        offload_tasks._wait_for_child(Client(), "run-1", "train", "a100", pickup_timeout_s=1.0)
    assert "took the offloaded run but it did not start within 1 s" in str(err.value)
    assert "prefect worker start --pool a100" in str(err.value) and "\n" not in str(err.value)
    # Cancelling, so a worker alive after all stops the run it was starting
    assert set_states == [("CANCELLING", "taken by a worker that did not start it in time", True)]
