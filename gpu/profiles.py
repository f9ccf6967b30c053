"""Simulated GPUs for planning without the hardware (`FAITHFORGE_GPU_PROFILE=<name>` or `profile=`).

Totals are what NVML reports for each board (MiB × 2**20); free memory assumes an idle card except where a
field note measured it. Sources: `rtx5070-12gb` is the seed note's RTX 5070: 11.94 GiB total (NVML's 12,227 MiB)
and "10.48 GB" available. The note does not say whether 10.48 is GB or GiB; the profile takes the stricter reading,
10.48e9 bytes (= 9.76 GiB), and `bench/gpu_check.py` caps a real card at the same 10.48e9 bytes. The desktop cards
keep ~0.7 GiB for the display; datacenter cards are idle.

A name `Nx<card>` (`8xa100-80gb`, `2xrtx4090-24gb`) is a node of N identical cards, numbered cuda:0…N-1 as NVML
would list them: what the planner's node plans (DDP / FSDP over N processes) are shown for.
"""

from __future__ import annotations

from dataclasses import dataclass

from faithforge.gpu.errors import UnknownProfileError
from faithforge.gpu.snapshot import GpuDevice, GpuSnapshot
from faithforge.gpu.units import GiB_bytes, MiB_bytes

PROFILE_ENV = "FAITHFORGE_GPU_PROFILE"
RTX5070_FREE_BYTES = 10_480_000_000  # the seed note's "10.48", read as GB (the stricter reading)


@dataclass(frozen=True)
class Profile:
    name: str
    gpu_name: str
    total_bytes: int
    free_bytes: int
    description: str
    count: int = 1
    """Identical GPUs in the node (1: one card)."""


def _node(count: int, card: str) -> Profile:
    """`count` idle copies of the one-card profile `card`, as one node."""
    one = PROFILES[card]
    return Profile(f"{count}x{card}", one.gpu_name, one.total_bytes, one.free_bytes,
                   f"node of {count} × {one.description}", count)


def _profile(name: str, gpu_name: str, total_bytes: int, free_bytes: int, description: str) -> Profile:
    return Profile(name, gpu_name, int(total_bytes), int(free_bytes), description)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        _profile("rtx4070super-12gb", "NVIDIA GeForce RTX 4070 SUPER", 12282 * MiB_bytes,
                 12282 * MiB_bytes - 0.7 * GiB_bytes,
                 "12 GB desktop card with a display attached (seed note: qwen3:30b-a3b crashed it)"),
        _profile("rtx5070-12gb", "NVIDIA GeForce RTX 5070", 11.94 * GiB_bytes, RTX5070_FREE_BYTES,
                 "12 GB desktop card as measured in the seed note (10.48e9 bytes available)"),
        _profile("rtx4090-24gb", "NVIDIA GeForce RTX 4090", 24564 * MiB_bytes, 24564 * MiB_bytes - 0.7 * GiB_bytes,
                 "24 GB desktop card with a display attached"),
        _profile("a100-40gb", "NVIDIA A100-SXM4-40GB", 40960 * MiB_bytes, 40960 * MiB_bytes - 0.5 * GiB_bytes,
                 "idle A100 40 GB"),
        _profile("a100-80gb", "NVIDIA A100-SXM4-80GB", 81920 * MiB_bytes, 81920 * MiB_bytes - 0.5 * GiB_bytes,
                 "idle A100 80 GB"),
        _profile("h100-80gb", "NVIDIA H100 80GB HBM3", 81559 * MiB_bytes, 81559 * MiB_bytes - 0.5 * GiB_bytes,
                 "idle H100 80 GB"),
        _profile("h200-141gb", "NVIDIA H200", 143771 * MiB_bytes, 143771 * MiB_bytes - 0.5 * GiB_bytes,
                 "idle H200 141 GB"),
        _profile("none", "", 0, 0, "no GPU at all (CPU placement or offload)"),
    )
}
PROFILES.update({p.name: p for p in (_node(2, "rtx4090-24gb"), _node(4, "a100-40gb"), _node(8, "a100-40gb"),
                                      _node(8, "a100-80gb"), _node(8, "h100-80gb"))})


def known_profiles() -> list[str]:
    return list(PROFILES)


def profile_snapshot(name: str) -> GpuSnapshot:
    """The snapshot a simulated GPU would give; `none` is the empty snapshot."""
    profile = PROFILES.get(name.strip().lower())
    if profile is None:
        raise UnknownProfileError(
            f"unknown GPU profile {name!r}; known profiles: {', '.join(PROFILES)} "
            f"(set gpu.profile / {PROFILE_ENV} to one of them, or leave it empty to read the real GPU)"
        )
    source = f"profile:{profile.name}"
    if profile.total_bytes == 0:
        return GpuSnapshot(source=source, note="simulated: no GPU")
    devices = tuple(GpuDevice(
        index=i,
        name=profile.gpu_name,
        uuid=f"GPU-simulated-{profile.name}" + (f"-{i}" if profile.count > 1 else ""),
        total_bytes=profile.total_bytes,
        free_bytes=profile.free_bytes,
        used_bytes=profile.total_bytes - profile.free_bytes,
        memory_api="simulated",
        nvml_index=i if profile.count > 1 else None,
    ) for i in range(profile.count))
    return GpuSnapshot(devices=devices, source=source, note=f"simulated: {profile.description}")
