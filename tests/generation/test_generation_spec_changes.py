"""A spec edited under its old name (an attack, 2026-12-07): with another output schema its new examples joined the
old ones in one dataset and counted toward the same target; now refused in one line before the run. Edits to
prompts, axes or quality keep what was made, as a rerun after tuning expects. And a store that cannot be opened
is named: "the run store at (the run store)" for a SQLite file in a missing folder."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml

from faithforge.core.errors import UserError
from faithforge.generation import job
from faithforge.generation.parameters import GenerateParameters
from faithforge.generation.schemas import GroundedSummary

ROOT = Path(__file__).resolve().parents[2]
GROUNDED = ROOT / "configs" / "specs" / "grounded-summaries.yaml"


def _variant(tmp_path: Path, name: str, change) -> str:
    spec = yaml.safe_load(GROUNDED.read_text())
    change(spec)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _with_title(spec: dict) -> None:
    schema = GroundedSummary.model_json_schema()
    schema["properties"]["title"] = {"type": "string"}
    schema["required"] = [*schema["required"], "title"]
    del spec["schema_model"]
    spec["schema"] = schema


def _params(spec: str, workspace: Path, target: int, **options) -> GenerateParameters:
    return GenerateParameters(spec=spec, workspace=str(workspace), target=target, use_gpu_gate=False,
                              **{"backend": "template", **options})


def test_another_output_schema_under_the_same_name_is_refused_and_a_prompt_edit_is_not(tmp_path):
    workspace = tmp_path / "ws"
    job.validate(_params(str(GROUNDED), workspace, 3))
    assert not (workspace / "faithforge.db").exists()  # nothing created to find out
    assert job.run(_params(str(GROUNDED), workspace, 3)).summary.done_total == 3

    changed = _variant(tmp_path, "titled", _with_title)
    with pytest.raises(UserError) as refused:
        job.validate(_params(changed, workspace, 4, backend="openai", base_url="http://127.0.0.1:9", model="m"))
    assert str(refused.value) == (
        "spec grounded-summaries: the output schema of category 'day-stated' (2 stored examples), 'day-omitted' "
        "(1 stored example) changed since those examples were made; they would be mixed with the new ones in one "
        "dataset: give the changed spec (or category) a new name, or put the old schema back")
    # and again under the plan's lock, for a run that did not go through `validate` (a worker beside another)
    from faithforge.generation.coverage_db import CoverageDB
    from faithforge.generation.spec import load_spec

    db = CoverageDB(f"sqlite:///{workspace / 'faithforge.db'}")
    with pytest.raises(UserError, match="the output schema of category 'day-stated'"):
        db.sync(load_spec(changed), {"day-stated": 3, "day-omitted": 1})
    db.close()

    tuned = _variant(tmp_path, "tuned", lambda spec: spec.update(system_prompt=spec["system_prompt"] + " Be brief."))
    assert job.run(_params(tuned, workspace, 4)).summary.done_total == 4  # the 3 made before still count
    renamed = _variant(tmp_path, "renamed", lambda spec: (_with_title(spec), spec.update(name="grounded-v2")))
    job.validate(_params(renamed, workspace, 4, backend="openai", base_url="http://127.0.0.1:9", model="m"))


def test_a_new_category_and_a_reworded_schema_keep_what_was_made(tmp_path):
    """Adding a category with the same schema was refused as "output schema changed" when the fingerprint covered
    every category together (a review, 2026-12-07); so would a docstring edit of a `schema_model`."""
    workspace = tmp_path / "ws"
    job.run(_params(str(GROUNDED), workspace, 3))

    def add_category(spec: dict) -> None:
        spec["categories"].append({**spec["categories"][0], "name": "extra"})

    job.validate(_params(_variant(tmp_path, "added", add_category), workspace, 4, backend="openai",
                         base_url="http://127.0.0.1:9", model="m"))

    def reworded(spec: dict) -> None:
        schema = GroundedSummary.model_json_schema()
        schema["properties"]["summary"]["description"] = "A faithful summary, reworded."
        del spec["schema_model"]
        spec["schema"] = schema

    assert job.run(_params(_variant(tmp_path, "reworded", reworded), workspace, 3)).summary.done_total == 3


def test_a_store_made_before_the_record_is_not_refused(tmp_path):
    """Examples of an older FaithForge (no `gen_specs` table): nothing tells their schema, so nothing is refused."""
    workspace = tmp_path / "ws"
    job.run(_params(str(GROUNDED), workspace, 2))
    with sqlite3.connect(workspace / "faithforge.db") as db:
        db.execute("DROP TABLE gen_category_schemas")
    job.validate(_params(_variant(tmp_path, "titled", _with_title), workspace, 4, backend="openai",
                         base_url="http://127.0.0.1:9", model="m"))


def test_a_sqlite_store_in_a_missing_folder_is_named_with_the_folder(tmp_path):
    missing = tmp_path / "no-such-dir" / "x.db"
    with pytest.raises(UserError) as refused:
        job.run(_params(str(GROUNDED), tmp_path / "ws", 2, database_url=f"sqlite:///{missing}"))
    assert str(refused.value) == (
        f"the run store {missing} cannot be opened: the folder {missing.parent} does not exist; create it, or point "
        "database_url at a file in a folder that exists")
    assert not missing.parent.exists()
