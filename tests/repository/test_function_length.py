"""The house rule "small functions with one job": no function in the installed package has a body over 60 lines
(docstring excluded). Four had grown past it (the model card 88, the trained judge's training 87 and 65, the GGUF
writer 61) when a newcomer's review counted them (2026-12-07)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("faithforge", "flows", "tasks", "gpu", "deployments")
MAX_BODY_LINES = 60


def long_functions(root: Path = ROOT) -> list[str]:
    """`path:line name (n lines)` of each function whose body (docstring excluded) is over MAX_BODY_LINES."""
    found = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                body = node.body[1:] if ast.get_docstring(node) is not None else node.body
                lines = body[-1].end_lineno - body[0].lineno + 1 if body else 0
                if lines > MAX_BODY_LINES:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_body_is_over_60_lines():
    assert long_functions() == []


def test_the_count_sees_a_61_line_body_and_not_a_60_line_one(tmp_path):
    (tmp_path / "faithforge").mkdir()
    body = lambda n: "\n".join(f"    x{i} = {i}" for i in range(n))  # noqa: E731
    (tmp_path / "faithforge" / "m.py").write_text(f'def long():\n    """Doc."""\n{body(61)}\n\n\n'
                                                  f'def fits():\n    """Doc."""\n{body(60)}\n')
    assert long_functions(tmp_path) == ["faithforge/m.py:1 long (61 lines)"]
