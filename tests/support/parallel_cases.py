"""Cases run by parallel_worker.py on gloo ranks under torchrun, and their findings read back."""

import json
from pathlib import Path

from tests.support.launch import torchrun

WORKER = Path(__file__).resolve().parent / "parallel_worker.py"
TIMEOUT_S = 600


def run_cases(folder: Path, ranks: int, cases: list[dict]) -> list[dict]:
    """Run `cases` on `ranks` gloo ranks in one launch; every rank's findings, in rank order."""
    cases_file = folder / "cases.json"
    cases_file.write_text(json.dumps(cases))
    completed = torchrun(ranks, WORKER, [str(cases_file), str(folder)], timeout_s=TIMEOUT_S)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(ranks)]
