"""Device facts without a GPU: NVML devices matched to CUDA ones by UUID or PCI address, NVML
failures told apart from a missing NVML, and a full allocator history ring buffer."""

import sys
from types import SimpleNamespace

import pynvml
import pytest
import torch

from profiling.meters import nvml
from profiling.meters.cuda import history_wrapped
from profiling.meters.device_match import (
    DeviceIds,
    cuda_device_ids,
    find_nvml_handle,
    normalize_uuid,
)
from profiling.sweep import memory_run
from tests.support.profiling_records import sample_record

UUID_A = "8c4b1f3e-0000-4a1b-9c2d-000000000001"
UUID_B = "8c4b1f3e-0000-4a1b-9c2d-000000000002"


class FakeNvml:
    """The four device queries of pynvml over devices given as (UUID, (domain, bus, device)),
    in NVML's order; handles are strings."""

    def __init__(self, devices: list[tuple[str, tuple[int, int, int]]]) -> None:
        self.devices = devices

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"nvml{index}"

    def nvmlDeviceGetUUID(self, handle: str) -> bytes:
        return self.devices[int(handle[4:])][0].encode()

    def nvmlDeviceGetPciInfo(self, handle: str) -> SimpleNamespace:
        domain, bus, device = self.devices[int(handle[4:])][1]
        return SimpleNamespace(domain=domain, bus=bus, device=device)


class TorchUuid:
    """Like torch's uuid object: str() gives the UUID without NVML's GPU- prefix."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def properties(uuid: str | None, pci: tuple[int, int, int] | None) -> SimpleNamespace:
    """torch.cuda.get_device_properties' ids; without PCI fields like torch before they came."""
    fields = {} if uuid is None else {"uuid": TorchUuid(uuid)}
    if pci is not None:
        fields.update(pci_domain_id=pci[0], pci_bus_id=pci[1], pci_device_id=pci[2])
    return SimpleNamespace(**fields)


MACHINE = FakeNvml([(f"GPU-{UUID_A.upper()}", (0, 0x1B, 0)), (f"GPU-{UUID_B}", (0, 0x3B, 0))])


def test_a_cuda_device_is_found_by_uuid_whatever_the_ordinals() -> None:
    # CUDA's device 0 (the fastest) is NVML's device 1 here.
    assert find_nvml_handle(MACHINE, properties(UUID_B, (0, 0x3B, 0))) == "nvml1"
    assert find_nvml_handle(MACHINE, properties(UUID_A, None)) == "nvml0"


def test_the_pci_address_decides_without_a_matching_uuid() -> None:
    assert find_nvml_handle(MACHINE, properties(None, (0, 0x3B, 0))) == "nvml1"
    # A MIG instance's UUID is no whole GPU's; its PCI address is its GPU's.
    assert find_nvml_handle(MACHINE, properties("mig-instance", (0, 0x1B, 0))) == "nvml0"


def test_no_match_names_what_was_looked_for() -> None:
    with pytest.raises(LookupError, match=r"UUID 00-11, PCI 0001:3b:00\) among 2 NVML"):
        find_nvml_handle(MACHINE, properties("00-11", (1, 0x3B, 0)))
    with pytest.raises(LookupError, match="UUID unknown, PCI unknown"):
        find_nvml_handle(MACHINE, properties(None, None))


def test_uuids_compare_in_one_form() -> None:
    assert normalize_uuid(b"GPU-ABC-1\0\0") == "abc-1"
    assert normalize_uuid("MIG-abc-1") == "abc-1"
    assert normalize_uuid(TorchUuid("ABC-1")) == "abc-1"
    assert normalize_uuid("") is None and normalize_uuid(None) is None
    assert cuda_device_ids(properties(UUID_A, (0, 1, 2))) == DeviceIds(UUID_A, (0, 1, 2))


def test_a_missing_nvml_library_is_unavailable_but_other_errors_are_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(error_class: type) -> None:
        def init() -> None:
            raise error_class()

        monkeypatch.setattr(pynvml, "nvmlInit", init)

    fail(pynvml.NVMLError_LibraryNotFound)
    with pytest.raises(nvml.NvmlUnavailable, match="libnvidia-ml"):
        nvml.start_nvml()
    fail(pynvml.NVMLError_DriverNotLoaded)
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        nvml.start_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(nvml.NvmlUnavailable, match="nvidia-ml-py"):
        nvml.start_nvml()


def test_nvml_failures_become_notes_and_a_missing_nvml_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def sampler_raising(error: Exception):
        def build(device: torch.device) -> None:
            raise error

        return build

    record = sample_record()
    monkeypatch.setattr(memory_run, "NvmlSampler", sampler_raising(nvml.NvmlUnavailable("no")))
    assert memory_run.nvml_sampler(torch.device("cuda", 0), record) is None
    assert record.error is None
    failure = pynvml.NVMLError_NoPermission()
    monkeypatch.setattr(memory_run, "NvmlSampler", sampler_raising(failure))
    assert memory_run.nvml_sampler(torch.device("cuda", 0), record) is None
    assert record.error == "NVML failed: NVMLError_NoPermission: Insufficient Permissions"
    assert record.status == "ok"


class FailingMemoryInfo(FakeNvml):
    """Reads succeed `reads` times, then raise."""

    def __init__(self, reads: int) -> None:
        super().__init__([])
        self.reads = reads

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:
        if self.reads == 0:
            raise pynvml.NVMLError_GpuIsLost()
        self.reads -= 1
        return SimpleNamespace(used=1 << 30)

    def nvmlShutdown(self) -> None:
        self.shut_down = True


def test_an_error_while_sampling_ends_the_samples_and_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FailingMemoryInfo(reads=3)
    monkeypatch.setattr(nvml, "start_nvml", lambda: fake)
    monkeypatch.setattr(nvml, "nvml_handle_for", lambda module, device: "nvml0")
    with nvml.NvmlSampler(torch.device("cuda", 0), interval_s=0.001) as sampler:
        sampler._thread.join(timeout=5)
    assert sampler.samples.used_bytes == [1 << 30] * 3
    assert isinstance(sampler.error, pynvml.NVMLError_GpuIsLost)
    assert fake.shut_down


def test_a_full_history_ring_buffer_is_detected() -> None:
    events = [{"action": "alloc", "size": 512}] * 5
    snapshot = {"device_traces": [[], events]}
    assert history_wrapped(snapshot, 1, max_entries=5)
    assert not history_wrapped(snapshot, 1, max_entries=6)
    assert not history_wrapped(snapshot, 0, max_entries=1)
    assert not history_wrapped({}, 0, max_entries=1)
