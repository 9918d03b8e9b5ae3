"""Byte sizes read from and written for people (`80GiB` in, `80.0 GiB` out)."""

import re

BYTE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_PARSED_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_PARSED_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})
_SHORT_UNITS = {"K": "KIB", "M": "MIB", "G": "GIB", "T": "TIB"}


def parse_bytes(text: str) -> int:
    """'80GiB', '80 GB', '24g' (read as GiB) or a plain byte count -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    unit = _SHORT_UNITS.get(unit, unit)
    if not match or unit not in _PARSED_UNITS:
        raise ValueError(f"not a memory size: {text!r} (use e.g. 80GiB, 80GB, 24G)")
    return int(float(match.group(1)) * _PARSED_UNITS[unit])


def byte_unit(value: float, smallest: str = "B") -> tuple[str, int]:
    """The largest binary unit up to GiB that `value` reaches (never below `smallest`)."""
    names = list(BYTE_UNITS)[list(BYTE_UNITS).index(smallest) :]
    unit = next((name for name in reversed(names) if abs(value) >= BYTE_UNITS[name]), smallest)
    return unit, BYTE_UNITS[unit]


def bytes_in(value: float, unit: str, digits: int) -> str:
    """`value` bytes as a number of `unit` with `digits` decimals, without the unit's name."""
    return f"{value / BYTE_UNITS[unit]:.{digits}f}"


def format_bytes(value: float | None, smallest: str = "B", gib_digits: int = 1) -> str:
    """`value` in the largest unit it reaches, with the unit: whole bytes, one decimal for KiB
    and MiB, `gib_digits` for GiB; `-` for None."""
    if value is None:
        return "-"
    unit, _ = byte_unit(value, smallest)
    digits = {"B": 0, "GiB": gib_digits}.get(unit, 1)
    return f"{bytes_in(value, unit, digits)} {unit}"
