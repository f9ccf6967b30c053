"""The README's architecture section maps every module, and names no module that does not exist.

The section is the bulleted list under "Where things live" (up to "### Boundaries"). Each bullet starts with
a folder in backticks (`faithforge/generation/`); a backticked `name.py` in that bullet means
`<folder>/name.py`, a backticked path that starts with a top-level folder (`faithforge/x.py`) means itself.
A module is any `.py` file other than `__init__.py` under the package folders below.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("faithforge", "flows", "tasks", "gpu", "deployments")
TOP_LEVEL = PACKAGES + ("tests", "bench")
START = "Where things live"
END = "### Boundaries"


def existing_modules(root: Path = ROOT) -> set[str]:
    return {p.relative_to(root).as_posix()
            for package in PACKAGES for p in (root / package).rglob("*.py")
            if p.name != "__init__.py" and "__pycache__" not in p.parts}


def architecture_section(readme: str) -> str:
    start = readme.index(START)
    return readme[start:readme.index(END, start)]


def bullets(section: str) -> list[str]:
    """Top-level bullets with their continuation lines joined."""
    out: list[str] = []
    for line in section.splitlines():
        if line.startswith("- "):
            out.append(line[2:])
        elif out and line.startswith("  "):
            out[-1] += " " + line.strip()
    return out


def mapped_modules(readme: str) -> set[str]:
    named: set[str] = set()
    for bullet in bullets(architecture_section(readme)):
        tokens = re.findall(r"`([^`\s]+)`", bullet)
        folder = tokens[0] if tokens and tokens[0].endswith("/") else ""
        for token in tokens:
            if not token.endswith(".py"):
                continue
            named.add(token if token.split("/", 1)[0] in TOP_LEVEL else folder + token)
    return named


def test_parser_reads_folder_relative_and_full_paths():
    readme = (f"{START}:\n\n- `gpu/` — `probe.py` (x), `a.json`\n  `planner.py`\n"
              "- `faithforge/core/` **core**: `store.py`, `faithforge/engine/kv.py`\n\n" + END)
    assert mapped_modules(readme) == {"gpu/probe.py", "gpu/planner.py", "faithforge/core/store.py",
                                      "faithforge/engine/kv.py"}


def test_every_module_is_mapped():
    missing = sorted(existing_modules() - mapped_modules((ROOT / "README.md").read_text()))
    assert not missing, f"add these modules to the README's architecture section: {missing}"


def test_every_mapped_module_exists():
    mapped = mapped_modules((ROOT / "README.md").read_text())
    absent = sorted(m for m in mapped if not (ROOT / m).is_file())
    assert not absent, f"the README's architecture section names modules that do not exist: {absent}"


def shared_names(root: Path = ROOT) -> dict[str, list[str]]:
    """File names used by more than one module of the installed package, and where."""
    by_name: dict[str, list[str]] = {}
    for module in sorted(existing_modules(root)):
        by_name.setdefault(module.rsplit("/", 1)[-1], []).append(module)
    return {name: paths for name, paths in by_name.items() if len(paths) > 1}


def test_a_shared_module_name_is_one_concept_at_two_layers_and_the_readme_names_each():
    """The README's "One name per place" paragraph lists every module that shares its file name (a flow and its
    stage, the pairs format and stage, each layer's errors); any other shared name is a second room for one name."""
    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("One name per place"):readme.index("- `flows/`")]
    listed = set(re.findall(r"`([^`\s]+\.py)`", paragraph))
    stems = set(re.findall(r"`(\w+)`", paragraph))  # the X of `flows/X.py`
    assert shared_names(), "the check needs the package's modules"
    for name, paths in shared_names().items():
        for path in paths:
            by_stem = name[:-3] in stems and path.replace(name, "X.py") in listed
            assert path in listed or by_stem, (
                f"{path} shares its name with {[p for p in paths if p != path]}; rename it or explain it in the "
                "README's 'One name per place' paragraph")
