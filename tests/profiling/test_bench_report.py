"""The benchmark comparison report, on small pytest-benchmark files written by hand."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from profiling.bench_report import main
from tests.support.repo import REPO

GROUP = "aggregator B1 S2 56x56"


def entry(variant: str, median: float, iqr: float, peak: int, output: int, device: str) -> dict:
    """One benchmark as pytest-benchmark saves it (times in seconds)."""
    return {
        "group": GROUP,
        "name": f"test_aggregator[S2-{variant}]",
        "fullname": f"tests/benchmarks/test_bench_aggregator.py::test_aggregator[S2-{variant}]",
        "params": {"frames": 2, "variant": variant},
        "extra_info": {
            "variant": variant,
            "device": device,
            "peak_bytes": peak,
            "output_bytes": output,
        },
        "stats": {"median": median, "iqr": iqr, "rounds": 5, "min": median, "max": median},
    }


def save_run(path: Path, when: str, benchmarks: list[dict]) -> Path:
    """Write a saved run with its date and commit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    run = {
        "machine_info": {"node": "test"},
        "commit_info": {"id": "0123456789abcdef", "dirty": False},
        "benchmarks": benchmarks,
        "datetime": when,
        "version": "5.2.3",
    }
    path.write_text(json.dumps(run))
    return path


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    """CSV rows keyed by their variant."""
    with path.open(newline="") as handle:
        return {row["variant"]: row for row in csv.DictReader(handle)}


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """Two runs; the newer one is named first so order must come from the saved dates."""
    folder = tmp_path / "storage" / "Linux-CPython-3.11-64bit"
    save_run(
        folder / "0001_new.json",
        "2026-01-02T00:00:00+00:00",
        [
            entry("full", 0.025, 0.001, 1000, 600, "cpu"),
            entry("optimized", 0.0185, 0.001, 500, 200, "cpu"),
        ],
    )
    save_run(
        folder / "0002_old.json",
        "2026-01-01T00:00:00+00:00",
        [
            entry("full", 0.020, 0.002, 1000, 600, "cpu"),
            entry("optimized", 0.020, 0.002, 400, 200, "cpu"),
        ],
    )
    return tmp_path / "storage"


def test_ratios_to_full_in_the_latest_run(storage: Path, tmp_path: Path) -> None:
    assert main(["--storage", str(storage), "--out", str(tmp_path / "out")]) == 0
    summary = read_csv(tmp_path / "out" / "summary.csv")
    assert float(summary["full"]["median_ms"]) == pytest.approx(25.0)
    assert float(summary["full"]["time_ratio"]) == pytest.approx(1.0)
    assert float(summary["optimized"]["median_ms"]) == pytest.approx(18.5)
    assert float(summary["optimized"]["time_ratio"]) == pytest.approx(0.74)
    assert float(summary["optimized"]["peak_ratio"]) == pytest.approx(0.5)
    assert float(summary["optimized"]["output_ratio"]) == pytest.approx(1 / 3)


def test_change_since_the_previous_run(storage: Path, tmp_path: Path) -> None:
    assert main(["--storage", str(storage), "--out", str(tmp_path / "out")]) == 0
    changes = read_csv(tmp_path / "out" / "changes.csv")
    assert float(changes["full"]["time_change_pct"]) == pytest.approx(25.0)
    assert changes["full"]["time_within_noise"] == "False"
    assert float(changes["full"]["peak_change_pct"]) == pytest.approx(0.0)
    assert float(changes["optimized"]["time_change_pct"]) == pytest.approx(-7.5)
    assert changes["optimized"]["time_within_noise"] == "True"
    assert float(changes["optimized"]["peak_change_pct"]) == pytest.approx(25.0)


def test_markdown_is_printed_and_written(
    storage: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(storage), "--out", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert capsys.readouterr().out == report
    assert "0001_new.json" in report.split("Previous run")[0]
    assert f"| {GROUP} | cpu | optimized | 18.50 | 1.00 | 0.74x | 500 B | 0.50x |" in report
    full_change = f"| {GROUP} | cpu | full | 20.00 | 25.00 | +25.0% | no | 1000 B | 1000 B |"
    assert full_change in report


def test_a_single_run_has_no_changes(tmp_path: Path) -> None:
    only = save_run(
        tmp_path / "run.json", "2026-01-01T00:00:00", [entry("full", 0.01, 0.0, 10, 5, "cpu")]
    )
    assert main([str(only), "--out", str(tmp_path / "out")]) == 0
    assert "Previous run: none saved." in (tmp_path / "out" / "report.md").read_text()
    assert read_csv(tmp_path / "out" / "changes.csv") == {}


def test_runs_on_another_device_are_not_compared(tmp_path: Path) -> None:
    save_run(tmp_path / "a.json", "2026-01-01T00:00:00", [entry("full", 0.01, 0.0, 10, 5, "cuda")])
    save_run(tmp_path / "b.json", "2026-01-02T00:00:00", [entry("full", 0.02, 0.0, 10, 5, "cpu")])
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "No earlier saved run holds these benchmarks" in report


def test_no_saved_files_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "profiling.bench_report", "--storage", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "no pytest-benchmark JSON files" in done.stderr


def test_a_file_that_is_not_a_saved_run_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "other.json").write_text('{"results": []}')
    assert main([str(tmp_path / "other.json"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "not a pytest-benchmark file" in error
