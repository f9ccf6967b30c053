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


def test_the_view_is_read_only_and_copies_as_itself(tmp_path):
    import copy
    import pickle

    view = ConfigView(_context(tmp_path).config, frozenset({"seed", "train"}), "stage")
    with pytest.raises(AttributeError, match="read-only"):
        view.seed = 3
    for twin in (copy.copy(view), copy.deepcopy(view), pickle.loads(pickle.dumps(view))):
        assert twin.sections == view.sections and twin.train == view.train
        with pytest.raises(AttributeError, match="add 'evaluate' to its @reads"):
            twin.evaluate  # noqa: B018
    with pytest.raises(AttributeError, match="not the whole PipelineConfig"):
        view.model_dump()


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


class _Function:
    """What one function of the package reads of the config, whom it hands the context or the config to, and
    the sections it declares (None: no `@reads`)."""

    def __init__(self, node: ast.FunctionDef):
        args = node.args.args
        whole = {a.arg for a in args
                 if a.arg == "config" or (a.annotation is not None and "PipelineConfig" in ast.unparse(a.annotation))}
        whole |= {t.id for n in ast.walk(node) if isinstance(n, ast.Assign) and _is_ctx_config(n.value)
                  for t in n.targets if isinstance(t, ast.Name)}
        self.takes_ctx = bool(args) and args[0].arg == "ctx"

        def is_config(n: ast.AST) -> bool:
            return _is_ctx_config(n) or (isinstance(n, ast.Name) and n.id in whole)

        self.reads = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and is_config(n.value)}
        self.hands_to = set()
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            passed = list(call.args) + [k.value for k in call.keywords]
            if any(is_config(a) or (isinstance(a, ast.Name) and a.id == "ctx") for a in passed):
                func = call.func
                self.hands_to.add(func.id if isinstance(func, ast.Name) else getattr(func, "attr", ""))
        self.declared = None
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "reads":
                self.declared = {a.value for a in decorator.args if isinstance(a, ast.Constant)}


def _package_functions() -> dict[str, list[tuple[str, _Function]]]:
    """Every function of the installed package by name (several modules may define one name: all are kept)."""
    root = STAGES.parent
    found: dict[str, list[tuple[str, _Function]]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.setdefault(node.name, []).append((str(path.relative_to(root)), _Function(node)))
    return found


def test_every_declared_function_declares_exactly_what_it_reads_through_every_helper():
    """Statically, for each `@reads` function: its own reads, and those of every function it hands the context or
    the whole config to, across modules, are its declaration, no more and no less (a called `@reads` function counts with its own
    declaration, which the view allows only if it is narrower). The runtime view refuses an undeclared read on
    the paths the tests run; this reads every path. Names defined in several modules count with all of them."""
    from faithforge.core.config import PipelineConfig

    sections = set(PipelineConfig.model_fields)
    functions = _package_functions()

    def needs(name: str, seen: frozenset) -> set[str]:
        out: set[str] = set()
        for _, function in functions.get(name, []):
            if function.declared is not None and seen:  # a declared callee: its declaration, checked on its own
                out |= function.declared
                continue
            out |= function.reads & sections
            for callee in function.hands_to - seen:
                out |= needs(callee, seen | {name})
        return out

    problems, checked = [], 0
    for name, defs in functions.items():
        for path, function in defs:
            if function.declared is None:
                continue
            checked += 1
            needed = needs(name, frozenset())
            if needed - function.declared:
                problems.append(f"{path}:{name} reads config.{sorted(needed - function.declared)} without declaring it")
            if function.declared - needed:  # a declaration is the list of what can change the stage: exact
                problems.append(f"{path}:{name} declares config.{sorted(function.declared - needed)} it never reads")
    assert checked >= 16 and not problems, problems


def test_every_function_that_reads_a_stage_context_config_is_declared_or_called_by_one():
    """A function reading `ctx.config` outside every `@reads` function would get the whole config: none exists."""
    functions = _package_functions()
    reached: set[str] = set()
    todo = [n for n, defs in functions.items() if any(f.declared is not None for _, f in defs)]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        for _, function in functions.get(name, []):
            todo.extend(function.hands_to)
    loose = [f"{path}:{name}" for name, defs in functions.items() for path, function in defs
             if function.takes_ctx and function.reads and name not in reached and not path.startswith("stages/context")]
    assert not loose, loose


def test_no_code_reaches_past_a_view_to_the_whole_config():
    """`ConfigView` keeps the whole config in a slot (`_config`) that Python cannot hide; a review found this bypass
    of @reads. Only the view itself may touch it: no module of the package, its flows or its tasks does."""
    root = Path(stages_package.__file__).resolve().parents[2]
    offenders = []
    for folder in ("faithforge", "flows", "tasks", "deployments"):
        for path in sorted((root / folder).rglob("*.py")):
            if path.name == "context.py" and path.parent.name == "stages":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute) and node.attr in ("_config", "_sections"):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == [], f"reads a ConfigView's hidden whole config: {offenders}"
