"""The design card's boundaries, enforced by folder: gpu/ imports nothing from faithforge/ and no Prefect; flows/
import no torch at import time; only faithforge/app/ may import Prefect when imported; each package of faithforge/
imports only the packages below it (the README's architecture section draws the same layers); no import cycles."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: What each package of faithforge/ may import from faithforge/ (any import, lazy ones included). `gpu/` (the
#: gate's arithmetic) may be imported from anywhere; `flows/`, `tasks/` and `deployments/` only from `app`.
LAYERS: dict[str, set[str]] = {
    "core": set(),
    "data": {"core"},
    "engine": {"core"},
    "backends": {"core", "data"},
    "evaluation": {"core", "data", "backends"},
    "generation": {"core", "data", "backends", "evaluation"},
    "training": {"core", "data", "engine", "evaluation"},
    "offload": {"core"},
    "gpu_calibration": {"core", "data", "engine", "training"},
    "stages": {"core", "data", "engine", "backends", "evaluation", "generation", "training", "offload",
               "gpu_calibration"},
}
LAYERS["app"] = set(LAYERS) | {"stages", "app", "flows", "tasks", "deployments"}
#: The only folder whose modules may import Prefect when they are imported (the CLI and the demo runner).
PREFECT_FOLDER = "app"


#: Folders at the repository's top level installed inside the package (pyproject's package-dir): `gpu/x.py` is
#: `faithforge.gpu.x`.
NAMESPACED = ("flows", "tasks", "gpu", "deployments")


def _module_of(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] in NAMESPACED:
        parts = ["faithforge"] + parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, module_level_only: bool = False) -> set[str]:
    """Dotted names imported by `path` (`from a.b import c` gives both `a.b` and `a.b.c`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if module_level_only:
        nodes = []
        stack = list(tree.body)
        while stack:  # module body, including if/try blocks, but not function or class bodies
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            nodes.append(node)
            stack.extend(ast.iter_child_nodes(node))
    else:
        nodes = list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _imports(path: Path, module_level_only: bool = False) -> set[str]:
    """Top-level package names imported by `path` (anywhere, or only when the module is imported)."""
    return {name.split(".")[0] for name in _imported_modules(path, module_level_only)}


def _faithforge_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "faithforge" and len(parts) > 1 else None


def _layer_violations(root: Path) -> list[str]:
    found = []
    for path in sorted((root / "faithforge").rglob("*.py")):
        rel = path.relative_to(root)
        if len(rel.parts) == 2:
            if rel.name != "__init__.py":
                found.append(f"{rel}: every module lives in a package of faithforge/ (see README's architecture)")
            continue
        package = rel.parts[1]
        allowed = LAYERS.get(package)
        if allowed is None:
            found.append(f"{rel}: package faithforge/{package}/ has no layer in LAYERS")
            continue
        for name in sorted(_imported_modules(path)):
            target = _faithforge_package(name)
            if target in {"flows", "tasks", "deployments"} and target not in allowed:
                found.append(f"{rel} imports {name}: only faithforge/app/ may import {target}/")
            elif target is not None and target != package and target != "gpu" and target not in allowed:
                found.append(f"{rel} imports {name}: faithforge/{package}/ may import only {sorted(allowed)}")
    return found


def _cycles(modules: dict[str, Path]) -> list[list[str]]:
    """Strongly connected groups of more than one module in the import graph (every import, lazy ones too)."""
    graph = {m: {n for n in _imported_modules(p) if n in modules and n != m} for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_gpu_package_imports_no_prefect_and_nothing_from_faithforge():
    offenders = [f"{p.relative_to(ROOT)}: {name}" for p in (ROOT / "gpu").rglob("*.py")
                 for name in sorted(_imported_modules(p))
                 if name.split(".")[0] == "prefect"
                 or (name.split(".")[0] == "faithforge" and name != "faithforge.gpu"
                     and not name.startswith("faithforge.gpu."))]
    assert offenders == []


def test_every_module_imports_the_namespaced_folders_through_faithforge():
    """flows/, tasks/, gpu/ and deployments/ are installed as faithforge.flows …: a bare `import gpu` would only work
    from the repository's root (and would load a second copy of the module beside faithforge.gpu)."""
    offenders = [f"{p.relative_to(ROOT)}: {name}" for top in ("faithforge", *NAMESPACED, "tests", "bench")
                 for p in (ROOT / top).rglob("*.py") for name in sorted(_imported_modules(p))
                 if name.split(".")[0] in NAMESPACED]
    assert offenders == []


def test_only_the_app_folder_imports_prefect_when_imported():
    offenders = []
    for path in (ROOT / "faithforge").rglob("*.py"):
        rel = path.relative_to(ROOT)
        if len(rel.parts) > 2 and rel.parts[1] == PREFECT_FOLDER:
            continue
        # A lazy import inside a function (e.g. resolving a Prefect Secret a user named) is allowed.
        if "prefect" in _imports(path, module_level_only=True):
            offenders.append(str(rel))
    assert offenders == [], "task logic must stay plain Python (callable and testable without Prefect)"


def test_each_package_imports_only_the_layers_below_it():
    assert _layer_violations(ROOT) == []


def test_there_are_no_import_cycles():
    modules = {_module_of(p): p for top in ("faithforge", "gpu", "flows", "tasks", "deployments")
               for p in (ROOT / top).rglob("*.py")}
    assert _cycles(modules) == []


def test_flows_import_no_torch_at_import_time():
    modules = sorted(p.stem for p in (ROOT / "flows").glob("*.py") if p.stem != "__init__")
    code = ("import sys\n" + "".join(f"import faithforge.flows.{m}\n" for m in modules)
            + "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules]\n"
            + "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"flows imported {out.stdout.strip()} at import time"


def test_the_checkers_catch_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from prefect import flow\nimport torch.nn\ndef f():\n    import httpx\n")
    assert {"prefect", "torch", "httpx"} <= _imports(bad)
    assert _imports(bad, module_level_only=True) == {"prefect", "torch"}
    # a lower layer reaching up, a flat module, an unknown package
    (tmp_path / "faithforge" / "data").mkdir(parents=True)
    (tmp_path / "faithforge" / "data" / "x.py").write_text("def f():\n    from faithforge.stages.train import t\n")
    (tmp_path / "faithforge" / "flat.py").write_text("")
    (tmp_path / "faithforge" / "attic").mkdir()
    (tmp_path / "faithforge" / "attic" / "y.py").write_text("")
    found = "\n".join(_layer_violations(tmp_path))
    assert "faithforge/data/x.py imports faithforge.stages.train" in found
    assert "faithforge/flat.py: every module lives in a package" in found
    assert "package faithforge/attic/ has no layer" in found
    # a cycle through a lazy import
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import b\n")
    b.write_text("def f():\n    import a\n")
    assert _cycles({"a": a, "b": b}) == [["a", "b"]]
