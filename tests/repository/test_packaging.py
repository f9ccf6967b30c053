"""`pip install faithforge` adds one top-level import name: the folders flows/, tasks/, gpu/ and deployments/ stay
at the repository's top level and are installed as faithforge.flows, faithforge.tasks, faithforge.gpu and
faithforge.deployments (pyproject's package-dir), so another package named `tasks` or `gpu` cannot collide."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("faithforge", "flows", "tasks", "gpu", "deployments", "configs", "pyproject.toml", "README.md")


def test_the_wheel_installs_one_top_level_name_with_the_four_folders_inside_it(tmp_path):
    project = tmp_path / "project"  # a copy: building writes build/ and *.egg-info/ beside the sources
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            project.mkdir(exist_ok=True)
            shutil.copy2(source, project / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           str(project), "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = zipfile.ZipFile(next((tmp_path / "wheel").glob("faithforge-*.whl")))
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"faithforge"}
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert wheel.read(top_level).decode().split() == ["faithforge"]
    for folder in ("flows", "tasks", "gpu", "deployments"):
        expected = {f"faithforge/{folder}/{p.relative_to(ROOT / folder).as_posix()}"
                    for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
        assert expected <= set(names), f"{folder}/ is not installed whole under faithforge/{folder}/"
    assert any(n.startswith("faithforge/gpu/model_configs/") and n.endswith(".json") for n in names)
    assert {"faithforge/deployments/prefect.yaml", "faithforge/deployments/prefect.docker.yaml"} <= set(names)
    # The generation specs ship too, so the default `generate.spec` (configs/specs/…) is found outside a checkout.
    shipped = {f"faithforge/specs/{p.name}" for p in (ROOT / "configs" / "specs").iterdir() if p.suffix in (".yaml", ".jsonl")}
    assert shipped <= set(names), f"specs missing from the wheel: {sorted(shipped - set(names))}"


def test_the_default_spec_is_found_from_any_directory(tmp_path, monkeypatch):
    """A run started outside the checkout asked for `configs/specs/grounded-summaries.yaml` and was told the file
    it could not find; the shipped spec of that name is used instead. A path that names a folder of yours is not."""
    from faithforge.core.errors import UserError
    from faithforge.generation.spec import load_spec

    monkeypatch.chdir(tmp_path)
    assert load_spec("configs/specs/grounded-summaries.yaml").categories
    with pytest.raises(UserError, match="bundled: .*grounded-summaries.yaml"):
        load_spec("my-specs/grounded-summaries.yaml")
