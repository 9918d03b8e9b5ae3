"""The store-backed work queue and the durable per-rank partial logs."""

import json
import threading
from pathlib import Path

import torch.distributed as dist

from profiling.sweep.records import CaseRecord, PartialLog, deduplicate, read_partial_records
from profiling.sweep.work_queue import WorkQueue, collect, exchange, publish
from tests.support.profiling_records import sample_record


def test_every_position_is_claimed_exactly_once_across_threads() -> None:
    store = dist.HashStore()
    claimed: list[list[int]] = [[] for _ in range(4)]

    def worker(index: int) -> None:
        claimed[index].extend(WorkQueue(store, "run/attempt0/queue", 200))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    positions = sorted(p for part in claimed for p in part)
    assert positions == list(range(200))


def test_a_new_attempt_starts_from_the_first_position_again() -> None:
    store = dist.HashStore()
    assert list(WorkQueue(store, "run/attempt0/queue", 3)) == [0, 1, 2]
    assert list(WorkQueue(store, "run/attempt0/queue", 3)) == []
    assert list(WorkQueue(store, "run/attempt1/queue", 2)) == [0, 1]


def test_exchange_and_collect_return_values_in_rank_order() -> None:
    store = dist.HashStore()
    publish(store, "k", 1, {"from": 1})
    assert exchange(store, "k", 0, 2, {"from": 0}) == [{"from": 0}, {"from": 1}]
    assert collect(store, "k", 2) == [{"from": 0}, {"from": 1}]


def record(case_id: str, finished_at: str, status: str = "ok") -> CaseRecord:
    return sample_record(case_id=case_id, finished_at=finished_at, status=status)


def test_partial_log_round_trips_and_survives_a_torn_line(tmp_path: Path) -> None:
    log = PartialLog(tmp_path, rank=3)
    log.append([record("a", "1"), record("b", "1")])
    with log.path.open("a") as file:
        file.write('{"case_id": "c", "finis')
    log.append([record("d", "2")])
    assert log.path.name == "rank3.jsonl"
    assert [r.case_id for r in read_partial_records(tmp_path)] == ["a", "b", "d"]


def test_reading_merges_every_rank_file(tmp_path: Path) -> None:
    PartialLog(tmp_path, 0).append([record("a", "1")])
    PartialLog(tmp_path, 1).append([record("b", "1")])
    assert sorted(r.case_id for r in read_partial_records(tmp_path)) == ["a", "b"]
    assert read_partial_records(tmp_path / "missing") == []


def test_deduplicate_keeps_the_latest_record_of_each_case() -> None:
    records = [record("b", "1"), record("a", "1", "oom"), record("a", "2"), record("b", "0")]
    kept = deduplicate(records)
    assert [(r.case_id, r.finished_at) for r in kept] == [("a", "2"), ("b", "1")]
    assert json.dumps([r.to_json() for r in kept])
