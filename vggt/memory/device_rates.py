"""Effective rates per GPU type for the forward-time predictions, from the versioned table
beside this module (device_rates.json): stated until `python -m profiling.gpu_check --adopt`
writes a rate that a GPU run measured."""

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

RATES_PATH = Path(__file__).with_name("device_rates.json")
VERSION = 1
STATED = "stated"
MEASURED = "measured"


@dataclass(frozen=True)
class DeviceRates:
    """A GPU type's TFLOP/s of bf16 work, fp32 work's share of it and the GB/s a rank sends in
    an exchange; `source` says whether the TFLOP/s were stated or measured (then in `report`
    on `date`, on `device` with `torch`); the share and the GB/s are stated either way."""

    gpu: str
    tflops: float
    fp32_share: float
    link_gbs: float
    source: str = STATED
    report: str | None = None
    date: str | None = None
    device: str | None = None
    torch: str | None = None

    def __post_init__(self) -> None:
        if self.source not in (STATED, MEASURED):
            raise ValueError(f"{self.gpu}: source {self.source!r} is neither stated nor measured")
        if min(self.tflops, self.fp32_share, self.link_gbs) <= 0:
            raise ValueError(f"{self.gpu}: rates must be positive")
        if self.source == MEASURED and None in (self.report, self.date, self.device):
            raise ValueError(f"{self.gpu}: a measured rate names its report, date and device")

    def to_json(self) -> dict:
        """The entry as the table holds it, without the fields it leaves unset."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    def describe(self) -> str:
        """Where the rates come from, as the reports print it."""
        if self.source == STATED:
            return f"stated rates for {self.gpu}, not measured"
        return (
            f"TFLOP/s measured on {self.device} on {self.date} ({self.report}), fp32 share and "
            "GB/s stated"
        )

    def given(self, tflops: float | None, link_gbs: float | None) -> "DeviceRates":
        """These rates with a caller's TFLOP/s or GB/s in their place (stated, for the caller's
        GPU); themselves when neither is given."""
        if tflops is None and link_gbs is None:
            return self
        return DeviceRates(
            "the caller's GPU",
            self.tflops if tflops is None else tflops,
            self.fp32_share,
            self.link_gbs if link_gbs is None else link_gbs,
        )


@dataclass(frozen=True)
class RatesTable:
    """The table: what it holds (`about`), the default for unknown devices, and an entry per
    GPU type."""

    about: str
    default: DeviceRates
    gpus: tuple[DeviceRates, ...]

    def matching(self, device_name: str | None) -> DeviceRates | None:
        """The entry of the longest GPU type that `device_name` contains (case ignored)."""
        name = (device_name or "").lower()
        found = [rates for rates in self.gpus if name and rates.gpu.lower() in name]
        return max(found, key=lambda rates: len(rates.gpu), default=None)

    def with_gpu(self, rates: DeviceRates) -> "RatesTable":
        """The table with `rates` in place of its GPU type's entry, or added after the others."""
        if any(entry.gpu == rates.gpu for entry in self.gpus):
            gpus = tuple(rates if entry.gpu == rates.gpu else entry for entry in self.gpus)
        else:
            gpus = (*self.gpus, rates)
        return replace(self, gpus=gpus)

    def to_json(self) -> dict:
        """The table as device_rates.json holds it."""
        return {
            "version": VERSION,
            "about": self.about,
            "default": self.default.to_json(),
            "gpus": [rates.to_json() for rates in self.gpus],
        }


def read_table(path: Path = RATES_PATH) -> RatesTable:
    """The table at `path`; ValueError when it is not one of this version."""
    document = json.loads(path.read_text())
    if document.get("version") != VERSION:
        raise ValueError(f"{path}: version {document.get('version')}, not {VERSION}")
    try:
        default = DeviceRates(**document["default"])
        gpus = tuple(DeviceRates(**entry) for entry in document["gpus"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a rates table ({error})") from None
    if len({rates.gpu for rates in gpus}) < len(gpus):
        raise ValueError(f"{path}: a GPU type has two entries")
    return RatesTable(document.get("about", ""), default, gpus)


def rates_for(device_name: str | None, path: Path = RATES_PATH) -> DeviceRates:
    """The rates of the GPU type that `device_name` (torch.cuda.get_device_name()) contains;
    the table's default (stated, H100/H200 class) for None or an unknown device."""
    table = read_table(path)
    return table.matching(device_name) or table.default
