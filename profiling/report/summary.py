"""summary.md: per device and configuration, the variants side by side with ratios."""

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from profiling.sweep.records import CaseRecord
from profiling.sweep.variants import BASELINE
from profiling.units import format_bytes


def format_size(value: float | None) -> str:
    """KiB, MiB or GiB (two decimals) with the unit; `-` for None."""
    return format_bytes(value, smallest="KiB", gib_digits=2)


def format_ratio(numerator: float | None, denominator: float | None) -> str:
    """numerator / denominator to two decimals; `-` when either is missing."""
    if numerator is None or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}"


def format_diff(value: float | None) -> str:
    """A difference in scientific notation; `-` for None."""
    if value is None:
        return "-"
    return "nan" if math.isnan(value) else f"{value:.2e}"


def slug(text: str) -> str:
    """Lower-case letters, digits and dashes, for file names."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48]


def group_by_config(records: Iterable[CaseRecord]) -> dict[tuple, list[CaseRecord]]:
    """Records keyed by device, component, precision, image size and batch, in a stable order."""
    groups: dict[tuple, list[CaseRecord]] = defaultdict(list)
    for r in records:
        groups[(r.device_name, r.component, r.precision, r.height, r.width, r.batch)].append(r)
    return dict(sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))))


def config_title(key: tuple) -> str:
    """A configuration key as a heading."""
    device, component, precision, height, width, batch = key
    return f"{device} · {component} · {precision} · {height}x{width} · batch {batch}"


def config_slug(key: tuple) -> str:
    """A configuration key as part of a file name."""
    device, component, precision, height, width, batch = key
    return f"{component}-{precision}-{height}x{width}-b{batch}-{slug(device)}"


def variant_order(records: Iterable[CaseRecord]) -> list[str]:
    """The baseline first, then the other variants by name."""
    names = {record.variant for record in records}
    return sorted(names, key=lambda name: (name != BASELINE, name))


def ok_value(record: CaseRecord | None, name: str) -> Any:
    """The record's field `name` if it ran, None for a missing or failed record."""
    if record is None or record.status != "ok":
        return None
    return getattr(record, name)


def describe(record: CaseRecord | None, text: Callable[[Any], str], value: Any) -> str:
    """A table cell: `-` when missing, the status when failed, else `text(value)`."""
    if record is None:
        return "-"
    if record.status != "ok":
        return record.status.upper()
    return text(value)


def format_ms(value: float | None) -> str:
    """Milliseconds to one decimal; `-` for None."""
    return "-" if value is None else f"{value:.1f}"


def config_table(records: list[CaseRecord]) -> list[str]:
    """Frames as rows; peaks, times and outputs per variant; ratios against the baseline."""
    variants = variant_order(records)
    others = [name for name in variants if name != BASELINE] if BASELINE in variants else []
    by_cell = {(r.frames, r.variant): r for r in records}
    header = ["frames"]
    header += [f"{v} peak" for v in variants] + [f"{v}/{BASELINE} peak" for v in others]
    header += [f"{v} ms" for v in variants] + [f"{v}/{BASELINE} time" for v in others]
    header += [f"{v} outputs" for v in variants] + [f"{v} max abs diff" for v in others]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for frames in sorted({r.frames for r in records}):
        row = {v: by_cell.get((frames, v)) for v in variants}
        base = row.get(BASELINE)
        cells = [str(frames)]
        for name, text in (("peak_bytes", format_size), ("median_ms", format_ms)):
            cells += [describe(row[v], text, ok_value(row[v], name)) for v in variants]
            cells += [format_ratio(ok_value(row[v], name), ok_value(base, name)) for v in others]
        cells += [describe(row[v], format_size, ok_value(row[v], "output_bytes")) for v in variants]
        cells += [format_diff(ok_value(row[v], "max_abs_diff")) for v in others]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def largest_fitting(records: list[CaseRecord]) -> list[str]:
    """Per variant: the largest frame count that ran and the smallest that ran out of memory."""
    lines = []
    for variant in variant_order(records):
        ran = [r.frames for r in records if r.variant == variant and r.status == "ok"]
        oom = [r.frames for r in records if r.variant == variant and r.status == "oom"]
        text = f"- {variant}: largest frame count that ran: {max(ran) if ran else 'none'}"
        if oom:
            text += f"; out of memory from {min(oom)} frames"
        lines.append(text)
    return lines


def allocator_text(settings: dict[str, str] | None) -> str:
    """`NAME=value` of each allocator variable set, or `default`."""
    return ", ".join(f"`{name}={value}`" for name, value in (settings or {}).items()) or "default"


def environment_table(environment: dict[str, Any]) -> list[str]:
    """The environment and the sweep's settings as a two-column table."""
    rows = [
        ("torch", environment.get("torch")),
        ("CUDA", environment.get("cuda") or "none"),
        ("NVIDIA driver", environment.get("nvidia_driver") or "none"),
        ("allocator settings", allocator_text(environment.get("allocator_settings"))),
        ("GPUs", ", ".join(environment.get("gpu_names") or []) or "none"),
        ("CPU", environment.get("cpu")),
        ("world size", environment.get("world_size")),
        ("hosts", ", ".join(environment.get("hosts") or [])),
        ("python", environment.get("python")),
    ]
    settings = environment.get("settings", {})
    rows += [(name, value) for name, value in settings.items() if value is not None]
    return ["| | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]


def summary_markdown(records: list[CaseRecord], environment: dict[str, Any]) -> str:
    """Status counts, one table per device and configuration, and the environment."""
    counts = defaultdict(int)
    for record in records:
        counts[record.status] += 1
    status_text = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    lines = [
        "# Profiling summary",
        "",
        f"{len(records)} cases ({status_text or 'none'}) on {environment.get('world_size')} "
        "rank(s).",
        "",
        "Peak: `torch.cuda.max_memory_allocated` on GPUs (weights, input and activations); "
        "on CPUs the peak of the tensor bytes allocated during the forward (profiler memory "
        "events; weights and input excluded). Times are medians of the timed repeats "
        f"(min, max and IQR in results.csv). Ratios are variant / {BASELINE}: below 1 is "
        f"smaller or faster. Max abs diff compares outputs with {BASELINE}'s (same weights "
        "and input).",
    ]
    for key, config_records in group_by_config(records).items():
        lines += ["", f"## {config_title(key)}", ""]
        lines += config_table(config_records)
        lines += ["", *largest_fitting(config_records)]
    lines += ["", "## Environment", "", *environment_table(environment)]
    return "\n".join(lines) + "\n"
