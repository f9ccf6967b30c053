"""What the probe reports: frozen dataclasses, every memory number in bytes.

A snapshot lists the CUDA devices this process can see (after `CUDA_VISIBLE_DEVICES`), in the order
CUDA numbers them when `CUDA_DEVICE_ORDER=PCI_BUS_ID` (NVML's order). A MIG-enabled GPU contributes one
device per visible MIG instance, sized from the MIG handle (the parent's numbers would overstate it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

MemoryApi = Literal["v2", "v1", "simulated"]


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a device. `used_bytes` is None when NVML cannot say (Windows WDDM)."""

    pid: int
    used_bytes: int | None


@dataclass(frozen=True)
class GpuDevice:
    """One CUDA device as this process would see it: `index` is the `cuda:N` number."""

    index: int
    name: str
    uuid: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    reserved_bytes: int = 0
    """Driver/firmware reservation (NVML memory v2 only; v1 folds it into `used_bytes`)."""
    memory_api: MemoryApi = "v2"
    nvml_index: int | None = None
    """The physical GPU's NVML index (PCI bus order); for a MIG instance, its parent's."""
    pci_bus_id: str | None = None
    mig_parent_uuid: str | None = None
    """Set when this device is a MIG instance; `total_bytes`/`free_bytes` are then the instance's."""
    processes: tuple[GpuProcess, ...] = ()

    @property
    def is_mig(self) -> bool:
        return self.mig_parent_uuid is not None


@dataclass(frozen=True)
class GpuSnapshot:
    """Every visible device at one moment. Empty `devices` means: plan for CPU or offload."""

    devices: tuple[GpuDevice, ...] = ()
    source: str = "nvml"
    """`nvml`, `profile:<name>`, or `none`."""
    note: str = ""
    """Why the snapshot is empty or filtered (e.g. 'pynvml not installed'); empty when nothing to say."""
    driver_version: str | None = None
    cuda_visible_devices: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not self.devices

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; devices keep all fields, numbers stay in bytes."""
        out = asdict(self)
        out["devices"] = list(out["devices"])
        for dev, raw in zip(self.devices, out["devices"]):
            raw["is_mig"] = dev.is_mig
            raw["processes"] = list(raw["processes"])
        return out
