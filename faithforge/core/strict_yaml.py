"""YAML read the way a person means it: YAML 1.2 scalars, no duplicate keys, bounded alias expansion.

PyYAML's `safe_load` follows YAML 1.1: `yes`/`no`/`on`/`off` are booleans, `1_0` is 10, `1:20` is 80 and `010`
is 8; a key written twice silently keeps the last value; and nested anchors ("billion laughs") expand to
gigabytes that an error message then printed whole. `load` here resolves scalars by YAML 1.2's core schema
(`true`/`false` only, plain decimal, `0o`/`0x` integers, no underscores or sexagesimals; anything else stays a
string, which the config's types then refuse with a clear message), refuses a duplicate key with its line, and
refuses a document whose aliases expand to more than `MAX_NODES` values — before building it.
"""

from __future__ import annotations

import re

import yaml

from faithforge.core.errors import UserError, clip

#: The most values (scalars, lists, mappings) a document may hold once its aliases are expanded.
MAX_NODES = 100_000

_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars, duplicate keys refused and expansion bounded."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (
            "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:null")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_document(self, node):
        _check_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports an unhashable key
                if key in seen:
                    raise UserError(f"{_where(key_node)}: the key {clip(key)} is written twice (first on line "
                                    f"{seen[key]}); keep one (YAML would silently use the last)")
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _where(node) -> str:
    mark = node.start_mark
    return f"{mark.name if mark.name not in ('<unicode string>', '<file>') else 'YAML'} line {mark.line + 1}"


def _check_size(root) -> None:
    """Refuse a document whose expanded size (aliases counted each time they are used) exceeds `MAX_NODES`."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:  # a recursive alias: infinite expansion
            return MAX_NODES + 1
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
                if total > MAX_NODES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                total += size(key_node) + size(value_node)
                if total > MAX_NODES:
                    break
        active.discard(key)
        sizes[key] = total
        return total

    if root is not None and size(root) > MAX_NODES:
        raise UserError(f"the YAML expands to more than {MAX_NODES:,} values through its anchors and aliases "
                        "(nested aliases, a 'billion laughs'); write the values out instead")


def _int(loader, node) -> int:
    text = loader.construct_scalar(node)
    if len(text) > 100:  # Python refuses to read more than 4,300 digits; no option takes more than 20
        raise UserError(f"{_where(node)}: a number of {len(text):,} digits ({clip(text)}); no option takes one "
                        "that long")
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text)


def _float(loader, node) -> float:
    text = loader.construct_scalar(node).lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    if text == ".nan":
        return float("nan")
    return float(text)


_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.add_implicit_resolver("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""])
_Loader.add_constructor("tag:yaml.org,2002:int", _int)
_Loader.add_constructor("tag:yaml.org,2002:float", _float)


#: The deepest flow nesting (`[[[...]]]`, `{a: {b: ...}}`) read; no option nests more than three.
MAX_DEPTH = 100


def _flow_depth(text: str) -> int:
    """The deepest nesting of `[`/`{` outside quotes (an upper bound of YAML's flow nesting; comments may add)."""
    depth = deepest = 0
    quote = ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}" and depth:
            depth -= 1
        elif ch == "\n":
            quote = ""
    return deepest


def load(text: str, source: str = "YAML"):
    """Parse one YAML document (YAML 1.2 scalars); a duplicate key or an oversized expansion is a `UserError`
    naming `source`, and a syntax error is a `yaml.YAMLError` as with `yaml.safe_load`."""
    if _flow_depth(text) > MAX_DEPTH:  # PyYAML would take seconds to fail in its recursion
        raise UserError(f"{source}: the YAML nests lists or mappings more than {MAX_DEPTH} deep; write the values out "
                        "flat")
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass: no arbitrary objects
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    except RecursionError:
        raise UserError(f"{source}: the YAML is nested too deeply to read (lists or mappings inside each other "
                        "hundreds of times); write the values out flat") from None
