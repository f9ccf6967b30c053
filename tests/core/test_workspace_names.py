"""Workspace names are taken literally or refused, never changed (issue 25, item 6).

`FAITHFORGE_WORKSPACE="runs/run #2"` became `runs/run` (read as a YAML comment), a newline became a space, and
`-w "runs/db?mode=ro"` wrote the run database outside the workspace (the path went unescaped into a SQLite URL).
"""

from __future__ import annotations

import pytest

from faithforge.core.config import load_config
from faithforge.core.errors import UserError
from faithforge.core.store import Store
from faithforge.core.workspace import Workspace


def test_a_workspace_name_from_the_environment_is_taken_literally(tmp_path):
    name = str(tmp_path / "runs" / "run #2")
    cfg = load_config(None, environ={"FAITHFORGE_WORKSPACE": name, "FAITHFORGE_DATABASE_URL": ""})
    assert cfg.workspace == name
    ws = Workspace.open(cfg.workspace)
    Store(ws.database_url).engine.dispose()
    assert (tmp_path / "runs" / "run #2" / "faithforge.db").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run #2"]
    # Text options keep what was written; numbers and lists are still read as YAML.
    cfg = load_config(None, environ={"FAITHFORGE_GENERATE__MODEL": "qwen3:8b # the big one",
                                     "FAITHFORGE_TRAIN__STEPS": "64", "FAITHFORGE_EVALUATE__JUDGE": "[grounding, nli]"})
    assert cfg.generate.model == "qwen3:8b # the big one" and cfg.train.steps == 64
    assert cfg.evaluate.judge == ["grounding", "nli"]


@pytest.mark.parametrize("name", ["runs/line\nbreak", "runs/tab\there", "runs/db?mode=ro"])
def test_a_name_that_cannot_be_taken_literally_is_refused_before_anything_is_written(name, tmp_path, monkeypatch,
                                                                                      capsys):
    from faithforge.app.cli import main

    def pipeline_would_start(*args, **kwargs):
        raise AssertionError(f"{name!r} was accepted: the pipeline would have started")

    monkeypatch.setattr("faithforge.app.demo_runner.run_pipeline_with_progress", pipeline_would_start)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FAITHFORGE_WORKSPACE", raising=False)
    with pytest.raises(SystemExit) as code:
        main(["demo", "-w", name])
    err = capsys.readouterr().err
    assert code.value.code == 2 and len(err.strip().splitlines()) == 1 and "workspace" in err
    assert list(tmp_path.iterdir()) == []  # no folder, no database, here or next to it
    monkeypatch.setenv("FAITHFORGE_WORKSPACE", name)
    with pytest.raises(SystemExit) as code:
        main(["demo"])
    assert code.value.code == 2 and list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="workspace"):
        Workspace.open(tmp_path / name)


def test_the_home_directory_and_the_filesystem_root_are_refused_as_workspaces(tmp_path, monkeypatch, capsys):
    """`-w ~` put eleven FaithForge entries (models/, datasets/, tmp/, faithforge.db, …) among the user's own, and
    `-w /` used the system's /tmp as the workspace's scratch (an attack, 2026-12-07)."""
    from faithforge.app.cli import main

    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("FAITHFORGE_WORKSPACE", raising=False)
    monkeypatch.setattr("faithforge.app.demo_runner.run_pipeline_with_progress",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("the pipeline would have started")))
    for given in (str(home), "~", f"{home}/."):
        with pytest.raises(SystemExit) as code:
            main(["demo", "-w", given])
        err = capsys.readouterr().err
        assert code.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert "your home directory" in err and str(home / ".faithforge") in err
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]  # nothing was written there
    with pytest.raises(UserError, match="filesystem's root"):
        Workspace.check("/")
    assert Workspace.check(home / ".faithforge") == (home / ".faithforge").resolve()
