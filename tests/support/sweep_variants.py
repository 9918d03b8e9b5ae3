"""The distributed sweep tests' `--variant-module`: `oom` raises torch.OutOfMemoryError from 2
frames on; `killer` SIGKILLs rank 1 on its second configuration of the first attempt."""

import os
import signal

import torch

from vggt.models.variants import Variant, build_full, register_variant, variant_names

_frames_seen_by_killer: set[int] = set()


def _raise_oom(module: torch.nn.Module, args: tuple) -> None:
    if args[0].shape[1] >= 2:
        raise torch.OutOfMemoryError("injected out-of-memory for the test")


def _kill_rank_1_on_its_second_configuration(module: torch.nn.Module, args: tuple) -> None:
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0"
    if os.environ.get("RANK") != "1" or not first_attempt:
        return
    _frames_seen_by_killer.add(args[0].shape[1])
    if len(_frames_seen_by_killer) == 2:
        os.kill(os.getpid(), signal.SIGKILL)


def _with_hook(hook):
    def build(component: str, architecture) -> torch.nn.Module:
        module = build_full(component, architecture)
        module.register_forward_pre_hook(hook)
        return module

    return build


def register_variants() -> None:
    """Called by profiling/run.py --variant-module tests.support.sweep_variants."""
    if "oom" not in variant_names():
        register_variant(Variant("oom", _with_hook(_raise_oom)))
    if "killer" not in variant_names():
        register_variant(Variant("killer", _with_hook(_kill_rank_1_on_its_second_configuration)))
