"""The report rank 0 writes once every rank is done: results.json, results.csv, summary.md and
plots."""

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from profiling.report.plots import write_plots
from profiling.report.summary import summary_markdown
from profiling.sweep.records import CaseRecord


def write_atomically(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so readers never see half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts become `outer_inner` columns."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update({f"{key}_{inner}": item for inner, item in value.items()})
        elif key == "time_ms" and value is None:
            flat.update({f"time_ms_{part}": None for part in ("median", "min", "max", "iqr")})
        else:
            flat[key] = value
    return flat


def records_csv(records: list[CaseRecord]) -> str:
    """All records as CSV, one column per flattened field in first-seen order."""
    rows = [flatten(record.to_json()) for record in records]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_report(out_dir: Path, records: list[CaseRecord], environment: dict[str, Any]) -> None:
    """results.json, results.csv, summary.md and plots/*.png under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {"environment": environment, "cases": [record.to_json() for record in records]}
    write_atomically(out_dir / "results.json", json.dumps(document, indent=2) + "\n")
    write_atomically(out_dir / "results.csv", records_csv(records))
    write_atomically(out_dir / "summary.md", summary_markdown(records, environment))
    write_plots(out_dir, records)
