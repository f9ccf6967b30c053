"""The NVML probe against a fake `pynvml` module: no driver, MIG, other processes, CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import types

import pytest

from faithforge.gpu.errors import UnknownProfileError
from faithforge.gpu.probe import Nvml, probe_nvml, read_snapshot
from faithforge.gpu.units import GiB_bytes as GIB


class FakeNVMLError(Exception):
    pass


def make_fake(gpus, *, v2=True, init_error=None):
    """A stand-in for pynvml. `gpus`: dicts with uuid, name, bus, total, free, used, procs, migs."""
    mod = types.SimpleNamespace(NVMLError=FakeNVMLError, NVML_DEVICE_MIG_ENABLE=1, calls=[])
    handles = {}

    def handle_for(spec):
        handles[id(spec)] = spec
        return spec

    def mem(spec, v2_asked):
        used = spec["used"]
        info = types.SimpleNamespace(total=spec["total"], free=spec["free"], used=used)
        if v2_asked:
            info.reserved = spec.get("reserved", 0)
        else:
            info.used = spec["total"] - spec["free"]  # v1 counts the driver's reservation as used
        return info

    def nvmlInit():
        mod.calls.append("init")
        if init_error:
            raise init_error

    mod.nvmlInit = nvmlInit
    mod.nvmlShutdown = lambda: mod.calls.append("shutdown")
    mod.nvmlDeviceGetCount = lambda: len(gpus)
    mod.nvmlDeviceGetHandleByIndex = lambda i: handle_for(gpus[i])
    mod.nvmlDeviceGetUUID = lambda h: h["uuid"].encode()  # old bindings return bytes
    mod.nvmlDeviceGetName = lambda h: h["name"]
    mod.nvmlSystemGetDriverVersion = lambda: "575.57"
    mod.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=h["bus"])

    def get_memory(h, version=None):
        if version is not None and not v2:
            raise FakeNVMLError("Function Not Found")
        mod.calls.append("v2" if version else "v1")
        return mem(h, version is not None)

    mod.nvmlDeviceGetMemoryInfo = get_memory
    if v2:
        mod.nvmlMemory_v2 = 0x2000028
    mod.nvmlDeviceGetComputeRunningProcesses = lambda h: [types.SimpleNamespace(pid=p, usedGpuMemory=b)
                                                          for p, b in h.get("procs", [])]
    mod.nvmlDeviceGetGraphicsRunningProcesses = lambda h: []
    mod.nvmlDeviceGetMigMode = lambda h: [1, 1] if h.get("migs") else [0, 0]
    mod.nvmlDeviceGetMaxMigDeviceCount = lambda h: len(h.get("migs", [])) + 1  # one empty slot

    def mig_by_index(h, i):
        migs = h.get("migs", [])
        if i >= len(migs):
            raise FakeNVMLError("Not Found")
        return migs[i]

    mod.nvmlDeviceGetMigDeviceHandleByIndex = mig_by_index
    return mod


def gpu(uuid, bus, name="NVIDIA Test", total=12 * GIB, free=10 * GIB, used=1 * GIB, **kw):
    return {"uuid": uuid, "bus": bus, "name": name, "total": total, "free": free, "used": used,
            "reserved": total - free - used, **kw}


def probe(mod, env=None):
    return probe_nvml(Nvml(loader=lambda: mod), environ=env or {})


def test_missing_pynvml_gives_empty_snapshot():
    def loader():
        raise ImportError("No module named 'pynvml'")

    snap = probe_nvml(Nvml(loader=loader), environ={})
    assert snap.is_empty and "pynvml not installed" in snap.note
    assert snap.to_dict()["devices"] == []


def test_driver_not_loaded_gives_empty_snapshot():
    mod = make_fake([], init_error=FakeNVMLError("Driver Not Loaded"))
    snap = probe(mod)
    assert snap.is_empty and "Driver Not Loaded" in snap.note


def test_no_gpu_gives_empty_snapshot():
    snap = probe(make_fake([]))
    assert snap.is_empty and snap.note == "NVML reports no GPU"


def test_v2_memory_and_second_process():
    mod = make_fake([gpu("GPU-aaa", "00000000:01:00.0", procs=[(4242, 3 * GIB), (77, None)])])
    snap = probe(mod)
    (dev,) = snap.devices
    assert dev.memory_api == "v2" and "v2" in mod.calls
    assert (dev.total_bytes, dev.free_bytes, dev.used_bytes, dev.reserved_bytes) == (12 * GIB, 10 * GIB, GIB, GIB)
    assert [(p.pid, p.used_bytes) for p in dev.processes] == [(77, None), (4242, 3 * GIB)]
    assert dev.uuid == "GPU-aaa" and snap.driver_version == "575.57"


def test_falls_back_to_v1_when_v2_unsupported():
    dev = probe(make_fake([gpu("GPU-aaa", "00000000:01:00.0")], v2=False)).devices[0]
    assert dev.memory_api == "v1" and dev.reserved_bytes == 0
    assert dev.used_bytes == 2 * GIB  # v1 folds the 1 GiB reservation into used


def test_nvml_initialised_once_and_shut_down():
    mod = make_fake([gpu("GPU-aaa", "00000000:01:00.0")])
    nvml = Nvml(loader=lambda: mod)
    probe_nvml(nvml, environ={})
    probe_nvml(nvml, environ={})
    assert mod.calls.count("init") == 1
    nvml.shutdown()
    assert mod.calls[-1] == "shutdown"


def test_mig_instances_use_their_own_memory():
    migs = [gpu("MIG-one", "", name="A100 MIG 1g.10gb", total=10 * GIB, free=9 * GIB, used=0),
            gpu("MIG-two", "", name="A100 MIG 3g.40gb", total=40 * GIB, free=39 * GIB, used=0)]
    parent = gpu("GPU-big", "00000000:81:00.0", name="A100 80GB", total=80 * GIB, free=79 * GIB, used=0, migs=migs)
    snap = probe(make_fake([parent]))
    assert [(d.uuid, d.total_bytes, d.mig_parent_uuid) for d in snap.devices] == [
        ("MIG-one", 10 * GIB, "GPU-big"), ("MIG-two", 40 * GIB, "GPU-big")]
    assert all(d.is_mig for d in snap.devices) and [d.index for d in snap.devices] == [0, 1]
    only = probe(make_fake([parent]), {"CUDA_VISIBLE_DEVICES": "MIG-two"})
    assert [d.uuid for d in only.devices] == ["MIG-two"] and only.devices[0].index == 0


def test_cuda_visible_devices_by_uuid_index_and_pci_order():
    # NVML index order deliberately differs from PCI bus order.
    a = gpu("GPU-aaa111", "00000000:41:00.0", name="second on the bus")
    b = gpu("GPU-bbb222", "00000000:01:00.0", name="first on the bus")
    mod = make_fake([a, b])
    assert [d.name for d in probe(mod).devices] == ["first on the bus", "second on the bus"]
    by_uuid = probe(mod, {"CUDA_VISIBLE_DEVICES": "GPU-aaa"})  # a UUID prefix, as CUDA accepts
    assert [(d.index, d.uuid) for d in by_uuid.devices] == [(0, "GPU-aaa111")]
    by_index = probe(mod, {"CUDA_VISIBLE_DEVICES": "1,0"})
    assert [d.uuid for d in by_index.devices] == ["GPU-aaa111", "GPU-bbb222"]
    stops = probe(mod, {"CUDA_VISIBLE_DEVICES": "0,GPU-zzz,1"})
    assert [d.uuid for d in stops.devices] == ["GPU-bbb222"] and "GPU-zzz" in stops.note
    assert probe(mod, {"CUDA_VISIBLE_DEVICES": ""}).is_empty
    assert probe(mod, {"CUDA_VISIBLE_DEVICES": "-1"}).is_empty


def test_profile_replaces_the_reading_and_unknown_profile_lists_known_ones():
    snap = read_snapshot(environ={"FAITHFORGE_GPU_PROFILE": "rtx5070-12gb"})
    (dev,) = snap.devices
    assert snap.source == "profile:rtx5070-12gb"
    assert dev.total_bytes == int(11.94 * GIB) and dev.free_bytes == 10_480_000_000  # "10.48" as GB: stricter
    assert read_snapshot("none", environ={}).is_empty
    with pytest.raises(UnknownProfileError) as err:
        read_snapshot("rtx9999", environ={})
    for name in ("rtx4070super-12gb", "rtx5070-12gb", "rtx4090-24gb", "a100-40gb", "a100-80gb", "h100-80gb", "none"):
        assert name in str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
