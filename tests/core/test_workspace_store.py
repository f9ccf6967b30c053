import os

import pytest

from faithforge.core.errors import UserError
from faithforge.core.store import Store
from faithforge.core.workspace import (Workspace, atomic_directory, atomic_write_json, atomic_write_text,
                                       read_keyed_jsonl)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "f.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def _item(row, line):
    return type("Item", (), {"id": str(row.get("id", line)), "text": str(row["text"])})()


@pytest.mark.parametrize("body, says", [
    ('{"id": "a", "text": "x"}\n\n{"id": "b"}\n', "f.jsonl:3: not an item ('text'); each line needs id and text"),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "f.jsonl:2: id 'a' occurs twice"),
    ('{"id": "a", "text": "x"}\n{"id": \n', "f.jsonl: line 2: not valid JSON"),
    ('\n\n', "holds no rows; add JSON lines with id and text"),
])
def test_keyed_jsonl_names_the_line_to_fix(tmp_path, body, says):
    path = tmp_path / "f.jsonl"
    path.write_text(body)
    with pytest.raises(UserError, match=None) as caught:
        read_keyed_jsonl(path, _item, what="an item", needs="id and text")
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_keyed_jsonl_numbers_lines_as_the_editor_does(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"text": "x"}\n\n{"text": "y"}\n')
    assert [item.id for item in read_keyed_jsonl(path, _item, what="an item", needs="text")] == ["1", "3"]


def test_a_replaced_output_that_cannot_be_deleted_never_blocks_the_next_swap(tmp_path, caplog):
    """An attack made a file of an output read-only (`chattr +i`): its replaced copy stayed as `.NAME.old` without a
    word, and every later recompute of that output failed ("Directory not empty", naming the output). Now the swap
    goes round a stale `.old` and says what it could not delete. A real immutable file (root and chattr needed)."""
    import subprocess

    target = tmp_path / "adapter"
    target.mkdir()
    stuck = target / "README.md"
    stuck.write_text("first")
    if os.geteuid() != 0 or subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.skip("needs root and chattr to make a file no one can delete")
    try:
        with caplog.at_level("WARNING"):
            for round_ in range(2):
                with atomic_directory(target) as new:
                    (new / "weights").write_text(str(round_))
        assert (target / "weights").read_text() == "1"
        assert "could not delete" in caplog.text and str(tmp_path) in caplog.text
    finally:
        for left in tmp_path.glob(".adapter.*old/README.md"):
            subprocess.run(["chattr", "-i", str(left)], check=False)
        subprocess.run(["chattr", "-i", str(stuck)], check=False)


def test_atomic_directory_keeps_old_content_when_the_block_fails(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "w.bin").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "w.bin").write_text("half")
            raise RuntimeError("killed mid-save")
    assert (target / "w.bin").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_new_folder_written_meanwhile_by_another_command_is_never_replaced(tmp_path):
    """`tiny-model`, `model import` and `model export` never replace a folder they find; three `tiny-model` runs into
    one new folder all said "written" and the last replaced the others (an attack, 2026-12-07)."""
    import pytest

    from faithforge.core.errors import UserError

    target = tmp_path / "model"
    with pytest.raises(UserError, match=r"model was written by another command while this one worked; nothing was "
                                        r"replaced: choose a new folder"):
        with atomic_directory(target, new=True) as tmp:
            (tmp / "mine.txt").write_text("second")
            target.mkdir()
            (target / "theirs.txt").write_text("first")  # another command finished first
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder given by the user is written into
    with atomic_directory(empty, new=True) as tmp:
        (tmp / "a.txt").write_text("a")
    assert (empty / "a.txt").read_text() == "a"


def test_a_killed_writers_temporary_is_removed_by_the_next_write_of_the_same_folder(tmp_path):
    """A SIGKILLed `model export` left `.OUT.<random>.tmp` (359 MB) that later exports never removed (an attack)."""
    import subprocess
    import sys

    from faithforge.core.liveness import process_start

    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    gone_start = process_start(gone.pid)
    gone.kill()
    gone.wait()
    dead = tmp_path / f".out.{gone.pid}-{gone_start}-abc123.tmp"
    live = tmp_path / f".out.{os.getpid()}-{process_start(os.getpid())}-def456.tmp"  # another writer, running
    yours = tmp_path / ".out.draft.tmp"
    other = tmp_path / f".other.{gone.pid}-{gone_start}-abc123.tmp"  # another folder's: not this write's business
    for folder in (dead, live, yours, other):
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"x")
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "model.bin").write_bytes(b"m")
    assert not dead.exists() and live.exists() and yours.exists() and other.exists()
    assert (tmp_path / "out" / "model.bin").read_bytes() == b"m"


def test_a_killed_processs_scratch_folder_is_removed_by_the_next_one_and_its_own_at_the_end(tmp_path):
    """A SIGKILL during evaluation left a `tmp/gguf-evaluate-*` folder per kill that no rerun removed (an attack,
    2026-12-07): scratch folders carry their process, and a dead one's goes when the next asks for scratch."""
    import subprocess
    import sys

    from faithforge.core.liveness import process_start
    from faithforge.core.workspace import scratch_directory

    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    gone_start = process_start(gone.pid)
    gone.kill()
    gone.wait()
    import re
    import socket

    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())
    dead = tmp_path / f"gguf-evaluate-{host}-{gone.pid}-{gone_start}-abc123"
    live = tmp_path / f"gguf-evaluate-{host}-{os.getpid()}-{process_start(os.getpid())}-def456"  # running here
    elsewhere = tmp_path / f"gguf-evaluate-otherhost-{gone.pid}-{gone_start}-abc123"  # another machine's: unseen
    yours = tmp_path / "gguf-evaluate-notes"
    for folder in (dead, live, elsewhere, yours):
        folder.mkdir()
        (folder / "model.gguf").write_bytes(b"x")
    with scratch_directory(tmp_path, "gguf-evaluate-") as scratch:
        assert scratch.name.startswith(f"gguf-evaluate-{host}-{os.getpid()}-")
        (scratch / "adapter.gguf").write_bytes(b"a")
    assert not dead.exists() and live.exists() and elsewhere.exists() and yours.exists() and not scratch.exists()


def test_unwritable_workspace_says_what_to_fix(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        root = blocker / "ws"  # a path under a regular file can never be created, even by root
    else:
        root = tmp_path / "ro"
        root.mkdir(mode=0o500)
    with pytest.raises(UserError, match="not writable.*--workspace"):
        Workspace.open(root)


def test_store_runs_stages_and_lineage(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run = store.start_run("pipeline", {"seed": 0})
    store.record_stage(run, "gate:train", status="planned", plan={"placement": "cpu"})
    store.record_stage(run, "train", status="completed", outputs={"path": "/x"}, wall_seconds=1.5)
    data = store.add_artifact("dataset", "/d", "h1", run_id=run)
    pairs = store.add_artifact("pairs", "/p", "h2", run_id=run, parents=[data])
    ref = store.add_artifact("reference_cache", "/r", "h3", run_id=run, parents=[pairs])
    adapter = store.add_artifact("adapter", "/a", "h4", run_id=run, parents=[ref])
    evaluation = store.add_artifact("evaluation", "/e", "h5", run_id=run, parents=[adapter])
    assert [a.kind for a in store.ancestors(evaluation)] == ["adapter", "reference_cache", "pairs", "dataset"]
    # the same artifact recorded twice is one row, and its lineage edges are not duplicated
    assert store.add_artifact("pairs", "/p", "h2", parents=[data]) == pairs
    assert [a.id for a in store.parents(pairs)] == [data]
    store.finish_run(run, "completed", {"ok": True})
    assert store.get_run(run).status == "completed"
    assert [s.stage for s in store.stages(run)] == ["gate:train", "train"]
    assert store.stages(run)[0].plan == {"placement": "cpu"}


def test_store_rejects_unusable_url():
    with pytest.raises(UserError, match="database_url"):
        Store("notadialect://x")


def test_read_jsonl_names_file_and_line(tmp_path):
    from faithforge.core.workspace import read_jsonl

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2\n')
    with pytest.raises(UserError, match=r"pairs.jsonl: line 3: not valid JSON"):
        read_jsonl(path)
    with pytest.raises(UserError, match="cannot read"):
        read_jsonl(tmp_path / "missing.jsonl")


@pytest.mark.postgres
def test_store_and_lineage_on_postgresql():
    """The run store on PostgreSQL (FAITHFORGE_TEST_POSTGRES_URL, started by .ci/run), not only SQLite."""
    url = os.environ.get("FAITHFORGE_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("FAITHFORGE_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)")
    store = Store(url.replace("postgresql://", "postgresql+psycopg://", 1))
    run = store.start_run("pipeline", {"seed": 0, "nested": {"a": [1, 2]}})
    data = store.add_artifact("dataset", f"/d/{run}", f"h-{run}", run_id=run)
    adapter = store.add_artifact("adapter", f"/a/{run}", f"a-{run}", run_id=run, parents=[data])
    store.record_stage(run, "train", status="completed", plan={"placement": "gpu"}, wall_seconds=2.0)
    assert [a.id for a in store.ancestors(adapter)] == [data]
    assert store.stages(run)[0].plan == {"placement": "gpu"}
    store.finish_run(run, "completed", {"ok": True})
    assert store.get_run(run).config == {"seed": 0, "nested": {"a": [1, 2]}}


def test_fresh_refuses_a_directory_faithforge_did_not_create(tmp_path, monkeypatch, capsys):
    """`demo -w . --fresh` in a folder of yours deleted `models/mine.txt`; now it refuses and writes nothing."""
    from faithforge.app.cli import main

    mine = tmp_path / "d" / "models" / "mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("x")
    monkeypatch.chdir(tmp_path / "d")
    with pytest.raises(SystemExit) as code:
        main(["demo", "-w", ".", "--fresh"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and str(tmp_path / "d") in err and "not created by FaithForge" in err
    assert mine.read_text() == "x"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["models"]  # nothing written either


def test_fresh_removes_only_what_faithforge_wrote(tmp_path):
    from faithforge.core.workspace import MARKER

    ws = Workspace.open(tmp_path / "ws")
    assert ws.owned and (ws.root / MARKER).is_file()
    outputs = [ws.dir("models") / "tiny-0123456789abcdef", ws.dir("adapters") / "dpo-0123456789abcdef",
               ws.dir("refcache") / "0123456789abcdef", ws.dir("checkpoints") / "sft-0123456789abcdef"]
    for out in outputs:
        out.mkdir()
        (out / "weights.bin").write_bytes(b"w")
    lock = ws.dir("adapters") / ".dpo-0123456789abcdef.lock"
    lock.write_text("")
    yours = [ws.dir("models") / "mine.txt", ws.dir("adapters") / "my-adapter"]
    yours[0].write_text("x")
    yours[1].mkdir()
    (ws.root / "reports" / "eval-1").mkdir()
    fresh = ws.remove_outputs()
    removed, kept = fresh.removed, fresh.not_ours
    assert sorted(removed) == sorted(outputs) and lock.is_file()  # a lock file stays: a live run's flock is on it
    assert sorted(kept) == sorted(yours) and all(p.exists() for p in yours)
    assert (ws.root / "reports" / "eval-1").is_dir()  # history stays


def test_a_folder_of_yours_is_used_but_never_marked_as_ours(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    ws = Workspace.open(folder)
    assert not ws.owned
    with pytest.raises(UserError, match="not created by FaithForge"):
        ws.remove_outputs()
    assert Workspace.open(tmp_path / "new").owned and Workspace.open(tmp_path / "new").owned
