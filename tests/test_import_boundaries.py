"""The design card's boundaries, enforced: gpu/ imports no Prefect; flows/ imports no torch at import time;
the logic behind every task (faithforge/ outside the CLI and Prefect glue) imports no Prefect."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Modules of the faithforge package that exist to talk to Prefect (everything else is plain Python).
PREFECT_GLUE = {"prefect_settings.py", "demo_runner.py", "cli.py", "cli_generate.py", "offload.py"}


def _imports(path: Path, module_level_only: bool = False) -> set[str]:
    """Top-level package names imported by `path` (anywhere, or only when the module is imported)."""
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
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_gpu_package_never_imports_prefect():
    offenders = [str(p) for p in (ROOT / "gpu").rglob("*.py") if "prefect" in _imports(p)]
    assert offenders == []


def test_stage_logic_never_imports_prefect():
    offenders = []
    for path in (ROOT / "faithforge").rglob("*.py"):
        if path.name in PREFECT_GLUE:
            continue
        # A lazy import inside a function (e.g. resolving a Prefect Secret a user named) is allowed.
        if "prefect" in _imports(path, module_level_only=True):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], "task logic must stay plain Python (callable and testable without Prefect)"


def test_flows_import_no_torch_at_import_time():
    modules = sorted(p.stem for p in (ROOT / "flows").glob("*.py") if p.stem != "__init__")
    code = ("import sys\n" + "".join(f"import flows.{m}\n" for m in modules)
            + "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules]\n"
            + "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"flows imported {out.stdout.strip()} at import time"


def test_the_checker_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from prefect import flow\nimport torch.nn\ndef f():\n    import httpx\n")
    assert {"prefect", "torch", "httpx"} <= _imports(bad)
    assert _imports(bad, module_level_only=True) == {"prefect", "torch"}
