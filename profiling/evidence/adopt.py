"""`python -m profiling.gpu_check --adopt DIR`: the rate a run measured (DIR/results.json's
`measured_rate`) becomes its GPU type's entry in the library's rates table, source measured,
naming DIR's results.json; refused when a check failed or erred, when the run measured no
rate, or when it ran on a CPU."""

import json
from pathlib import Path

from profiling.evidence.report import RESULTS_FILE
from profiling.evidence.results import ERROR, FAIL
from profiling.report.results import write_atomically
from vggt.memory.device_rates import MEASURED, RATES_PATH, DeviceRates, read_table

REPO_ROOT = Path(__file__).resolve().parents[2]


class NotAdopted(Exception):
    """Why a run's rate was not adopted."""


def report_name(folder: Path) -> str:
    """DIR/results.json relative to the repository where it lies inside it, else as given."""
    path = folder.resolve() / RESULTS_FILE
    if path.is_relative_to(REPO_ROOT):
        return path.relative_to(REPO_ROOT).as_posix()
    return str(folder / RESULTS_FILE)


def read_rate(folder: Path) -> tuple[dict, str]:
    """DIR/results.json's measured rate and the date its run started; NotAdopted when the run
    cannot give one."""
    path = folder / RESULTS_FILE
    try:
        document = json.loads(path.read_text())
        steps, started = document["steps"], document["started_at"]
    except (OSError, ValueError, KeyError) as error:
        raise NotAdopted(f"{path} is not a results.json of gpu_check: {error!r}") from None
    failed = [
        f"{step['name']} ({step['status']})" for step in steps if step["status"] in (FAIL, ERROR)
    ]
    if failed:
        raise NotAdopted(f"{path}: {', '.join(failed)}; a run with a failed check is not adopted")
    rate = document.get("measured_rate")
    if not rate:
        raise NotAdopted(
            f"{path} holds no measured rate: no optimized aggregator was timed in 16 bits at "
            "enough tokens"
        )
    if not rate["device"].startswith("cuda"):
        raise NotAdopted(f"{path}: the rate was measured on {rate['device']}, not on a GPU")
    return rate, started[:10]


def adopt(folder: Path, table_path: Path = RATES_PATH) -> DeviceRates:
    """Write DIR's measured TFLOP/s into the table at `table_path`, in the entry of the GPU type
    the device's name contains (else a new one named after the device), whose fp32 share and
    link bandwidth stay as they were (the default's for a new one); returns the entry."""
    rate, date = read_rate(folder)
    table = read_table(table_path)
    name = rate["device_name"]
    matched = table.matching(name)
    base = matched or table.default
    rates = DeviceRates(
        gpu=matched.gpu if matched else name,
        tflops=round(rate["tflops"], 1),
        fp32_share=base.fp32_share,
        link_gbs=base.link_gbs,
        source=MEASURED,
        report=report_name(folder),
        date=date,
        device=name,
        torch=rate["torch"],
    )
    write_atomically(table_path, json.dumps(table.with_gpu(rates).to_json(), indent=2) + "\n")
    return rates
