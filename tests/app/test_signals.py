"""Ctrl-C and SIGTERM stop `faithforge demo` within 10 s, say where, leave no process, and a rerun resumes
(issue 25, item 2).

Ctrl-C sends SIGINT to the process group: Prefect's embedded server (a `uvicorn` child) died, the warm start went
on for minutes and the run ended with "Connection refused". Here one workspace is stopped at six moments: the
flow's start, before any stage reported progress, and one per kind of stage (building the base model, the full
fine-tune, the reference pass, LoRA training, evaluation),
by SIGINT or SIGTERM to the group or SIGTERM to the main process alone (what `timeout` sends). Each stop: exit
within 10 s with status 130, one line naming where and that a rerun resumes, the run `cancelled` in `faithforge
runs`, no process of the group left (the process table is read). A last rerun finishes, and its models and rates
equal an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import glob
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from faithforge.core.workspace import sha256_file
from tests.fixtures.processes import group_members

REPO = Path(__file__).resolve().parents[2]

CONFIG = """\
generate: {train_sources: 120, val_sources: 20, test_sources: 60}
warm_start: {steps: 100, batch_size: 16, checkpoint_every: 20}
reference: {shard_size: 16}
train: {steps: 12, batch_size: 8, checkpoint_every: 2}
evaluate: {bootstrap_samples: 200}
"""

def _a_run_is_running(workspace: Path) -> bool:
    """The run store holds a run of status `running`: the pipeline's flow has started (its first task wrote it),
    and no stage has reported progress yet."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{workspace / 'faithforge.db'}?mode=ro", uri=True,
                                                timeout=0.1)) as db:
            return bool(db.execute("select count(*) from runs where status = 'running'").fetchone()[0])
    except sqlite3.Error:  # not created yet, or its table not yet
        return False


#: (what the stop interrupts, the workspace file whose appearance means it is under way (or a test of the
#: workspace), signal, to whom; "twice": a second Ctrl-C half a second after the first, which stops at once)
MOMENTS = [
    # Before any stage reported progress Prefect's own SIGTERM handler held the signal: the stop took ~10 s and the
    # run was marked failed (a review's repro, 2026-12-07).
    ("the flow's start", _a_run_is_running, signal.SIGTERM, "group"),
    ("base model", "datasets/summaries-*/manifest.json", signal.SIGINT, "group"),
    ("warm-start SFT", "checkpoints/sft-[0-9a-f][0-9a-f][0-9a-f]*/*", signal.SIGTERM, "group"),
    ("reference log-probs", "refcache/*/shard-00000.parquet", signal.SIGINT, "group"),
    ("DPO training", "checkpoints/dpo-*/checkpoint-*", signal.SIGTERM, "main"),
    ("evaluate", "adapters/sft-control-*/adapter_model.safetensors", signal.SIGINT, "twice"),
]


#: What `faithforge demo` imports before its first stage, loaded once by the fork server (tests/fixtures/forked.py)
#: instead of in each of the eight runs (~8 CPU-s apiece on 2 cores). Not Prefect: `main()` sets Prefect's
#: environment before Prefect is first imported, as it does in a fresh interpreter.
PRELOAD = ["torch", "transformers", "peft", "trl", "datasets"]


@contextlib.contextmanager
def _demo_forks():
    """A fork server for `_demo`, in the environment a fresh `faithforge demo` process would see: the settings
    read once at import (OpenMP's wait policy at torch's import, tqdm's at its own) are set before the preload."""
    from faithforge.app.prefect_settings import OPENMP_WAIT_SETTINGS, omp_environment
    from tests.fixtures.forked import ForkServer

    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "TQDM_DISABLE": "1"}
    if not OPENMP_WAIT_SETTINGS & set(env):
        env.update(omp_environment())  # what `main()` would choose before importing torch
    with ForkServer(PRELOAD, env, cwd=REPO) as server:
        yield server


def _demo(forks, workspace: Path, config: Path, stop_when: str | Callable[[Path], bool] | None = None,
          sig=signal.SIGINT, to: str = "group"):
    """Run `faithforge demo` (its `main()`, in its own session, forked from `forks`); once `stop_when` matches a
    file in the workspace, send `sig`. Returns (exit status, output, seconds from the signal to the exit,
    processes of the group left after it). `stop_when`: a glob in the workspace, or a test of the workspace."""
    proc = forks.start("faithforge.app.cli:main", argv=["faithforge", "demo", "-w", workspace, "-c", config],
                       new_session=True)
    sent = None
    try:
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            if sent is None and stop_when and (stop_when(workspace) if callable(stop_when)
                                               else glob.glob(str(workspace / stop_when))):
                (os.kill if to == "main" else os.killpg)(proc.pid, sig)
                sent = time.monotonic()
                if to == "twice":
                    time.sleep(0.5)
                    # On a fast machine the first stop can be over by then (the whole stop took 0.4 s on an Intel
                    # Xeon, 2026-12-07): nothing is left to signal. A second Ctrl-C that meets the first's clean-up
                    # is tested with a child that makes it wait
                    # (`test_a_second_ctrl_c_while_the_first_waits_on_children_still_leaves_the_run_cancelled`).
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
                        sent = time.monotonic()  # from the second signal: "at once"
            if sent is not None and time.monotonic() - sent > 30:
                break
            time.sleep(0.05)
        stopped_after = time.monotonic() - sent if sent is not None else None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            stopped_after = float("inf")
        time.sleep(1.0)  # let the kernel hand orphans to init
        left = group_members(proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for _ in group_members(proc.pid):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
    return proc.returncode, proc.output(), stopped_after, left


def _runs(workspace: Path) -> list[dict]:
    from faithforge.core.store import Store

    store = Store(f"sqlite:///{workspace / 'faithforge.db'}")
    try:
        return store.list_runs(50)
    finally:
        store.engine.dispose()


def _results(workspace: Path) -> dict:
    """What a finished run produced: the warm-started model, both adapters and the rates."""
    out = {}
    for pattern in ("models/sft-*/model.safetensors", "adapters/sft-control-*/adapter_model.safetensors"):
        (path,) = glob.glob(str(workspace / pattern))
        out[pattern] = sha256_file(path)
    reports = sorted(glob.glob(str(workspace / "reports/eval-*/report.json")), key=os.path.getmtime)
    report = json.loads(Path(reports[-1]).read_text())
    out["rates"] = json.dumps(report.get("models", report), sort_keys=True, default=str)
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_ctrl_c_and_sigterm_stop_within_10_s_at_every_kind_of_stage_and_a_rerun_resumes(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(CONFIG)
    stopped = tmp_path / "stopped"
    with _demo_forks() as forks:
        _stop_at_every_moment_then_resume(forks, stopped, config, tmp_path / "straight")


def _stop_at_every_moment_then_resume(forks, stopped: Path, config: Path, straight: Path) -> None:
    for where, stop_when, sig, to in MOMENTS:
        code, output, seconds, left = _demo(forks, stopped, config, stop_when, sig, to)
        context = f"{where} ({sig.name} to the {to}):\n{output[-3000:]}"
        print(f"stopped at {where} ({sig.name} to the {to}) in {seconds:.1f} s")  # -s shows them
        assert seconds is not None, "the moment never came: " + context
        assert seconds <= (3 if to == "twice" else 10), f"took {seconds:.1f} s to stop at " + context
        assert code == 130, context
        assert left == [], f"processes left after the stop at {where}: {left}"
        said = [line for line in output.splitlines() if line.startswith(f"stopped on {sig.name}")]
        assert len(said) == 1 and said[0].endswith("rerun the same command to resume"), context
        assert len(said[0]) <= 300 and "Traceback" not in output and "Connection refused" not in output, context
        assert "embedded server exited" not in output, context  # killed by the stop: not started again
        newest = _runs(stopped)[0]
        assert newest["status"] == "cancelled", (newest, context)
    code, output, _, left = _demo(forks, stopped, config)
    assert code == 0 and left == [], output[-3000:]
    assert "reused" in output  # finished stages were kept
    statuses = [run["status"] for run in _runs(stopped)]
    assert statuses == ["completed"] + ["cancelled"] * len(MOMENTS), statuses

    code, output, _, _ = _demo(forks, straight, config)
    assert code == 0, output[-3000:]
    assert _results(stopped) == _results(straight)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_stops_faithforge_generate_and_its_embedded_server_and_a_rerun_keeps_what_was_written(tmp_path):
    """Round 3's leftover: Ctrl-C killed `faithforge generate`'s embedded Prefect server (same process group)
    while generation went on against it. Now it stops within 10 s with status 130, one line, no process left;
    the examples written before the stop are kept and the rerun counts them as done."""
    spec = REPO / "configs" / "specs" / "grounded-summaries.yaml"
    command = [sys.executable, "-m", "faithforge.app.cli", "generate", "--spec", str(spec), "--backend", "template",
               "--target", "3000", "--workspace", str(tmp_path / "ws")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    out = tmp_path / "out.txt"
    with open(out, "w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                cwd=tmp_path)
    written = tmp_path / "ws" / "datasets" / "generated" / "grounded-summaries"

    def examples() -> int:
        # Finished example files only: an atomic write's hidden temporary (`.000019.json.<random>.tmp`) also
        # matches `*.json*` and vanishes when the write lands or is stopped (CI once counted one as kept: 19 < 20).
        return sum(1 for p in written.glob("*/*.json") if not p.parent.name.startswith("_"))

    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and proc.poll() is None and examples() < 20:
            time.sleep(0.2)
        assert proc.poll() is None, out.read_text()[-2000:]
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        code = proc.wait(30)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(1.0)
    output = out.read_text()
    assert code == 130 and seconds <= 10, (code, seconds, output[-2000:])
    assert group_members(proc.pid) == [], output[-2000:]
    said = [line for line in output.splitlines() if line.startswith("stopped on SIGINT")]
    assert len(said) == 1 and "Traceback" not in output, output[-2000:]
    kept = examples()
    assert kept >= 20
    rerun = subprocess.run([*command, "--no-prefect", "--limit", "1"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=120)
    done = re.search(r"(\d+)/3000 examples \((\d+) new this run", " ".join((rerun.stdout + rerun.stderr).split()))
    assert done, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert int(done.group(1)) >= kept and int(done.group(2)) <= 1, rerun.stdout[-2000:]


#: A Ctrl-C that lands while Python runs a weakref callback: the handler's StopRequested is raised inside the
#: callback, where Python would print "Exception ignored" and carry on (seen in the suite at the base-model stage).
SWALLOWED = """
import gc, os, signal, sys, time, weakref
from faithforge.app.stopping import Stopper, StopRequested

class Thing:
    pass

def callback(_ref):
    os.kill(os.getpid(), signal.SIGINT)  # the handler runs at the callback's next bytecode, inside the callback
    for _ in range(1000):
        pass

stopper = Stopper(None, {}, say=lambda line: print("SAID", line, flush=True))
try:
    with stopper.installed():
        thing = Thing()
        ref = weakref.ref(thing, callback)
        del thing
        gc.collect()
        for _ in range(200):
            time.sleep(0.01)
        print("NOT STOPPED", flush=True)
except StopRequested as stop:
    print("STOPPED", stop, flush=True)
    os._exit(0)
"""


def test_a_stop_that_lands_inside_a_weakref_callback_still_stops_the_run():
    out = subprocess.run([sys.executable, "-c", SWALLOWED], capture_output=True, text=True, timeout=60)
    assert "STOPPED" in out.stdout and "NOT STOPPED" not in out.stdout, out.stdout + out.stderr
    assert "Exception ignored" not in out.stderr and out.stdout.count("SAID") == 1, out.stdout + out.stderr


#: The same, with the redelivered interrupt landing while the main thread is still inside the unraisable hook (on
#: a loaded machine the suite saw it: "Exception ignored in sys.unraisablehook", the run going on to the
#: watchdog's exit). The hook is made slow (its first `_in_hook = False` is delayed by 50 ms of Python calls) and
#: the redelivery thread made blind to it, so the interrupt lands inside the hook.
LANDS_IN_HOOK = SWALLOWED.replace("""stopper = Stopper(None, {}, say=lambda line: print("SAID", line, flush=True))""", """
import threading
import time as _time

class SlowHookStopper(Stopper):
    first = True

    def __setattr__(self, name, value):
        if name == "_in_hook" and value is False and SlowHookStopper.first and getattr(self, "_raised", None):
            SlowHookStopper.first = False
            object.__setattr__(self, "_blind", True)  # the loop thinks the hook was left: it interrupts now
            deadline = _time.monotonic() + 0.05
            while _time.monotonic() < deadline:
                len("the handler runs at one of these calls, inside the hook")
            object.__setattr__(self, "_blind", False)
        object.__setattr__(self, name, value)

    def __getattribute__(self, name):
        if name == "_in_hook" and object.__getattribute__(self, "__dict__").get("_blind") and \\
                threading.current_thread() is not threading.main_thread():
            return False
        return object.__getattribute__(self, name)

answered_inside = []
stopper = SlowHookStopper(None, {}, say=lambda line: print("SAID", line, flush=True))
handle = stopper._handle

def counting_handle(signum, frame):
    if stopper._in_hook:
        answered_inside.append(signum)
    return handle(signum, frame)

stopper._handle = counting_handle""").replace("""    print("STOPPED", stop, flush=True)""", """    print("STOPPED", stop, "answered inside the hook:", len(answered_inside), flush=True)""")


def test_a_redelivered_stop_that_lands_inside_the_hook_still_stops_the_run():
    assert "SlowHookStopper" in LANDS_IN_HOOK and "answered inside the hook" in LANDS_IN_HOOK
    out = subprocess.run([sys.executable, "-c", LANDS_IN_HOOK], capture_output=True, text=True, timeout=60)
    assert "STOPPED" in out.stdout and "NOT STOPPED" not in out.stdout, out.stdout + out.stderr
    assert "Exception ignored" not in out.stderr and out.stdout.count("SAID") == 1, out.stdout + out.stderr
    inside = int(out.stdout.split("answered inside the hook:")[1].split()[0])
    assert inside >= 1, out.stdout  # the moment under test did happen


#: A stop a library hands back as its own error (Prefect's task engine, once its server died with the group, raises
#: from its crash handler), after which the flow records the run `failed`: seen once in the suite, the run then
#: said "stopped on SIGINT" and exited 130 but stayed `failed`, and the children were left to the reaper.
CONVERTED = """
import os, signal, sys, time
from faithforge.app.stopping import Stopper
from faithforge.core.store import Store

url = sys.argv[1]
store = Store(url)
before = store.start_run("pipeline", {})
store.finish_run(before, "failed", {"error": "its own failure, before any stop"})
run = store.start_run("pipeline", {})
stopper = Stopper(url, {}, say=lambda line: print("SAID", line, flush=True))
try:
    with stopper.installed():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            store.finish_run(run, "failed", {"error": "Task run is not set"})  # the flow's `except BaseException`
            raise RuntimeError("Task run is not set")
except RuntimeError:
    print("RAISED", flush=True)
print({r["id"]: r["status"] for r in Store(url).list_runs(5)}[run], Store(url).get_run(before).status, flush=True)
os._exit(0)
"""


def test_a_stop_turned_into_a_librarys_error_still_marks_the_run_cancelled(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    out = subprocess.run([sys.executable, "-c", CONVERTED, url], capture_output=True, text=True, timeout=60)
    assert "RAISED" in out.stdout and out.stdout.count("SAID") == 1, out.stdout + out.stderr
    # the run stopped on request is `cancelled`; one that failed before any stop keeps `failed`
    assert out.stdout.strip().splitlines()[-1] == "cancelled failed", out.stdout + out.stderr


#: Prefect's flow engine after a stop, once its embedded server died with the process group: it proposes the run's
#: final state to the dead server and sleeps between retries (seen in 5 of 10 stops, each ending only at the
#: watchdog's 5 s). The "server" is a child whose command line is the embedded server's; it dies of the group's
#: SIGINT and stays a zombie (nobody reaps it, as Prefect does not while it retries).
DEAD_SERVER_RETRIES = """
import os, subprocess, sys, time
from faithforge.app import stopping

stopping.GRACE_S = float(sys.argv[1])
server = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)", "uvicorn",
                           "prefect.server.api.server:create_app"], stdout=subprocess.PIPE, text=True)
server.stdout.readline()
with stopping.Stopper(None, {}, say=lambda line: print("SAID", line, flush=True)).installed():
    from faithforge.core.progress import report

    report("stage", 0, 1)  # a progress report: the stopper notes the server (it may be a zombie by the signal)
    try:
        print("READY", flush=True)
        time.sleep(600)
    except KeyboardInterrupt:
        time.sleep(0.2)
        print("STILL WAITING", flush=True)  # Prefect's clean-up, retrying
        time.sleep(600)
"""


def _stopped(grace_s: float, to_group: bool) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-c", DEAD_SERVER_RETRIES, str(grace_s)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "READY"
        (os.killpg if to_group else os.kill)(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
        output = proc.stdout.read()  # the stand-in server, stopped by now, held the pipe open while it lived
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, output


def test_a_stop_ends_once_the_embedded_server_died_of_it_not_after_prefects_retries():
    # A grace of 10 minutes: only the dead server can have ended it within the test's 2 minutes.
    code, output = _stopped(600.0, to_group=True)
    assert code == 130 and output.count("SAID stopped on SIGINT") == 1, output


def test_a_stop_to_the_process_alone_leaves_prefect_its_grace_while_its_server_lives():
    code, output = _stopped(2.0, to_group=False)
    assert code == 130 and "STILL WAITING" in output and output.count("SAID") == 1, output


#: A second Ctrl-C while the first stop's clean-up waits for a child that takes 2.5 s to go after SIGTERM (a server
#: in its graceful shutdown): found in review, the second signal's exit skipped the run store, which the first
#: clean-up marked only after its children, and the run was left `running` (then shown crashed).
SECOND_WHILE_CHILDREN_STOP = """
import subprocess, sys, time
from faithforge.app.stopping import Stopper
from faithforge.core.store import Store

url = sys.argv[1]
store = Store(url)
run = store.start_run("pipeline", {})
slow = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                         "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(2.5), exit())); print('up', flush=True); "
                         "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
slow.stdout.readline()
print("RUN", run, flush=True)
with Stopper(url, {}, say=lambda line: print("SAID", line, flush=True)).installed():
    print("READY", flush=True)
    time.sleep(600)
"""


def test_a_second_ctrl_c_while_the_first_waits_on_children_still_leaves_the_run_cancelled(tmp_path):
    from faithforge.core.store import Store

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    proc = subprocess.Popen([sys.executable, "-c", SECOND_WHILE_CHILDREN_STOP, url], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        lines = []
        while not lines or lines[-1].strip() not in ("READY", ""):
            lines.append(proc.stdout.readline())
        run = next(line.split()[1] for line in lines if line.startswith("RUN"))
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.8)  # the first stop now waits on the slow child
        os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(60)
        output = "".join(lines) + proc.stdout.read()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 130 and "SIGINT again: stopping now" in output, output
    store = Store(url)
    try:
        assert store.get_run(run).status == "cancelled", output
    finally:
        store.engine.dispose()
