"""Each stage receives the config sections it declares (`@reads`), and nothing else."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import faithforge.stages as stages_package
from faithforge.core.config import load_config
from faithforge.stages.context import ConfigView, StageContext, reads

STAGES = Path(stages_package.__file__).parent


def _context(tmp_path) -> StageContext:
    return StageContext.open(load_config(None, environ={}, overrides={"workspace": str(tmp_path / "ws")}))


def test_a_stage_sees_its_sections_and_is_refused_any_other(tmp_path):
    seen = {}

    @reads("train", "seed")
    def stage(ctx: StageContext) -> None:
        seen["steps"], seen["seed"] = ctx.config.train.steps, ctx.config.seed
        ctx.config.evaluate  # noqa: B018 - the read under test

    with pytest.raises(AttributeError, match=r"stage 'stage' reads config.evaluate but declares only seed, train: "
                                             r"add 'evaluate' to its @reads"):
        stage(_context(tmp_path))
    assert seen == {"steps": 32, "seed": 0} or seen["seed"] == 0
    assert stage.config_sections == {"train", "seed"}


def test_a_stage_called_by_a_stage_sees_no_more_than_its_caller_declared(tmp_path):
    @reads("train")
    def inner(ctx: StageContext) -> int:
        return ctx.config.train.steps

    @reads("train", "seed")
    def fine(ctx: StageContext) -> int:
        return inner(ctx)

    @reads("seed")
    def too_narrow(ctx: StageContext) -> int:
        return inner(ctx)

    ctx = _context(tmp_path)
    assert fine(ctx) == ctx.config.train.steps
    with pytest.raises(AttributeError, match="caller 'too_narrow' does not declare: add it to too_narrow's @reads"):
        too_narrow(ctx)


def test_a_section_that_does_not_exist_is_refused_at_import():
    with pytest.raises(ValueError, match=r"@reads names \['trian'\]"):
        reads("trian")


def test_the_view_is_read_only(tmp_path):
    view = ConfigView(_context(tmp_path).config, frozenset({"seed"}), "stage")
    with pytest.raises(AttributeError, match="read-only"):
        view.seed = 3


def _stage_modules():
    for info in pkgutil.iter_modules([str(STAGES)]):
        yield info.name, importlib.import_module(f"faithforge.stages.{info.name}")


def test_every_stage_entry_declares_what_it_reads():
    """A public function of `faithforge/stages/` whose first parameter is the stage context is a stage entry."""
    entries = {}
    for name, module in _stage_modules():
        for fname, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ != module.__name__ or fname.startswith("_"):
                continue
            parameters = list(inspect.signature(function).parameters.values())
            if parameters and parameters[0].name == "ctx":
                entries[f"{name}.{fname}"] = getattr(function, "config_sections", None)
    assert len(entries) >= 12, entries
    assert not [entry for entry, sections in entries.items() if sections is None]


def _is_ctx_config(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "config" and isinstance(node.value, ast.Name)
            and node.value.id == "ctx")


def _config_reads(tree: ast.AST) -> set[str]:
    """Sections a module reads: `ctx.config.<section>`, and `<name>.<section>` where the name holds the whole
    config in that function (`cfg = ctx.config`, a parameter `config`, a parameter typed `PipelineConfig`)."""
    from faithforge.core.config import PipelineConfig

    found = set()
    for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        aliases = {a.arg for a in function.args.args
                   if a.arg == "config" or (a.annotation is not None and "PipelineConfig" in ast.unparse(a.annotation))}
        aliases |= {t.id for n in ast.walk(function) if isinstance(n, ast.Assign) and _is_ctx_config(n.value)
                    for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(function):
            if isinstance(node, ast.Attribute) and (
                    _is_ctx_config(node.value) or (isinstance(node.value, ast.Name) and node.value.id in aliases)):
                found.add(node.attr)
    return found & set(PipelineConfig.model_fields)


def test_a_stage_module_reads_only_sections_its_entries_declare():
    """The runtime view refuses an undeclared read on the paths the tests run; this reads every path's source."""
    for name, module in _stage_modules():
        if name == "context":  # opens a stage's context from the whole config: what the sections are cut from
            continue
        functions = [f for _, f in inspect.getmembers(module, inspect.isfunction) if f.__module__ == module.__name__]
        if not any(list(inspect.signature(f).parameters)[:1] == ["ctx"] for f in functions):
            continue  # no stage here (`preflight` checks the whole config before any stage starts)
        declared = set()
        for function in functions:
            declared |= set(getattr(function, "config_sections", ()))
        read = _config_reads(ast.parse((STAGES / f"{name}.py").read_text()))
        assert read <= declared, f"stages/{name}.py reads config.{sorted(read - declared)} that no entry declares"
