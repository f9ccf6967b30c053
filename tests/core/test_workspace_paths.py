"""Nothing FaithForge deletes lies outside the real path of its workspace (issue 25, item 1).

`faithforge demo -w W --fresh` deleted `/outside/dpo-0123456789abcdef/` when `W/checkpoints` was a symbolic link
to `/outside`: `remove_outputs` iterated through the link. Now a derived sub-directory that links out of the
workspace is refused by a normal run and removed alone (the link, never what it points to) by `--fresh`, and
every cleanup goes through `remove_inside`. The property test builds random trees of files, folders and links
(inside, outside, dangling, loops) under every derived directory and runs every cleanup over them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faithforge.core.errors import UserError
from faithforge.core.workspace import (DERIVED_DIRS, Workspace, atomic_directory, drop_outside_links, remove_inside)

KEY = "0123456789abcdef"


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under `root`, links not followed: a file's SHA-256, a link's target, a folder's 'dir'."""
    found = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _outside_with_precious(base: Path) -> Path:
    outside = base / "outside"
    (outside / f"dpo-{KEY}").mkdir(parents=True)
    (outside / f"dpo-{KEY}" / "precious.txt").write_text("precious")
    return outside


def test_fresh_never_deletes_through_a_symlinked_subdirectory(tmp_path, monkeypatch, capsys):
    """The issue's reproduction through the CLI: the link alone goes, the message says so, precious.txt stays."""
    from faithforge.app import demo_runner
    from faithforge.app.cli import main

    workspace = Workspace.open(tmp_path / "W").root  # what `faithforge demo -w W` creates
    (workspace / "checkpoints").rmdir()
    outside = _outside_with_precious(tmp_path)
    (workspace / "checkpoints").symlink_to(outside)
    before = _snapshot(outside)

    def pipeline_starts_here(cfg, verbose=False):  # the pipeline itself is not under test: stop where it starts
        raise SystemExit(0)

    monkeypatch.setattr(demo_runner, "run_pipeline_with_progress", pipeline_starts_here)
    with pytest.raises(SystemExit) as code:
        main(["demo", "-w", str(workspace), "--fresh"])
    out = capsys.readouterr().out
    assert code.value.code == 0
    assert _snapshot(outside) == before and (outside / f"dpo-{KEY}" / "precious.txt").read_text() == "precious"
    assert f"removed the symbolic link {workspace / 'checkpoints'} alone" in out and str(outside) in out
    assert (workspace / "checkpoints").is_dir() and not (workspace / "checkpoints").is_symlink()


def test_remove_outputs_removes_a_symlinked_subdirectory_link_alone(tmp_path):
    """`remove_outputs` on a workspace whose sub-directory links out: the link goes, nothing behind it."""
    workspace = Workspace.open(tmp_path / "W")
    (workspace.root / "checkpoints").rmdir()
    outside = _outside_with_precious(tmp_path)
    (workspace.root / "checkpoints").symlink_to(outside)
    before = _snapshot(outside)
    removed = workspace.remove_outputs().removed
    assert _snapshot(outside) == before
    assert removed == [workspace.root / "checkpoints"] and not (workspace.root / "checkpoints").is_symlink()


def test_a_run_refuses_a_subdirectory_that_links_out_of_the_workspace(tmp_path):
    workspace = Workspace.open(tmp_path / "W").root
    (workspace / "models").rmdir()
    (workspace / "models").symlink_to(_outside_with_precious(tmp_path))
    with pytest.raises(UserError, match=r"models is a symbolic link to .*outside.*refuses it.*--fresh removes the "
                                        r"link alone"):
        Workspace.open(workspace)
    inner = workspace / "elsewhere"
    inner.mkdir()
    (workspace / "models").unlink()
    (workspace / "models").symlink_to(inner)  # a link that stays inside the workspace is fine
    assert Workspace.open(workspace).root == workspace
    # `cache` (and `reports`) are not what --fresh drops links of: the advice does not promise it (an attack found
    # it did, and --fresh then refused again with the same words)
    (workspace / "cache").rmdir()
    (workspace / "cache").symlink_to(tmp_path)
    with pytest.raises(UserError, match=r"cache is a symbolic link") as refused:
        Workspace.open(workspace)
    assert "--fresh" not in str(refused.value) and "replace the link by a folder" in str(refused.value)


# ---------------------------------------------------------------------------------------------------- property

#: Names an entry may get: FaithForge's output names (which `--fresh` removes) and a user's (which it keeps).
NAMES = [f"dpo-{KEY}", f"sft-{KEY}", f"tiny-{KEY}", KEY, f".dpo-{KEY}.tmp", f".sft-{KEY}.lock", "mine.txt", "notes"]
#: What an entry is: a file, a folder (with a file and a link inside), a link to an outside folder or file, to a
#: folder inside the workspace, to nothing, to itself, or to the folder holding it.
KINDS = ["file", "dir", "link-out-dir", "link-out-file", "link-in", "dangling", "loop-self", "loop-parent"]

entries = st.dictionaries(st.sampled_from(NAMES), st.sampled_from(KINDS), max_size=5)
trees = st.fixed_dictionaries({sub: st.tuples(st.sampled_from(["dir", "dir", "link-out", "dangling"]), entries)
                               for sub in DERIVED_DIRS})


def _make_entry(path: Path, kind: str, outside: Path, inside: Path) -> None:
    if kind == "file":
        path.write_text("ours or yours")
    elif kind == "dir":
        path.mkdir()
        (path / "weights.bin").write_bytes(b"w")
        (path / "to-outside").symlink_to(outside)  # rmtree must unlink this, not follow it
    elif kind == "link-out-dir":
        path.symlink_to(outside / f"dpo-{KEY}")
    elif kind == "link-out-file":
        path.symlink_to(outside / f"dpo-{KEY}" / "precious.txt")
    elif kind == "link-in":
        path.symlink_to(inside)
    elif kind == "dangling":
        path.symlink_to(outside / "missing")
    elif kind == "loop-self":
        path.symlink_to(path)
    elif kind == "loop-parent":
        path.symlink_to(path.parent)


def _build(base: Path, tree: dict) -> tuple[Path, Path]:
    outside = _outside_with_precious(base)
    for name in NAMES:  # outside folders with FaithForge's names: what a followed link would delete
        (outside / "sub" / name).mkdir(parents=True, exist_ok=True)
        (outside / "sub" / name / "keep.txt").write_text(name)
    root = Workspace.open(base / "W").root
    inside = root / "reports" / "inside-target"
    inside.mkdir()
    (inside / "r.txt").write_text("report")
    for sub, (how, children) in tree.items():
        folder = root / sub
        if how != "dir":
            folder.rmdir()
            if how == "link-out":
                folder.symlink_to(outside / "sub")
            else:
                folder.symlink_to(outside / "gone")
            continue
        for name, kind in children.items():
            _make_entry(folder / name, kind, outside, inside)
    return root, outside


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees)
def test_no_cleanup_ever_removes_anything_outside_the_workspace(tree):
    with tempfile.TemporaryDirectory() as tmp:
        root, outside = _build(Path(tmp), tree)
        before = _snapshot(outside)
        inside_before = _snapshot(root / "reports")
        # Every cleanup FaithForge has: a stage's checkpoint clean-up and output folder, an atomic folder swap over
        # whatever is there, and `--fresh` (links out dropped, then the outputs).
        for sub in DERIVED_DIRS:
            for name in NAMES:
                remove_inside(root, root / sub / name)
        for sub in DERIVED_DIRS:
            if (root / sub).is_dir() and os.path.realpath(root / sub).startswith(os.path.realpath(root)):
                for name in NAMES:
                    target = Workspace(root).output_dir(sub, name)
                    with atomic_directory(target) as new:
                        (new / "f").write_text("new")
        drop_outside_links(root)
        Workspace.open(root).remove_outputs()
        assert _snapshot(outside) == before
        assert _snapshot(root / "reports") == inside_before


def test_fresh_refuses_while_another_run_uses_the_workspace_and_keeps_its_locks(tmp_path, monkeypatch, capsys):
    """An attack ran `demo --fresh` beside a running demo: it deleted the models the running one was reading (which
    died with a traceback) and the output locks it held. Now every demo holds the workspace's run lock shared and
    `--fresh` needs it alone; a held output lock (a run started by a worker) refuses it too; lock files stay."""
    import subprocess
    import sys
    import textwrap

    from faithforge.app import demo_runner
    from faithforge.app.cli import main
    from faithforge.core.locks import RUN_LOCK

    workspace = Workspace.open(tmp_path / "W").root
    output = workspace / "pairs" / f"pairs-{KEY}"
    output.mkdir()
    (output / "train.jsonl").write_text("{}\n")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from faithforge.core.locks import hold_workspace
        hold_workspace({str(workspace)!r})
        print("holding", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        monkeypatch.setattr(demo_runner, "run_pipeline_with_progress", lambda cfg, verbose=False: None)
        monkeypatch.setattr("faithforge.app.demo_report.print_summary", lambda summary: None)
        with pytest.raises(SystemExit) as code:
            main(["demo", "-w", str(workspace), "--fresh"])
        assert code.value.code == 2
        assert "another FaithForge run is using" in capsys.readouterr().err
        assert (output / "train.jsonl").is_file()  # nothing deleted
    finally:
        holder.kill()
        holder.wait()
    assert (workspace / RUN_LOCK).is_file()
    # An output lock held by a run that holds no run lock (one a Prefect worker started): refused too.
    worker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from faithforge.core.locks import output_lock
        with output_lock(Path({str(output)!r}), "pairs"):
            print("computing", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "computing"
        with pytest.raises(SystemExit) as code:
            main(["demo", "-w", str(workspace), "--fresh"])
        assert code.value.code == 2 and "is computing" in capsys.readouterr().err
        assert (output / "train.jsonl").is_file()
    finally:
        worker.kill()
        worker.wait()
    with pytest.raises(SystemExit) as code:  # nobody else now: it removes the output and keeps the lock file
        main(["demo", "-w", str(workspace), "--fresh"])
    assert not output.exists() and (workspace / "pairs" / f".pairs-{KEY}.lock").is_file()
