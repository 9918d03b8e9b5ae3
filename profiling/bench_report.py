"""Compare saved pytest-benchmark runs: each variant against the baseline per configuration,
and the latest run against the previous one, as Markdown and CSV.

    python -m profiling.bench_report [FILE_OR_DIR ...] [--storage .benchmarks] [--out DIR]
"""

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggt.memory.units import format_bytes

SUMMARY_FIELDS = [
    "configuration",
    "device",
    "variant",
    "rounds",
    "median_ms",
    "iqr_ms",
    "peak_bytes",
    "output_bytes",
    "time_ratio",
    "peak_ratio",
    "output_ratio",
]
CHANGE_FIELDS = [
    "configuration",
    "device",
    "variant",
    "previous_median_ms",
    "latest_median_ms",
    "time_change_pct",
    "time_within_noise",
    "previous_peak_bytes",
    "latest_peak_bytes",
    "peak_change_pct",
]


class ReportError(Exception):
    """A problem with the inputs or the output folder, reported in one line (exit code 2)."""


@dataclass(frozen=True)
class Result:
    """One benchmark of a saved run: its configuration (group), device, variant and figures."""

    configuration: str
    device: str
    variant: str
    rounds: int
    median_s: float
    iqr_s: float
    peak_bytes: int | None
    output_bytes: int | None

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the same benchmark across runs."""
        return self.configuration, self.device, self.variant


@dataclass(frozen=True)
class Run:
    """A saved pytest-benchmark file: when it ran, on which commit, and its results."""

    path: Path
    datetime: str
    commit: str
    results: list[Result]


def find_files(paths: Sequence[Path], storage: Path) -> list[Path]:
    """The JSON files named, or found under the named folders (the storage when none named)."""
    files: list[Path] = []
    for path in paths or [storage]:
        if path.is_dir():
            files.extend(sorted(path.rglob("*.json")))
        elif path.is_file():
            files.append(path)
        else:
            raise ReportError(f"{path} does not exist")
    if not files:
        where = ", ".join(str(path) for path in paths or [storage])
        raise ReportError(
            f"no pytest-benchmark JSON files in {where}; run `nox -s benchmark` first"
        )
    return files


def parse_result(entry: dict[str, Any]) -> Result:
    """A Result from one entry of a file's `benchmarks` list."""
    extra = entry.get("extra_info") or {}
    stats = entry["stats"]
    return Result(
        configuration=entry.get("group") or entry["name"],
        device=str(extra.get("device", "unknown")),
        variant=str(
            extra.get("variant") or entry.get("params", {}).get("variant") or entry["name"]
        ),
        rounds=int(stats["rounds"]),
        median_s=float(stats["median"]),
        iqr_s=float(stats["iqr"]),
        peak_bytes=extra.get("peak_bytes"),
        output_bytes=extra.get("output_bytes"),
    )


def load_run(path: Path) -> Run:
    """Read one saved pytest-benchmark file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise ReportError(f"cannot read {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise ReportError(f"{path} is not JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(f"{path} is not a pytest-benchmark file (no 'benchmarks' list)")
    try:
        results = [parse_result(entry) for entry in data["benchmarks"]]
    except (KeyError, TypeError, ValueError) as error:
        raise ReportError(
            f"{path} holds a malformed benchmark ({type(error).__name__}: {error})"
        ) from None
    commit = data.get("commit_info") or {}
    label = str(commit.get("id", "unknown"))[:8] + ("+dirty" if commit.get("dirty") else "")
    return Run(path=path, datetime=str(data.get("datetime", "")), commit=label, results=results)


def latest_and_previous(runs: Sequence[Run]) -> tuple[Run, Run | None]:
    """The newest run, and the newest earlier one sharing at least one benchmark with it."""
    ordered = sorted(runs, key=lambda run: (run.datetime, str(run.path)))
    latest = ordered[-1]
    keys = {result.key for result in latest.results}
    for run in reversed(ordered[:-1]):
        if keys & {result.key for result in run.results}:
            return latest, run
    return latest, None


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, or None where either is missing or the base is zero."""
    if value is None or not base:
        return None
    return value / base


def summary_rows(run: Run, baseline: str) -> list[dict[str, Any]]:
    """Per configuration and device, each variant's figures and its ratios to the baseline."""
    order: dict[tuple[str, str], list[Result]] = {}
    for result in run.results:
        order.setdefault((result.configuration, result.device), []).append(result)
    rows = []
    for results in order.values():
        base = next((result for result in results if result.variant == baseline), None)
        for result in sorted(results, key=lambda result: result.variant != baseline):
            rows.append(
                {
                    "configuration": result.configuration,
                    "device": result.device,
                    "variant": result.variant,
                    "rounds": result.rounds,
                    "median_ms": result.median_s * 1e3,
                    "iqr_ms": result.iqr_s * 1e3,
                    "peak_bytes": result.peak_bytes,
                    "output_bytes": result.output_bytes,
                    "time_ratio": ratio(result.median_s, base and base.median_s),
                    "peak_ratio": ratio(result.peak_bytes, base and base.peak_bytes),
                    "output_ratio": ratio(result.output_bytes, base and base.output_bytes),
                }
            )
    return rows


def change_rows(latest: Run, previous: Run) -> list[dict[str, Any]]:
    """For each benchmark of the latest run found in the previous one: the change in time and
    peak memory, and whether the time moved by less than the larger of the two IQRs."""
    before = {result.key: result for result in previous.results}
    rows = []
    for result in latest.results:
        old = before.get(result.key)
        if old is None:
            continue
        time_ratio = ratio(result.median_s, old.median_s)
        peak_ratio = ratio(result.peak_bytes, old.peak_bytes)
        noise = max(result.iqr_s, old.iqr_s)
        rows.append(
            {
                "configuration": result.configuration,
                "device": result.device,
                "variant": result.variant,
                "previous_median_ms": old.median_s * 1e3,
                "latest_median_ms": result.median_s * 1e3,
                "time_change_pct": None if time_ratio is None else (time_ratio - 1) * 100,
                "time_within_noise": abs(result.median_s - old.median_s) <= noise,
                "previous_peak_bytes": old.peak_bytes,
                "latest_peak_bytes": result.peak_bytes,
                "peak_change_pct": None if peak_ratio is None else (peak_ratio - 1) * 100,
            }
        )
    return rows


def times(value: float | None) -> str:
    """A ratio as `0.87x`; a dash when unknown."""
    return "-" if value is None else f"{value:.2f}x"


def percent(value: float | None) -> str:
    """A change as `+3.1%`; a dash when unknown."""
    return "-" if value is None else f"{value:+.1f}%"


def describe(run: Run) -> str:
    """A run's file, time and commit, for the report's header."""
    return f"`{run.path}` ({run.datetime or 'no date'}, commit {run.commit})"


def markdown(
    latest: Run,
    previous: Run | None,
    summary: list[dict[str, Any]],
    changes: list[dict[str, Any]],
    baseline: str,
) -> str:
    """The report: the latest run's variants side by side, then the change since the previous."""
    lines = [
        "# Benchmark report",
        "",
        f"Latest run: {describe(latest)}.",
        f"Previous run: {describe(previous)}." if previous else "Previous run: none saved.",
        "",
        f"## Variants against `{baseline}` (latest run)",
        "",
        "Time: median of the timed rounds after warm-up, with their interquartile range. Peak:",
        "memory allocated during one forward above what was live before it. Output: bytes of",
        f"the returned tensors. Ratios: variant / `{baseline}` in the same configuration.",
        "",
        "| configuration | device | variant | time (ms) | IQR (ms) | time ratio | peak memory "
        "| peak ratio | output | output ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary:
        lines.append(
            f"| {row['configuration']} | {row['device']} | {row['variant']} "
            f"| {row['median_ms']:.2f} | {row['iqr_ms']:.2f} | {times(row['time_ratio'])} "
            f"| {format_bytes(row['peak_bytes'])} | {times(row['peak_ratio'])} "
            f"| {format_bytes(row['output_bytes'])} | {times(row['output_ratio'])} |"
        )
    lines += ["", "## Change since the previous run", ""]
    if previous is None:
        lines.append("No earlier saved run holds these benchmarks; run them again to compare.")
    elif not changes:
        lines.append("The previous run holds none of the latest run's benchmarks.")
    else:
        lines += [
            "Within noise: the medians differ by less than the larger interquartile range.",
            "",
            "| configuration | device | variant | time before (ms) | time now (ms) | change "
            "| within noise | peak before | peak now | change |",
            "|---|---|---|---:|---:|---:|---|---:|---:|---:|",
        ]
        for row in changes:
            lines.append(
                f"| {row['configuration']} | {row['device']} | {row['variant']} "
                f"| {row['previous_median_ms']:.2f} | {row['latest_median_ms']:.2f} "
                f"| {percent(row['time_change_pct'])} "
                f"| {'yes' if row['time_within_noise'] else 'no'} "
                f"| {format_bytes(row['previous_peak_bytes'])} "
                f"| {format_bytes(row['latest_peak_bytes'])} | {percent(row['peak_change_pct'])} |"
            )
    return "\n".join(lines) + "\n"


def write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    """Rows as CSV with a header; unknown values (None) as empty cells."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_report(
    out: Path, report: str, summary: list[dict[str, Any]], changes: list[dict[str, Any]]
) -> None:
    """report.md, summary.csv and changes.csv under `out`."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(report)
        write_csv(out / "summary.csv", SUMMARY_FIELDS, summary)
        write_csv(out / "changes.csv", CHANGE_FIELDS, changes)
    except OSError as error:
        raise ReportError(f"cannot write the report to {out}: {error}") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m profiling.bench_report",
        description="Compare saved pytest-benchmark runs (Markdown and CSV).",
    )
    parser.add_argument(
        "files", nargs="*", type=Path, help="saved JSON files or folders (default: --storage)"
    )
    parser.add_argument(
        "--storage",
        default=".benchmarks",
        help="pytest-benchmark storage folder, searched when no files are given",
    )
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks"))
    parser.add_argument("--baseline", default="full", help="the variant ratios are taken to")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Write report.md, summary.csv and changes.csv under --out and print the Markdown."""
    args = parse_args(argv)
    storage = Path(args.storage.removeprefix("file://"))
    try:
        runs = [load_run(path) for path in find_files(args.files, storage)]
        latest, previous = latest_and_previous(runs)
        summary = summary_rows(latest, args.baseline)
        changes = change_rows(latest, previous) if previous else []
        report = markdown(latest, previous, summary, changes, args.baseline)
        write_report(args.out, report, summary, changes)
    except ReportError as error:
        print(f"bench_report: error: {error}", file=sys.stderr)
        return 2
    print(report, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
