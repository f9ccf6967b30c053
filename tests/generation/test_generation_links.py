"""Nothing outside the workspace is touched by `generate` (an attack, 2026-12-07): with `datasets/generated` (or
the spec's folder, or a folder below it) a symbolic link to another disk, every run deleted hidden `.*.tmp` files
over an hour old there, at any depth, and wrote its examples there. Now such a link is refused in one line before
anything is written, and the clean-up removes only the temporaries of the files it writes, never through a link."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faithforge.generation.coverage_db import CoverageDB
from faithforge.generation.files import reconcile

ROOT = Path(__file__).resolve().parents[2]
GROUNDED = str(ROOT / "configs" / "specs" / "grounded-summaries.yaml")
HOURS_AGO_3 = time.time() - 3 * 3600


def _generate(workspace: Path):
    import typer

    from faithforge.app.cli_generate import generate

    app = typer.Typer()
    app.command("generate")(generate)
    app.command("version")(lambda: None)  # keeps `generate` a sub-command, as in the real CLI
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, [
        "generate", "--spec", GROUNDED, "--backend", "template", "--target", "2", "--no-prefect", "-w",
        str(workspace)])


def _precious(folder: Path) -> Path:
    """A user's hidden file, three hours old, where the old clean-up removed any `.*.tmp`."""
    notes = folder / "notes" / ".ideas.tmp"
    notes.parent.mkdir(parents=True)
    notes.write_text("my notes")
    os.utime(notes, (HOURS_AGO_3, HOURS_AGO_3))
    return notes


@pytest.mark.parametrize("linked", ["datasets/generated", "datasets/generated/grounded-summaries",
                                    "datasets/generated/grounded-summaries/notes-link"])
def test_a_link_out_of_the_workspace_on_the_examples_path_is_refused_and_nothing_there_is_touched(tmp_path, linked):
    outside = tmp_path / "other-disk"
    notes = _precious(outside)
    workspace = tmp_path / "ws"
    (workspace / linked).parent.mkdir(parents=True)
    (workspace / linked).symlink_to(outside)
    before = sorted(p.relative_to(outside) for p in outside.rglob("*"))

    result = _generate(workspace)

    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "symbolic link" in lines[0] and "outside the workspace" in lines[0], result.output
    assert linked in lines[0] and "replace the link by a folder" in lines[0], result.output
    assert notes.read_text() == "my notes"
    assert sorted(p.relative_to(outside) for p in outside.rglob("*")) == before  # nothing written there


def test_a_link_that_stays_inside_the_workspace_is_followed(tmp_path):
    workspace = tmp_path / "ws"
    (workspace / "datasets" / "mine").mkdir(parents=True)
    (workspace / "datasets" / "generated").symlink_to(workspace / "datasets" / "mine")
    result = _generate(workspace)
    assert result.exit_code == 0, result.output
    assert len(list((workspace / "datasets" / "mine" / "grounded-summaries").glob("*/0*.json"))) == 2


def test_the_clean_up_removes_only_the_temporaries_of_the_files_it_writes(tmp_path):
    """With `--examples-dir` (a worker's folder) there is no workspace to check links against: the clean-up alone
    must spare what is not FaithForge's."""
    out = tmp_path / "examples"
    ours = [out / "c1" / ".000003.json.k2j4_x9a.tmp", out / "_quarantine" / ".00000007.json.ab12cd34.tmp",
            out / "_reasoning" / "c1" / ".000003.txt.zz99yy88.tmp"]
    fresh = out / "c1" / ".000004.json.k2j4_x9b.tmp"  # a live writer's: younger than the cut-off
    yours = [_precious(out), out / "c1" / ".draft.tmp", out / "c1" / ".notes.json.k2j4_x9a.tmp"]
    for path in [*ours, fresh, *yours[1:]]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    for path in [*ours, *yours]:
        os.utime(path, (HOURS_AGO_3, HOURS_AGO_3))
    elsewhere = _precious(tmp_path / "elsewhere")
    (out / "c1" / "linked").symlink_to(elsewhere.parent.parent)

    report = reconcile(CoverageDB(f"sqlite:///{tmp_path / 'c.db'}"), "s", out)

    assert report.stale_temp_files_removed == len(ours)
    assert not any(p.exists() for p in ours) and fresh.exists()
    assert all(p.exists() for p in yours) and elsewhere.read_text() == "my notes"
