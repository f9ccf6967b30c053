"""A file you put inside a FaithForge output folder is moved to `<workspace>/kept/`, never deleted with the folder.

An attack found `--fresh` (and a recompute of a damaged output) deleting a user's notes placed inside
`pairs/pairs-<key>/`: the folder went whole. Now the files its manifest does not list are moved out first
(`faithforge.core.workspace.keep_your_files`), on both paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faithforge.core.workspace import KEPT_DIR, Workspace, atomic_directory, keep_your_files
from faithforge.stages.reuse import claim_output, write_manifest

KEY = "0123456789abcdef"


def _finished_output(ws: Workspace) -> tuple:
    """A pairs output as the stage leaves it: its files, then its manifest listing them."""
    out = ws.dir("pairs") / f"pairs-{KEY}"
    with atomic_directory(out) as tmp:
        (tmp / "train.jsonl").write_text('{"prompt": "p"}\n')
        (tmp / "reports").mkdir()
        (tmp / "reports" / "ranking.json").write_text("{}")
        write_manifest(tmp, {"path": str(out)}, "manifest.json")
    return out


def _kept(ws: Workspace, sub: str = "pairs", name: str = f"pairs-{KEY}") -> list:
    """The folders keeps of output `name` made, oldest first (one per keep: `<name>.<UTC time>[.N]`)."""
    return sorted((ws.root / KEPT_DIR / sub).glob(f"{name}.*"), key=lambda p: p.stat().st_mtime_ns)


def _put_your_files(out, outside):
    (out / "my-notes.txt").write_text("mine")
    (out / "reports" / "my-plot.png").write_bytes(b"\x89PNG")
    (out / "link-to-outside").symlink_to(outside)


def test_fresh_moves_your_files_out_of_an_output_before_removing_it(tmp_path, monkeypatch, capsys):
    from faithforge.app import demo_runner
    from faithforge.app.cli import main

    ws = Workspace.open(tmp_path / "W")
    out = _finished_output(ws)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("precious")
    _put_your_files(out, outside)
    monkeypatch.setattr(demo_runner, "run_pipeline_with_progress", lambda cfg, verbose=False: None)
    monkeypatch.setattr("faithforge.app.demo_report.print_summary", lambda summary: None)

    with pytest.raises(SystemExit) as code:
        main(["demo", "-w", str(ws.root), "--fresh"])
    assert code.value.code == 0

    [kept] = _kept(ws)
    assert not out.exists()
    assert (kept / "my-notes.txt").read_text() == "mine"
    assert (kept / "reports" / "my-plot.png").read_bytes() == b"\x89PNG"
    assert (kept / "link-to-outside").is_symlink() and (outside / "precious.txt").read_text() == "precious"
    assert not (kept / "train.jsonl").exists() and not (kept / "manifest.json").exists()  # FaithForge's went
    printed = capsys.readouterr().out
    assert f"kept your file {(kept / 'my-notes.txt').relative_to(ws.root)} (moved out of the output it removed)" in printed


def test_a_recompute_moves_your_files_out_when_it_replaces_the_output(tmp_path, caplog):
    ws = Workspace.open(tmp_path / "W")
    out = _finished_output(ws)
    (out / "my-notes.txt").write_text("mine")
    (out / "train.jsonl").write_text("damaged\n")  # a listed file changed: the stage must recompute

    with claim_output("pairs", out, "manifest.json") as claim:
        assert claim.reused is None and "train.jsonl" in claim.why
        with atomic_directory(out) as tmp:  # what the stage then does, for minutes or hours
            (out / "added-meanwhile.txt").write_text("also mine")  # a review found this one deleted
            (tmp / "train.jsonl").write_text('{"prompt": "q"}\n')
            claim.finish(tmp, {"path": str(out)})

    [kept] = _kept(ws)
    assert (kept / "my-notes.txt").read_text() == "mine" and (kept / "added-meanwhile.txt").read_text() == "also mine"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train.jsonl"]
    assert "kept your file" in caplog.text


def test_each_keep_has_its_own_folder_so_earlier_keeps_are_never_in_the_way(tmp_path):
    """A review found two ways an earlier keep broke a later one: a kept link `data -> /outside` sent a later
    `data/mine.txt` outside the workspace, and a kept file `notes` made a later folder `notes/` fail for good."""
    ws = Workspace.open(tmp_path / "W")
    outside = tmp_path / "outside"
    outside.mkdir()
    out = _finished_output(ws)
    (out / "data").symlink_to(outside)
    (out / "notes").write_text("a file")
    first = keep_your_files(ws.root, out)
    out = _finished_output(ws)
    (out / "data").mkdir()
    (out / "data" / "mine.txt").write_text("mine")
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("a folder")
    second = keep_your_files(ws.root, out)
    assert len(_kept(ws)) == 2 and len(first) == len(second) == 2
    assert list(outside.iterdir()) == []  # nothing went through the kept link
    assert all(path.is_relative_to(ws.root / KEPT_DIR) for path in first + second)
    assert sorted(path.read_text() for path in second) == ["a folder", "mine"]


def test_when_kept_links_out_of_the_workspace_the_output_stays_whole(tmp_path):
    ws = Workspace.open(tmp_path / "W")
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws.root / KEPT_DIR).symlink_to(outside)
    out = _finished_output(ws)
    (out / "my-notes.txt").write_text("mine")
    fresh = ws.remove_outputs()
    assert list(fresh.left) == [out] and "is a link" in fresh.left[out] and not fresh.removed and not fresh.moved
    assert (out / "my-notes.txt").read_text() == "mine" and list(outside.iterdir()) == []


def test_a_reference_cache_keeps_its_shards_and_sidecars_and_moves_the_rest(tmp_path):
    ws = Workspace.open(tmp_path / "W")
    cache = ws.dir("refcache") / KEY
    cache.mkdir()
    (cache / "shard-00000.parquet").write_bytes(b"p")
    (cache / "shard-00001.parquet.entry.json").write_text("{}")  # a rank's entry before the merge
    (cache / "manifest.json").write_text(json.dumps({"key": KEY, "shards": [{"name": "shard-00000.parquet"}]}))
    (cache / "mine.csv").write_text("a,b")
    moved = keep_your_files(ws.root, cache)
    assert [p.relative_to(_kept(ws, "refcache", KEY)[0]) for p in moved] == [Path("mine.csv")]
    assert sorted(p.name for p in cache.iterdir()) == ["manifest.json", "shard-00000.parquet",
                                                       "shard-00001.parquet.entry.json"]


@pytest.mark.parametrize("case", ["no manifest", "unreadable manifest", "workspace not FaithForge's"])
def test_nothing_is_moved_where_yours_cannot_be_told_from_faithforges(tmp_path, case):
    ws = Workspace.open(tmp_path / "W")
    out = _finished_output(ws)
    (out / "my-notes.txt").write_text("mine")
    if case == "no manifest":
        (out / "manifest.json").unlink()
    elif case == "unreadable manifest":
        (out / "manifest.json").write_text("{not json")
    else:
        (ws.root / ".faithforge-workspace").unlink()
    assert keep_your_files(ws.root, out) == [] and (out / "my-notes.txt").is_file()
    assert not (ws.root / KEPT_DIR).exists()


def test_kept_linked_into_an_output_is_refused_not_followed(tmp_path):
    """An attack linked kept -> models/tiny-<key>: the file was moved into that model, which the same --fresh then
    deleted, while the message said it was kept."""
    ws = Workspace.open(tmp_path / "W")
    model = ws.dir("models") / f"tiny-{KEY}"
    model.mkdir()
    (model / "faithforge.json").write_text(json.dumps({"checksums": {}}))
    (ws.root / KEPT_DIR).symlink_to(model)
    out = _finished_output(ws)
    (out / "my-notes.txt").write_text("mine")
    fresh = ws.remove_outputs()
    assert out in fresh.left and (out / "my-notes.txt").read_text() == "mine"


def test_a_leftover_of_an_earlier_swap_has_your_files_kept_before_it_goes(tmp_path):
    """An attack's second recompute deleted the `.X.old` the first had left (with your file in it) without a word."""
    ws = Workspace.open(tmp_path / "W")
    out = _finished_output(ws)
    (out / "my-notes.txt").write_text("mine")
    (ws.root / KEPT_DIR).write_text("a file where kept/ should be")  # the first swap cannot keep the note
    with atomic_directory(out) as tmp:
        write_manifest(tmp, {"path": str(out)}, "manifest.json")
    leftover = out.with_name(f".{out.name}.old")
    assert (leftover / "my-notes.txt").read_text() == "mine"  # left in place, said in the log
    (ws.root / KEPT_DIR).unlink()  # kept/ usable again
    with atomic_directory(out) as tmp:
        write_manifest(tmp, {"path": str(out)}, "manifest.json")
    assert not leftover.exists()
    assert [p.read_text() for p in (ws.root / KEPT_DIR).rglob("my-notes.txt")] == ["mine"]


def test_your_files_named_like_faithforges_temporaries_are_yours(tmp_path):
    ws = Workspace.open(tmp_path / "W")
    out = _finished_output(ws)
    yours = [".draft.tmp", ".backup.old", ".mine.lock", ".train.jsonl.notes.tmp"]
    for name in yours:
        (out / name).write_text("mine")
    (out / ".train.jsonl.ab12cd_9.tmp").write_text("half-written")  # FaithForge's temporary of a listed file
    moved = keep_your_files(ws.root, out)
    assert sorted(p.name for p in moved) == sorted(yours)


def test_a_damaged_checksum_entry_recomputes_instead_of_crashing(tmp_path):
    """An attack set a checksum entry to a string: every later run died with `TypeError` in `verify`."""
    ws = Workspace.open(tmp_path / "W")
    out = _finished_output(ws)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["checksums"]["train.jsonl"] = "deadbeef"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with claim_output("pairs", out, "manifest.json") as claim:
        assert claim.reused is None and "is damaged" in claim.why


def test_every_stage_output_name_is_known_as_faithforges_so_fresh_removes_it(tmp_path):
    """Each task's dataset folder, as the generate stage names it (`questions-…` for grounded-qa, `summaries-…`
    otherwise), is a FaithForge output: `--fresh` used to keep grounded-qa datasets as "not written by FaithForge"."""
    from faithforge.core.config import PipelineConfig
    from faithforge.core.workspace import written_by_faithforge
    from faithforge.evaluation.wording import WORDS
    from faithforge.stages.context import StageContext
    from faithforge.stages.generate import dataset_dir

    names = set()
    for task in ("summaries", "grounded-qa"):
        cfg = PipelineConfig.model_validate({"workspace": str(tmp_path / task), "generate": {"task": task}})
        names.add(dataset_dir(StageContext.open(cfg)).name)
    assert {name.rsplit("-", 1)[0] for name in names} == {w.dataset for w in WORDS.values()}
    assert all(written_by_faithforge(tmp_path / name) for name in names), names

    ws = Workspace.open(tmp_path / "ws")
    for name in names:
        (ws.dir("datasets") / name).mkdir()
    fresh = ws.remove_outputs()
    assert not fresh.not_ours and not any(ws.dir("datasets").iterdir()), fresh
