"""Case records for the profiling suite's tests, built the way the measurement starts them."""

import dataclasses

import torch

from profiling.sweep.cases import build_groups
from profiling.sweep.environment import RankInfo
from profiling.sweep.presets import load_preset
from profiling.sweep.records import CaseRecord

RANK = RankInfo.of(0, 1, 0, torch.device("cpu"))


def sample_record(**changes: object) -> CaseRecord:
    """The first case of the tiny preset as rank 0 starts it, with `changes` applied."""
    tiny = load_preset("tiny")
    case = build_groups(tiny.architecture, tiny.settings)[0].cases()[0]
    start = CaseRecord.start(case, RANK, tiny.settings.warmup, tiny.settings.repeats)
    return dataclasses.replace(start, **changes)
