"""`demo --real --fresh` on a new folder marks it as FaithForge's before the model import writes into it
(issue 25, item 8): it spent 55 s importing SmolLM2, then refused the folder as "not created by FaithForge".
"""

from __future__ import annotations

import json

import pytest

from faithforge.core.workspace import MARKER


def test_real_fresh_marks_a_new_workspace_before_the_import_writes(tmp_path, monkeypatch, capsys):
    from faithforge.app.cli import main
    from faithforge.training import model_import

    workspace = tmp_path / "new"
    seen = {}

    def import_model(source, out, on_step=None):  # the 55 s SmolLM2 import is not under test: when it starts is
        seen["marked"] = (workspace / MARKER).is_file()
        out.mkdir(parents=True)
        (out / model_import.RECORD_NAME).write_text(json.dumps({"source": str(source)}))
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(model_import, "import_model", import_model)
    monkeypatch.setattr(model_import, "smollm2_gguf", lambda: tmp_path / "smollm2.gguf")
    monkeypatch.setattr("faithforge.app.demo_runner.run_pipeline_with_progress", lambda *a, **k: {"stopped": True})
    monkeypatch.setattr("faithforge.app.demo_report.print_summary", lambda summary: None)
    with pytest.raises(SystemExit) as code:
        main(["demo", "--real", "--fresh", "-w", str(workspace)])
    out = capsys.readouterr()
    assert code.value.code == 0, out.err
    assert seen == {"marked": True}
    assert "not created by FaithForge" not in out.err


def test_real_fresh_refuses_a_folder_of_yours_before_importing_into_it(tmp_path, monkeypatch, capsys):
    from faithforge.app.cli import main
    from faithforge.training import model_import

    yours = tmp_path / "yours"
    yours.mkdir()
    (yours / "notes.txt").write_text("mine")
    monkeypatch.setattr(model_import, "import_model", lambda *a, **k: pytest.fail("imported into a folder of yours"))
    monkeypatch.setattr(model_import, "smollm2_gguf", lambda: tmp_path / "smollm2.gguf")
    with pytest.raises(SystemExit) as code:
        main(["demo", "--real", "--fresh", "-w", str(yours)])
    assert code.value.code == 2 and "not created by FaithForge" in capsys.readouterr().err
    assert sorted(p.name for p in yours.iterdir()) == ["notes.txt"]
