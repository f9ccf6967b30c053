"""What a rerun may trust: verified reuse, one computation per output across processes, crashed runs marked,
and a warm start that resumes after SIGKILL."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faithforge.core.errors import UserError

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1])]), "TQDM_DISABLE": "1"}
TINY = {
    "generate": {"train_sources": 40, "val_sources": 10, "test_sources": 10},
    "warm_start": {"steps": 4, "batch_size": 8, "checkpoint_every": 2},
    "reference": {"shard_size": 32},
    "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 1},
}


def _config(workspace: Path):
    from faithforge.core.config import load_config

    return load_config(None, overrides={**TINY, "workspace": str(workspace)}, environ={})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A workspace with every stage up to DPO computed once (tiny sizes)."""
    from faithforge.stages.context import StageContext
    from faithforge.stages.gate import gate
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.model import base_model, warm_start
    from faithforge.stages.pairs import build_pairs
    from faithforge.stages.reference import reference_logps
    from faithforge.stages.train import train_dpo

    ctx = StageContext.open(_config(tmp_path_factory.mktemp("reuse") / "ws"))
    out = {"ctx": ctx, "plan": gate(ctx, "train")}
    out["dataset"] = generate_examples(ctx)
    out["base"] = base_model(ctx)
    out["model"] = warm_start(ctx, out["base"], out["dataset"], out["plan"])
    out["pairs"] = build_pairs(ctx, out["dataset"])
    out["reference"] = reference_logps(ctx, out["model"], out["pairs"], gate(ctx, "reference"))
    out["dpo"] = train_dpo(ctx, out["model"], out["pairs"], out["reference"], out["plan"])
    return out


# --- item 2: reuse verifies what it reuses -------------------------------------------------------------------------

def test_a_cut_test_split_is_regenerated_not_evaluated_short(built):
    from faithforge.stages.generate import generate_examples
    from faithforge.core.workspace import read_jsonl

    test = Path(built["dataset"].files["test"])
    rows = test.read_text().splitlines(keepends=True)
    test.write_text("".join(rows[:3]))
    again = generate_examples(built["ctx"])
    assert again.reused is False and "test.jsonl" in again.recomputed_because
    assert len(read_jsonl(test)) == len(rows) == 10
    assert generate_examples(built["ctx"]).reused is True  # and now it is whole again


def test_a_deleted_dpo_adapter_is_trained_again_not_reused(built):
    from faithforge.stages.train import train_dpo

    adapter = Path(built["dpo"].path) / "adapter_model.safetensors"
    adapter.unlink()
    again = train_dpo(built["ctx"], built["model"], built["pairs"], built["reference"], built["plan"])
    assert again.reused is False and "adapter_model.safetensors is missing" in again.recomputed_because
    assert adapter.is_file() and again.steps == TINY["train"]["steps"]


def test_a_corrupt_reference_shard_is_named_as_why_the_cache_was_recomputed(built):
    """Issue 25, item 10: a corrupt shard was only a WARNING log line, not in the summary's "recomputed" list."""
    from faithforge.stages.gate import gate
    from faithforge.stages.reference import reference_logps

    shard = Path(built["reference"].path) / "shard-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[20] ^= 0xFF
    shard.write_bytes(bytes(data))
    ctx = built["ctx"]
    again = reference_logps(ctx, built["model"], built["pairs"], gate(ctx, "reference"))
    assert again.reused is False and again.recomputed_because == "shard-00000.parquet is changed (checksum)"
    assert reference_logps(ctx, built["model"], built["pairs"], gate(ctx, "reference")).reused is True


def test_a_truncated_warm_start_model_is_trained_again_not_reused(built):
    from faithforge.stages.model import warm_start
    from faithforge.core.workspace import sha256_file

    weights = Path(built["model"].path) / "model.safetensors"
    original = sha256_file(weights)
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    again = warm_start(built["ctx"], built["base"], built["dataset"], built["plan"])
    assert again.reused is False and "model.safetensors" in again.recomputed_because
    assert sha256_file(weights) == original  # the same seed and data give the same model


def test_a_large_files_checksum_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    from faithforge.stages import reuse

    folder = tmp_path / "out"
    folder.mkdir()
    big = folder / "weights.bin"
    big.write_bytes(b"a" * 1000)
    reuse.write_manifest(folder, {"path": str(folder)})
    monkeypatch.setattr(reuse, "HASH_ALWAYS_BELOW", 100)  # make 1000 bytes "large"
    hashed = []
    real = reuse.sha256_file
    monkeypatch.setattr(reuse, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert reuse.verify(folder)[0]["reused"] is True and hashed == []  # size + mtime match: no read
    stat = big.stat()
    big.write_bytes(b"b" * 1000)  # same size, new bytes, new mtime: hashed, and refused
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    info, why = reuse.verify(folder)
    assert info is None and "SHA-256 differs" in why and hashed == [big]


# --- item 5: two runs in one workspace compute each output once -----------------------------------------------------

_GENERATE_SCRIPT = """
import os, sys, time
from pathlib import Path
from test_durable_runs import _config
from faithforge.stages.context import StageContext
from faithforge.stages.generate import generate_examples
workspace, hold, go = sys.argv[1], sys.argv[2], sys.argv[3]

def progress(stage, done, total, message):
    print(f"PROGRESS {message}", flush=True)
    if hold != "-" and stage == "generate" and done == total:  # inside the output's lock, before it is written
        Path(hold).write_text(str(os.getpid()))
        while not Path(go).exists():
            time.sleep(0.05)

out = generate_examples(StageContext.open(_config(Path(workspace)), progress=progress))
print("RESULT reused=%s" % out.reused, flush=True)
"""


def test_a_second_run_waits_for_the_first_and_reuses_its_output(tmp_path):
    workspace, hold, go = tmp_path / "ws", tmp_path / "holding", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", _GENERATE_SCRIPT, str(workspace), str(hold), str(go)],
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        deadline = time.monotonic() + 300
        while not hold.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = subprocess.Popen([sys.executable, "-c", _GENERATE_SCRIPT, str(workspace), "-", "-"], env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        waiting = second.stdout.readline()  # blocks until the second run reports that it waits
        assert f"waiting for process {first.pid} on" in waiting, (waiting, second.stderr.read())
        go.write_text("go")
        out_first, err_first = first.communicate(timeout=300)
        out_second, err_second = second.communicate(timeout=300)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert "RESULT reused=False" in out_first, err_first
    assert "RESULT reused=True" in out_second, err_second
    assert "examples" not in out_second  # the second never generated anything itself
    # Said once, by the progress the caller shows: a warning log too printed it twice on the demo's terminal.
    assert "waiting for" not in err_second, err_second


def test_a_lock_held_elsewhere_can_be_refused_naming_the_holder(tmp_path):
    from faithforge.core.locks import output_lock

    target = tmp_path / "adapters" / "dpo-0123456789abcdef"
    with output_lock(target, "train"):
        with pytest.raises(UserError, match=f"being computed by process {os.getpid()} on .* \\(train\\)"):
            with output_lock(target, "train", wait_s=0.3):
                pass


# --- item 4: killed runs are marked crashed -------------------------------------------------------------------------

def test_a_killed_run_is_marked_crashed_with_where_it_stopped(tmp_path, monkeypatch, capsys):
    from faithforge.core.store import Store

    workspace = tmp_path / "ws"
    workspace.mkdir()
    url = f"sqlite:///{workspace / 'faithforge.db'}"
    script = ("import os, signal, sys\nfrom faithforge.core.store import Store\n"
              "store = Store(sys.argv[1])\nrun = store.start_run('pipeline', {})\n"
              "store.record_stage(run, 'warm_start', status='completed')\nprint(run, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    child = subprocess.run([sys.executable, "-c", script, url], env=ENV, capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    killed = child.stdout.strip()
    store = Store(url)
    assert store.get_run(killed).status == "running"  # nobody has looked yet
    store.start_run("pipeline", {})  # the next start notices
    run = store.get_run(killed)
    assert run.status == "crashed" and run.finished_at is not None
    assert run.summary["crashed"]["last_stage"] == "warm_start (completed)"

    from faithforge.app.cli import main

    with pytest.raises(SystemExit) as code:
        main(["runs", "-w", str(workspace)])
    assert code.value.code == 0
    listing = capsys.readouterr().out
    line = next(row for row in listing.splitlines() if row.startswith(killed))
    assert "crashed" in line and "warm_start (completed)" in line

    # `runs` finds the same store where `demo` put it by the environment alone (an attack, 2026-12-07: it said
    # "no run store at ./.faithforge/faithforge.db" under FAITHFORGE_WORKSPACE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAITHFORGE_WORKSPACE", str(workspace))
    with pytest.raises(SystemExit) as code:
        main(["runs"])
    assert code.value.code == 0 and killed in capsys.readouterr().out


# --- item 6: the warm start resumes after SIGKILL -------------------------------------------------------------------

_SFT_SCRIPT = """
import os, signal, sys
from test_durable_runs import sft_inputs
from faithforge.training.sft import train_sft
model, tokenizer, examples = sft_inputs(sys.argv[1])

def die_at_5(step, loss):
    if step == 5:
        os.kill(os.getpid(), signal.SIGKILL)

train_sft(model, tokenizer, examples, steps=8, batch_size=4, learning_rate=1e-3, seed=0, on_step=die_at_5,
          checkpoint_dir=sys.argv[2], checkpoint_every=2)
"""


def sft_inputs(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from faithforge.training.sft import SftExample
    from faithforge.data.teacher import generate_split, prompt_messages

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.attention_dropout = 0.1  # randomness inside a step: resume must restore the RNG too
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = [SftExample(prompt_messages(e.source), e.warm_start_reference) for e in generate_split("train", 24, 0, 0.5)]
    return model, tokenizer, examples


def test_warm_start_sft_resumes_after_sigkill_to_the_same_weights(tiny_model_dir, tmp_path):
    import torch

    from faithforge.training.sft import train_sft

    checkpoints = tmp_path / "ckpt"
    child = subprocess.run([sys.executable, "-c", _SFT_SCRIPT, str(tiny_model_dir), str(checkpoints)], env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    [written] = [p.name for p in checkpoints.iterdir()]
    assert re.fullmatch(r"step-000004\.[0-9a-f]{16}\.pt", written), written  # the name carries its checksum
    damaged = tmp_path / "damaged"
    shutil.copytree(checkpoints, damaged)

    resumed_at = []
    model, tokenizer, examples = sft_inputs(str(tiny_model_dir))
    resumed = train_sft(model, tokenizer, examples, steps=8, batch_size=4, learning_rate=1e-3, seed=0,
                        checkpoint_dir=checkpoints, checkpoint_every=2, on_resume=resumed_at.append)
    straight_model, _, _ = sft_inputs(str(tiny_model_dir))
    straight = train_sft(straight_model, tokenizer, examples, steps=8, batch_size=4, learning_rate=1e-3, seed=0)
    assert resumed_at == [4]
    assert resumed == straight
    for (name, a), (_, b) in zip(model.state_dict().items(), straight_model.state_dict().items()):
        assert torch.equal(a, b), name

    # An attack garbled 16 bytes of a checkpoint: it still loaded, and the run resumed from wrong weights (loss
    # 1.8-2.3 instead of ~0.07, stored under the right key). Now it is not resumed from; the run starts over.
    garbled = damaged / written
    data = bytearray(garbled.read_bytes())
    middle = int(len(data) * 0.7)
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    garbled.write_bytes(bytes(data))
    restarted_at = []
    model, tokenizer, examples = sft_inputs(str(tiny_model_dir))
    again = train_sft(model, tokenizer, examples, steps=8, batch_size=4, learning_rate=1e-3, seed=0,
                      checkpoint_dir=damaged, checkpoint_every=2, on_resume=restarted_at.append)
    assert restarted_at == [] and again == straight
