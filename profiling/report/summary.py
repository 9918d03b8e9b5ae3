"""summary.md: per device and configuration, the variants side by side with ratios."""

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from profiling.sweep.records import CaseRecord, phase_field
from vggt.memory.units import format_bytes
from vggt.models.variants import BASELINE
from vggt.training.step import PHASES


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
    """Records keyed by device, component, precision, image size, batch and mode, in a stable
    order."""
    groups: dict[tuple, list[CaseRecord]] = defaultdict(list)
    for r in records:
        key = (r.device_name, r.component, r.precision, r.height, r.width, r.batch, r.mode)
        groups[key].append(r)
    return dict(sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))))


def config_title(key: tuple) -> str:
    """A configuration key as a heading (` · training` added in train mode)."""
    device, component, precision, height, width, batch, mode = key
    training = " · training" if mode == "train" else ""
    return f"{device} · {component} · {precision} · {height}x{width} · batch {batch}{training}"


def config_slug(key: tuple) -> str:
    """A configuration key as part of a file name (`train-` first in train mode)."""
    device, component, precision, height, width, batch, mode = key
    training = "train-" if mode == "train" else ""
    return f"{training}{component}-{precision}-{height}x{width}-b{batch}-{slug(device)}"


def series_label(record: CaseRecord) -> str:
    """What a record's line in a chart is called: its variant, and in a sequence-parallel
    sweep the number of ranks too (`optimized x2`)."""
    if record.parallel == "sequence":
        return f"{record.variant} x{record.world_size}"
    return record.variant


def series_order(records: Iterable[CaseRecord]) -> list[str]:
    """Series labels: the baseline first, then the other variants by name, each by ranks."""
    keys = {
        series_label(r): (
            r.variant != BASELINE,
            r.variant,
            r.world_size if r.parallel == "sequence" else 0,
        )
        for r in records
    }
    return sorted(keys, key=keys.__getitem__)


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


SEQUENCE_NOTE = (
    "Sequence parallel (`--parallel sequence`): each configuration split over `ranks` ranks, "
    "each holding its own frames, against the whole sequence on one rank. Peaks and times "
    "are the largest over the ranks (per rank, not summed); speed-up is 1-rank time / time; "
    "comm is a rank's median time waiting for its collectives and the bytes it sends per "
    "forward; diffs compare each rank's outputs with its frames at world size 1. Training "
    "split over ranks (`--mode train`): the peak is the step's highest phase peak, comm is "
    "per step, and the loss diffs compare the step's loss summed over the ranks with the "
    "same step's on one rank (same initial weights, input and warm-up steps)."
)


INFERENCE_NOTE = (
    "Peak: the activation peak, bytes allocated during the forward above those live "
    "before it (weights and input excluded): `max_memory_allocated` minus the start on "
    "GPUs, the profiler's tensor bytes on CPUs (kernel scratch apart; results.csv has "
    "both, and the allocator's totals). Times are medians of the timed repeats "
    f"(min, max and IQR in results.csv). Ratios are variant / {BASELINE}: below 1 is "
    f"smaller or faster. Max abs diff compares outputs with {BASELINE}'s (same weights "
    "and input)."
)
TRAIN_NOTE = (
    "Training (`--mode train`): each case is a training step (forward with the loss, "
    "backward, AdamW) of the parts named under its heading, one variant's model at a time. "
    "A phase's peak is absolute: everything allocated at its highest, weights, gradients and "
    "AdamW state included (`max_memory_allocated` after a peak reset at the phase's start on "
    "GPUs; on CPUs the tensors live when the step began plus the profiler's tensor bytes). "
    "Phase and step times are medians of the timed steps (min, max and IQR of the steps in "
    f"results.csv). Ratios are variant / {BASELINE}: below 1 is smaller or faster. Gradients "
    "are the trainable parameters' gradient bytes; loss diff compares the measured step's "
    f"loss with {BASELINE}'s (same initial weights, input and warm-up steps)."
)


def format_ms(value: float | None) -> str:
    """Milliseconds to one decimal; `-` for None."""
    return "-" if value is None else f"{value:.1f}"


def format_loss(value: float | None) -> str:
    """A loss to six significant digits; `-` for None."""
    return "-" if value is None else f"{value:.6g}"


def compared_variants(records: list[CaseRecord]) -> tuple[list[str], list[str]]:
    """The variants in series order, and those compared with the baseline (none without it)."""
    variants = series_order(records)
    others = [name for name in variants if name != BASELINE] if BASELINE in variants else []
    return variants, others


def variant_values(
    row: dict[str, CaseRecord | None], variants: list[str], name: str, text: Callable[[Any], str]
) -> list[str]:
    """Field `name` of each variant's record in `row` (by variant), as cells."""
    return [describe(row[v], text, ok_value(row[v], name)) for v in variants]


def variant_cells(
    row: dict[str, CaseRecord | None],
    variants: list[str],
    others: list[str],
    name: str,
    text: Callable[[Any], str],
) -> list[str]:
    """Field `name` of each variant's record, then each other variant's ratio to the
    baseline's."""
    base = row.get(BASELINE)
    ratios = [format_ratio(ok_value(row[v], name), ok_value(base, name)) for v in others]
    return variant_values(row, variants, name, text) + ratios


def table_head(header: list[str]) -> list[str]:
    """A markdown table's header and its alignment row (right-aligned columns)."""
    return ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]


def config_table(records: list[CaseRecord]) -> list[str]:
    """Frames as rows; peaks, times and outputs per variant; ratios against the baseline."""
    variants, others = compared_variants(records)
    by_cell = {(r.frames, r.variant): r for r in records}
    header = ["frames"]
    header += [f"{v} peak" for v in variants] + [f"{v}/{BASELINE} peak" for v in others]
    header += [f"{v} ms" for v in variants] + [f"{v}/{BASELINE} time" for v in others]
    header += [f"{v} outputs" for v in variants] + [f"{v} max abs diff" for v in others]
    lines = table_head(header)
    for frames in sorted({r.frames for r in records}):
        row = {v: by_cell.get((frames, v)) for v in variants}
        cells = [str(frames)]
        for name, text in (("activation_peak_bytes", format_size), ("median_ms", format_ms)):
            cells += variant_cells(row, variants, others, name, text)
        cells += variant_values(row, variants, "output_bytes", format_size)
        cells += [format_diff(ok_value(row[v], "max_abs_diff")) for v in others]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def training_parts(records: list[CaseRecord]) -> str:
    """What a train-mode configuration's cases train and checkpoint, as one line."""
    trained = sorted({(r.trainable, r.checkpoint) for r in records}, key=str)
    return "; ".join(f"Trains `{parts}`, checkpoint `{policy}`." for parts, policy in trained)


def phase_table(records: list[CaseRecord]) -> list[str]:
    """A row per frame count and training phase: each variant's absolute peak and median
    time in the phase, with ratios against the baseline."""
    variants, others = compared_variants(records)
    by_cell = {(r.frames, r.variant): r for r in records}
    header = ["frames", "phase"]
    header += [f"{v} peak" for v in variants] + [f"{v}/{BASELINE} peak" for v in others]
    header += [f"{v} ms" for v in variants] + [f"{v}/{BASELINE} time" for v in others]
    lines = table_head(header)
    for frames in sorted({r.frames for r in records}):
        row = {v: by_cell.get((frames, v)) for v in variants}
        for phase in PHASES:
            cells = [str(frames), phase]
            for figure, text in (("peak_bytes", format_size), ("ms", format_ms)):
                cells += variant_cells(row, variants, others, phase_field(phase, figure), text)
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def step_table(records: list[CaseRecord]) -> list[str]:
    """A row per frame count: each variant's median step time, gradient bytes and loss, with
    the time ratio and the loss difference against the baseline."""
    variants, others = compared_variants(records)
    by_cell = {(r.frames, r.variant): r for r in records}
    header = ["frames"]
    header += [f"{v} step ms" for v in variants] + [f"{v}/{BASELINE} time" for v in others]
    header += [f"{v} gradients" for v in variants]
    header += [f"{v} loss" for v in variants] + [f"{v} loss diff" for v in others]
    lines = table_head(header)
    for frames in sorted({r.frames for r in records}):
        row = {v: by_cell.get((frames, v)) for v in variants}
        cells = [str(frames), *variant_cells(row, variants, others, "median_ms", format_ms)]
        cells += variant_values(row, variants, "gradient_bytes", format_size)
        cells += variant_values(row, variants, "loss", format_loss)
        cells += [format_diff(ok_value(row[v], "max_abs_diff")) for v in others]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


PEAK_FIELD = "activation_peak_bytes"


def largest_over_ranks(records: list[CaseRecord], name: str) -> float | None:
    """The largest value of field `name` over the ranks' records; None when there are none,
    one failed or one lacks the value."""
    values = [ok_value(record, name) for record in records]
    return None if not values or None in values else max(values)


def ranks_cell(records: list[CaseRecord], name: str, text: Callable[[Any], str]) -> str:
    """A table cell of the ranks' records: the first failure's status, else `text` of the
    largest value (`-` when missing)."""
    failed = [record.status.upper() for record in records if record.status != "ok"]
    if failed:
        return failed[0]
    value = largest_over_ranks(records, name)
    return "-" if value is None else text(value)


def hidden_cell(records: list[CaseRecord]) -> str:
    """The share of the ranks' serial communication time that overlapped forwards hid behind
    compute: 1 - waited / serial, summed over the ranks (`-` when a figure is missing)."""
    waited = [record.comm_seconds for record in records]
    serial = [record.comm_serial_seconds for record in records]
    if not records or None in waited or None in serial or not sum(serial):
        return "-"
    return f"{1 - sum(waited) / sum(serial):.0%}"


def sequence_table(records: list[CaseRecord]) -> list[str]:
    """A row per variant, frames and world size above 1: the largest per-rank peak and time
    over the ranks, against the same frames on one rank, with communication and differences
    (in train mode the peak is the step's highest phase peak and the differences the loss's)."""
    cells: dict[tuple, list[CaseRecord]] = defaultdict(list)
    for record in records:
        cells[(record.variant, record.frames, record.world_size)].append(record)
    training = all(record.mode == "train" for record in records)
    peak, peak_name = ("step peak", "step_peak_bytes") if training else ("peak", PEAK_FIELD)
    header = ["variant", "frames", "ranks", f"1-rank {peak}", f"{peak} per rank", "peak ratio"]
    header += ["1-rank ms", "ms", "speed-up", "comm ms", "comm hidden", "comm per rank"]
    header += ["loss abs diff", "loss rel diff"] if training else ["max abs diff", "max rel diff"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for variant, frames, world_size in sorted(key for key in cells if key[2] > 1):
        alone = cells.get((variant, frames, 1), [])
        split = cells[(variant, frames, world_size)]
        row = [variant, str(frames), str(world_size)]
        for name, text in ((peak_name, format_size), ("median_ms", format_ms)):
            row += [ranks_cell(alone, name, text), ranks_cell(split, name, text)]
            # The peak ratio is split / alone (below 1 is smaller); the speed-up alone / split.
            ratio = (split, alone) if name == peak_name else (alone, split)
            row.append(format_ratio(*(largest_over_ranks(r, name) for r in ratio)))
        row.append(ranks_cell(split, "comm_seconds", lambda seconds: format_ms(seconds * 1e3)))
        row.append(hidden_cell(split))
        row.append(ranks_cell(split, "comm_bytes", format_size))
        row += [ranks_cell(split, name, format_diff) for name in ("max_abs_diff", "max_rel_diff")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def largest_fitting(records: list[CaseRecord]) -> list[str]:
    """Per variant: the largest frame count that ran and the smallest that ran out of memory."""
    lines = []
    for variant in series_order(records):
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
    ]
    if not records or any(record.mode != "train" for record in records):
        lines += ["", INFERENCE_NOTE]
    if any(record.parallel == "sequence" for record in records):
        lines += ["", SEQUENCE_NOTE]
    if any(record.mode == "train" for record in records):
        lines += ["", TRAIN_NOTE]
    for key, config_records in group_by_config(records).items():
        lines += ["", f"## {config_title(key)}", ""]
        by_case = [record for record in config_records if record.parallel != "sequence"]
        split = [record for record in config_records if record.parallel == "sequence"]
        if by_case and key[-1] == "train":
            lines += [training_parts(by_case), "", *phase_table(by_case), "", *step_table(by_case)]
            lines += ["", *largest_fitting(by_case)]
        elif by_case:
            lines += [*config_table(by_case), "", *largest_fitting(by_case)]
        if by_case and split:
            lines.append("")
        if split and key[-1] == "train" and not by_case:
            lines += [training_parts(split), ""]
        if split:
            lines += sequence_table(split)
    lines += ["", "## Environment", "", *environment_table(environment)]
    return "\n".join(lines) + "\n"
