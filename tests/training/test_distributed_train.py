"""Training and the reference pass as real torchrun groups (gloo, 2 CPU processes, the tiny model): the same losses
and adapter as one process with the same global batch, a killed rank stops the group and the rerun resumes to the
same result, an OOM on one rank relaunches every rank with half the micro-batch, Ctrl-C stops every rank, and the
reference cache computed by 2 ranks is byte-identical to one process's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from tests.fixtures.dpo_support import REPO, build_cache, dpo_args, lora_policy, lora_state, make_pairs

from faithforge.training.distributed import GroupFailedError, run_group
from faithforge.training.dpo import last_complete_checkpoint, run_dpo
from faithforge.gpu.planner import Plan

STEPS = 4
GLOBAL = dict(micro_batch=2, grad_accum=2)  # one process: 2 × 2 = 4 pairs per step
PER_RANK = dict(micro_batch=2, grad_accum=1)  # two ranks: 2 × 1 × 2 = 4 pairs per step


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _pids(work: Path) -> dict[int, int]:
    return {int(p.stem.split("-")[1]): int(p.read_text()) for p in (work / "pids").glob("rank-*.pid")}


def _wait_for(path: Path, thread: threading.Thread | subprocess.Popen, why=None, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        done = thread.poll() is not None if isinstance(thread, subprocess.Popen) else not thread.is_alive()
        assert not done, f"the group ended before {path.name} appeared: {why}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.1)


@pytest.fixture(autouse=True)
def _ranks_import_the_drills(monkeypatch):
    """The ranks are fresh interpreters: they find `rank_faults` (tests/) through PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "tests")]))


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    pairs = make_pairs(8)
    cache, _ = build_cache(tiny_model_dir, pairs, root / "cache")
    (root / "pairs.json").write_text(json.dumps(pairs))
    model, tokenizer = lora_policy(tiny_model_dir, seed=3)
    one = run_dpo(model, tokenizer, pairs, cache.load(), dpo_args(root / "one", steps=STEPS, max_length=None,
                                                                   checkpoint_every=2, **GLOBAL))
    return {"root": root, "pairs": pairs, "cache": cache, "model": tiny_model_dir,
            "one": {"losses": [h["loss"] for h in one["history"]], "margins": [h["margin"] for h in one["history"]],
                    "adapter": lora_state(one["trainer"].model)}}


def _spec(setup, out: Path, callbacks=(), **per_rank) -> dict:
    cache = setup["cache"]
    args = dpo_args(out, steps=STEPS, max_length=None, checkpoint_every=2, **{**PER_RANK, **per_rank}).__dict__
    return {"kind": "dpo", "model_path": str(setup["model"]), "plan": Plan.manual("train", "cpu").to_dict(),
            "seed": 3, "pairs_path": str(setup["root"] / "pairs.json"), "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "reference": {"path": str(cache.directory), "key": cache.key, "components": cache.components,
                          "shard_size": cache.shard_size, "max_length": None},
            "args": {**args, "ddp_backend": "gloo"}, "callbacks": list(callbacks)}


def _adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _same_adapter(saved: dict, in_memory: dict) -> None:
    # peft saves without the adapter name: "...lora_A.weight" for "...lora_A.default.weight".
    ours = {k.replace(".default", ""): v for k, v in in_memory.items()}
    assert set(saved) == set(ours)
    for name, value in saved.items():
        torch.testing.assert_close(value, ours[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_rank_stops_the_group_and_the_rerun_equals_one_process(setup, monkeypatch):
    root = setup["root"]
    out, work = root / "ddp-kill", root / "work-kill"
    monkeypatch.setenv("FAITHFORGE_TEST_PAUSE_AT_STEP", "2")
    failure: list[BaseException] = []

    def launch() -> None:
        try:
            run_group(_spec(setup, out, ["tests.fixtures.rank_faults:pause_after_save"]), work, 2)
        except BaseException as exc:  # noqa: BLE001 - the test asserts on it
            failure.append(exc)

    group = threading.Thread(target=launch)
    group.start()
    _wait_for(work / "paused", group, failure)
    pids = _pids(work)
    assert set(pids) == {0, 1}
    os.kill(pids[1], signal.SIGKILL)
    killed = time.monotonic()
    group.join(timeout=30)
    assert not group.is_alive(), "the group did not stop within 30 s of a rank's death"
    assert time.monotonic() - killed <= 30
    print(f"group stopped {time.monotonic() - killed:.1f} s after rank 1 was killed")
    assert not any(_alive(pid) for pid in pids.values()), "a rank outlived the group"
    assert failure and isinstance(failure[0], GroupFailedError), failure
    assert last_complete_checkpoint(str(out)).endswith("checkpoint-2")

    monkeypatch.delenv("FAITHFORGE_TEST_PAUSE_AT_STEP")
    result = run_group(_spec(setup, out), work, 2).result
    assert result["resumed_from"].endswith("checkpoint-2") and result["steps"] == STEPS
    # Two ranks × micro-batch 2 = one process × micro-batch 2 × accumulation 2: the same steps on the same pairs.
    losses = [h["loss"] for h in result["history"]]
    assert [h["step"] for h in result["history"]] == list(range(1, STEPS + 1))
    assert losses == pytest.approx(setup["one"]["losses"], abs=1e-6)
    assert [h["margin"] for h in result["history"]] == pytest.approx(setup["one"]["margins"], abs=1e-6)
    _same_adapter(_adapter(work / "adapter"), setup["one"]["adapter"])


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_stopping_the_launching_process_stops_every_rank(setup, tmp_path, sig):
    """Ctrl-C: the task's wait is interrupted and stops the group's session. SIGKILL (nothing of the task runs any
    more): torchrun gets SIGTERM from the kernel (parent-death signal) and stops its ranks.

    The ranks pause after step 2's checkpoint (`rank_faults.pause_after_save`), so the signal always finds the group
    mid-run, whatever the machine's speed: a 4-step group can otherwise end before the signal is sent, and then the
    test checks nothing. (Its two failures in a full run on 2026-12-06 came from the suite being started with SIGINT
    ignored, which tests/conftest.py now undoes, not from timing.)"""
    work = tmp_path / "work"
    spec = _spec(setup, tmp_path / "out", ["tests.fixtures.rank_faults:pause_after_save"])
    script = ("import json, sys\n"
              "from faithforge.training.distributed import run_group\n"
              f"run_group(json.loads({json.dumps(json.dumps(spec))}), {str(work)!r}, 2)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1",
           "FAITHFORGE_TEST_PAUSE_AT_STEP": "2"}
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    _wait_for(work / "paused", parent)  # both ranks are mid-run, asleep after step 2's checkpoint
    pids = _pids(work)
    assert set(pids) == {0, 1}
    parent.send_signal(sig)  # Ctrl-C (or the CLI's stop) / a kill -9 of the process running the task
    stopped = time.monotonic()
    output, _ = parent.communicate(timeout=60)
    assert sig == signal.SIGKILL or "KeyboardInterrupt" in output
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() - stopped < 30:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids.values()), f"a rank survived {sig.name}"
    print(f"every rank gone {time.monotonic() - stopped:.1f} s after {sig.name}")


def test_an_event_line_goes_out_in_one_write_with_its_newline(monkeypatch):
    """Ranks share torchrun's pipe, and one pipe write under 4,096 bytes is never split: `print` wrote the text and
    its newline apart, and another rank's event landed between them (the suite, 2026-12-07: two events on one
    line, which the parent could not parse)."""
    from faithforge.training import distributed

    class Stdout:
        def flush(self) -> None:
            writes.append("flush")

        def fileno(self) -> int:
            return 1

    writes: list = []
    monkeypatch.setattr(distributed.sys, "stdout", Stdout())
    monkeypatch.setattr(distributed.os, "write", lambda fd, data: writes.append((fd, data)) or len(data))
    distributed.emit({"kind": "progress", "step": 2, "total": 3, "rank": 1})
    assert writes[0] == "flush" and len(writes) == 2  # what was printed before goes first, then one write
    fd, data = writes[1]
    assert fd == 1 and data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data[len(distributed.EVENT_PREFIX):]) == {"kind": "progress", "step": 2, "total": 3, "rank": 1}
