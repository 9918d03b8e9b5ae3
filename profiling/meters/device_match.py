"""Which NVML device a CUDA device is: the one with the same UUID, else the same PCI address.

CUDA numbers devices fastest first (unless CUDA_DEVICE_ORDER=PCI_BUS_ID) and after
CUDA_VISIBLE_DEVICES, NVML by PCI bus over every GPU of the machine, so their ordinals differ;
a UUID or a PCI address names the same device to both.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

Handle = TypeVar("Handle")
UUID_PREFIXES = ("gpu-", "mig-")
PCI_FIELDS = ("pci_domain_id", "pci_bus_id", "pci_device_id")


@dataclass(frozen=True)
class DeviceIds:
    """A GPU's UUID (lower case, no GPU-/MIG- prefix) and PCI (domain, bus, device); None
    where the source does not tell."""

    uuid: str | None
    pci: tuple[int, int, int] | None

    def describe(self) -> str:
        """`UUID ..., PCI 0000:3b:00` with `unknown` for what is missing."""
        pci = "unknown" if self.pci is None else "{:04x}:{:02x}:{:02x}".format(*self.pci)
        return f"UUID {self.uuid or 'unknown'}, PCI {pci}"


def normalize_uuid(value: object) -> str | None:
    """A UUID as CUDA or NVML writes it (str, bytes or torch's uuid object) in one form."""
    text = value.decode() if isinstance(value, bytes) else str(value or "")
    text = text.strip().strip("\0").lower()
    for prefix in UUID_PREFIXES:
        text = text.removeprefix(prefix)
    return text or None


def cuda_device_ids(properties: Any) -> DeviceIds:
    """The ids in torch.cuda.get_device_properties(i): `uuid` (torch 2.x) and, in newer
    releases, pci_domain_id, pci_bus_id and pci_device_id."""
    uuid = normalize_uuid(getattr(properties, "uuid", None))
    parts = [getattr(properties, name, None) for name in PCI_FIELDS]
    pci = None if None in parts else (int(parts[0]), int(parts[1]), int(parts[2]))
    return DeviceIds(uuid, pci)


def nvml_device_ids(nvml: Any, handle: Any) -> DeviceIds:
    """The UUID and PCI address NVML reports for `handle`."""
    info = nvml.nvmlDeviceGetPciInfo(handle)
    pci = (int(info.domain), int(info.bus), int(info.device))
    return DeviceIds(normalize_uuid(nvml.nvmlDeviceGetUUID(handle)), pci)


def match_device(wanted: DeviceIds, candidates: Sequence[tuple[Handle, DeviceIds]]) -> Handle:
    """The candidate with `wanted`'s UUID, else the one at its PCI address; LookupError
    naming what was looked for when none matches."""
    if wanted.uuid is not None:
        for handle, ids in candidates:
            if ids.uuid == wanted.uuid:
                return handle
    if wanted.pci is not None:
        for handle, ids in candidates:
            if ids.pci == wanted.pci:
                return handle
    raise LookupError(
        f"no NVML device matches the CUDA device ({wanted.describe()}) among "
        f"{len(candidates)} NVML device(s)"
    )


def find_nvml_handle(nvml: Any, properties: Any) -> Any:
    """The handle of the NVML device that the CUDA device of `properties` is; `nvml` is pynvml
    after nvmlInit (or anything with its four device queries)."""
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    candidates = [(handle, nvml_device_ids(nvml, handle)) for handle in handles]
    return match_device(cuda_device_ids(properties), candidates)


def nvml_handle_for(nvml: Any, device: torch.device) -> Any:
    """The NVML handle of torch CUDA `device` (the current one when it has no index)."""
    index = torch.cuda.current_device() if device.index is None else device.index
    return find_nvml_handle(nvml, torch.cuda.get_device_properties(index))
