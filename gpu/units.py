"""Byte units in one place (as vLLM's `mem_utils` does): every memory figure in FaithForge is an int of bytes,
converted to GiB only to be shown. "Unknown" is `None`, shown as a dash, never 0."""

from __future__ import annotations

MiB_bytes = 1 << 20
GiB_bytes = 1 << 30


def format_gib(n_bytes: int | float | None, *, unit: bool = True, unknown: str = "—") -> str:
    """`n_bytes` as GiB with two decimals (`"9.76 GiB"`, or `"9.76"` with `unit=False`); `unknown` for None."""
    if n_bytes is None:
        return unknown
    return f"{n_bytes / GiB_bytes:.2f}" + (" GiB" if unit else "")
