"""Read the GPUs through NVML — the only module in `gpu/` that touches the outside world.

Every NVML call goes through one choke point, `Nvml.call`, which initialises NVML lazily on first use and
registers `nvmlShutdown` with `atexit`. NVML is read instead of `torch.cuda.mem_get_info` because the latter
creates a CUDA context (~0.5 GiB) in the calling process, and the orchestrator must not hold one.

Facts this relies on (see the research notes):
- `nvmlDeviceGetMemoryInfo(handle, version=nvmlMemory_v2)` reports driver-reserved memory separately; v1
  counts it as used. v2 is tried first and v1 is the fallback on drivers without it.
- Under MIG the parent handle reports the whole card (vLLM PR #39874 saw 141 GB for a 16 GB slice), so each
  MIG instance is read through its own MIG handle.
- NVML numbers devices in PCI bus order; CUDA does so only with `CUDA_DEVICE_ORDER=PCI_BUS_ID`.

No driver, no GPU or no `pynvml` module gives an empty snapshot, never an exception.
"""

from __future__ import annotations

import atexit
import importlib
import os
from types import ModuleType
from typing import Any, Callable, Mapping

from faithforge.gpu.profiles import PROFILE_ENV, profile_snapshot
from faithforge.gpu.snapshot import GpuDevice, GpuProcess, GpuSnapshot

# NVML constants, used when the module does not define them (values from nvml.h).
_NVML_DEVICE_MIG_ENABLE = 1
_NVML_VALUE_NOT_AVAILABLE_ULL = (1 << 64) - 1


def _import_pynvml() -> ModuleType:
    return importlib.import_module("pynvml")


class NvmlUnavailable(Exception):
    """NVML cannot be used here (module missing, driver not loaded); the message says why."""


class Nvml:
    """The single choke point for NVML: lazy `nvmlInit`, `nvmlShutdown` at interpreter exit."""

    def __init__(self, loader: Callable[[], ModuleType] = _import_pynvml) -> None:
        self._loader = loader
        self._module: ModuleType | None = None
        self._initialized = False

    @property
    def module(self) -> ModuleType:
        self._ensure_init()
        assert self._module is not None
        return self._module

    def _ensure_init(self) -> None:
        if self._initialized:
            return
        try:
            module = self._loader()
        except ImportError:
            raise NvmlUnavailable("pynvml not installed (pip install nvidia-ml-py)") from None
        try:
            module.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, OSError on odd systems
            raise NvmlUnavailable(f"NVML could not start: {exc}") from None
        self._module = module
        self._initialized = True
        atexit.register(self.shutdown)

    def call(self, function: str, *args: Any, **kwargs: Any) -> Any:
        """Call `pynvml.<function>(*args, **kwargs)`, initialising NVML first if needed."""
        self._ensure_init()
        return getattr(self._module, function)(*args, **kwargs)

    def is_error(self, exc: BaseException) -> bool:
        error_type = getattr(self._module, "NVMLError", None)
        return isinstance(error_type, type) and isinstance(exc, error_type)

    def shutdown(self) -> None:
        if self._initialized and self._module is not None:
            try:
                self._module.nvmlShutdown()
            except Exception:  # already shut down or driver gone at exit: nothing left to release
                pass
        self._initialized = False


_DEFAULT_NVML = Nvml()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _memory(nvml: Nvml, handle: Any) -> tuple[int, int, int, int, str]:
    """(total, free, used, reserved, api) in bytes; memory v2 first, v1 when the driver lacks it."""
    version = getattr(nvml.module, "nvmlMemory_v2", None)
    if version is not None:
        try:
            info = nvml.call("nvmlDeviceGetMemoryInfo", handle, version=version)
            return int(info.total), int(info.free), int(info.used), int(getattr(info, "reserved", 0) or 0), "v2"
        except Exception as exc:
            if not (nvml.is_error(exc) or isinstance(exc, TypeError)):
                raise
    info = nvml.call("nvmlDeviceGetMemoryInfo", handle)
    return int(info.total), int(info.free), int(info.used), 0, "v1"


def _processes(nvml: Nvml, handle: Any) -> tuple[GpuProcess, ...]:
    """Compute and graphics processes holding memory on `handle`, one entry per pid."""
    found: dict[int, GpuProcess] = {}
    for function in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        try:
            entries = nvml.call(function, handle)
        except Exception as exc:
            if nvml.is_error(exc) or isinstance(exc, AttributeError):
                continue
            raise
        for entry in entries or ():
            used = getattr(entry, "usedGpuMemory", None)
            if used is not None and int(used) >= _NVML_VALUE_NOT_AVAILABLE_ULL:
                used = None
            pid = int(entry.pid)
            if pid not in found or found[pid].used_bytes is None:
                found[pid] = GpuProcess(pid=pid, used_bytes=None if used is None else int(used))
    return tuple(sorted(found.values(), key=lambda p: p.pid))


def _try(nvml: Nvml, function: str, *args: Any, default: Any = None) -> Any:
    try:
        return nvml.call(function, *args)
    except Exception as exc:
        if nvml.is_error(exc) or isinstance(exc, AttributeError):
            return default
        raise


def _mig_handles(nvml: Nvml, handle: Any) -> list[Any]:
    """The MIG instance handles of a GPU in MIG mode; [] when MIG is off or unsupported."""
    mode = _try(nvml, "nvmlDeviceGetMigMode", handle)
    enabled = getattr(nvml.module, "NVML_DEVICE_MIG_ENABLE", _NVML_DEVICE_MIG_ENABLE)
    if not mode or int(mode[0]) != enabled:
        return []
    count = int(_try(nvml, "nvmlDeviceGetMaxMigDeviceCount", handle, default=0) or 0)
    handles = []
    for slot in range(count):
        mig = _try(nvml, "nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)  # NOT_FOUND for empty slots
        if mig is not None:
            handles.append(mig)
    return handles


class _Unit:
    """A would-be CUDA device before visibility filtering: a whole GPU or one MIG instance."""

    def __init__(self, handle: Any, nvml_index: int, uuid: str, pci_bus_id: str | None, parent_uuid: str | None):
        self.handle, self.nvml_index, self.uuid = handle, nvml_index, uuid
        self.pci_bus_id, self.parent_uuid = pci_bus_id, parent_uuid


def _physical_units(nvml: Nvml) -> list[list[_Unit]]:
    """Per physical GPU in PCI bus order, the units it exposes (itself, or its MIG instances)."""
    gpus = []
    for nvml_index in range(int(nvml.call("nvmlDeviceGetCount"))):
        handle = nvml.call("nvmlDeviceGetHandleByIndex", nvml_index)
        uuid = _text(nvml.call("nvmlDeviceGetUUID", handle))
        pci = _try(nvml, "nvmlDeviceGetPciInfo", handle)
        bus_id = _text(getattr(pci, "busId", "")) if pci is not None else None
        migs = _mig_handles(nvml, handle)
        units = [_Unit(m, nvml_index, _text(nvml.call("nvmlDeviceGetUUID", m)), bus_id, uuid) for m in migs]
        gpus.append((bus_id or "", nvml_index, units or [_Unit(handle, nvml_index, uuid, bus_id, None)]))
    gpus.sort(key=lambda item: (item[0], item[1]))
    return [units for _, _, units in gpus]


def _select_visible(gpus: list[list[_Unit]], visible: str | None) -> tuple[list[_Unit], str]:
    """Apply CUDA_VISIBLE_DEVICES: indices (PCI order), or UUID prefixes `GPU-…`/`MIG-…`.

    As CUDA does, parsing stops at the first entry that matches nothing; an empty value hides every device.
    """
    if visible is None:
        return [unit for units in gpus for unit in units], ""
    chosen: list[_Unit] = []
    for raw in visible.split(","):
        token = raw.strip()
        if not token:
            break
        matched: list[_Unit] = []
        if token.lstrip("-").isdigit():
            position = int(token)
            if 0 <= position < len(gpus):
                matched = gpus[position]
        else:
            for units in gpus:
                for unit in units:
                    if unit.uuid.startswith(token) or (unit.parent_uuid or "").startswith(token):
                        matched.append(unit)
            if token.startswith("MIG-"):
                matched = [u for u in matched if u.uuid.startswith(token)]
        if not matched:
            return chosen, f"CUDA_VISIBLE_DEVICES entry {token!r} matches no device; later entries ignored"
        chosen.extend(u for u in matched if u not in chosen)
    return chosen, ""


def _read_unit(nvml: Nvml, unit: _Unit, index: int) -> GpuDevice:
    total, free, used, reserved, api = _memory(nvml, unit.handle)
    return GpuDevice(
        index=index,
        name=_text(nvml.call("nvmlDeviceGetName", unit.handle)),
        uuid=unit.uuid,
        total_bytes=total,
        free_bytes=free,
        used_bytes=used,
        reserved_bytes=reserved,
        memory_api=api,  # type: ignore[arg-type]
        nvml_index=unit.nvml_index,
        pci_bus_id=unit.pci_bus_id,
        mig_parent_uuid=unit.parent_uuid,
        processes=_processes(nvml, unit.handle),
    )


def probe_nvml(nvml: Nvml | None = None, environ: Mapping[str, str] | None = None) -> GpuSnapshot:
    """Read every CUDA-visible device through NVML; an empty snapshot (with a note) when NVML is absent."""
    nvml = nvml or _DEFAULT_NVML
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    try:
        gpus = _physical_units(nvml)
        driver = _try(nvml, "nvmlSystemGetDriverVersion")
    except NvmlUnavailable as exc:
        return GpuSnapshot(source="none", note=str(exc), cuda_visible_devices=visible)
    except Exception as exc:
        if nvml.is_error(exc):
            return GpuSnapshot(source="none", note=f"NVML query failed: {exc}", cuda_visible_devices=visible)
        raise
    if not gpus:
        return GpuSnapshot(source="nvml", note="NVML reports no GPU", cuda_visible_devices=visible,
                           driver_version=None if driver is None else _text(driver))
    units, note = _select_visible(gpus, visible)
    devices = tuple(_read_unit(nvml, unit, index) for index, unit in enumerate(units))
    if not devices and not note:
        note = "CUDA_VISIBLE_DEVICES hides every GPU"
    return GpuSnapshot(devices=devices, source="nvml", note=note, cuda_visible_devices=visible,
                       driver_version=None if driver is None else _text(driver))


def read_snapshot(profile: str | None = None, *, environ: Mapping[str, str] | None = None,
                  nvml: Nvml | None = None) -> GpuSnapshot:
    """The snapshot the gate plans with: a simulated profile when `profile` (or `FAITHFORGE_GPU_PROFILE`)
    names one, else NVML. An unknown profile name raises `UnknownProfileError` listing the known ones."""
    env = os.environ if environ is None else environ
    name = profile if profile else (env.get(PROFILE_ENV) or None)
    if name:
        return profile_snapshot(name)
    return probe_nvml(nvml, env)
