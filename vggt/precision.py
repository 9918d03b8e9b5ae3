"""How a run computes: one named precision, used by the model runs, the estimator, the sweep and
the inference command alike.

- `fp32`: fp32 weights, no autocast.
- `autocast`: fp32 weights under bf16 autocast (how VGGT's README runs the model).
- `bf16`: the aggregator's weights in bf16, under bf16 autocast; the heads keep fp32 weights
  and run with autocast off, as the reference model runs its heads.
- `autocast-fp16`, `fp16`: the same two with fp16 in place of bf16.

The heads always run in fp32 with autocast off (`vggt.models.vggt.heads_in_fp32`); a
precision says what the aggregator runs in. Earlier names are read as aliases:
`bf16-autocast`, `bf16-cast` (and `--dtype bf16 --dtype-mode cast` on the command lines).
"""

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_MODES = ("autocast", "cast")


@dataclass(frozen=True)
class Precision:
    """A named way to run: the aggregator's weights dtype and the autocast dtype (None: off)."""

    name: str
    weights_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    description: str

    @property
    def label(self) -> str:
        """The name printed in reports and accepted by every `--precision` option."""
        return self.name

    @property
    def dtype(self) -> str:
        """The dtype the aggregator computes in: `fp32`, `bf16` or `fp16`."""
        computed = self.autocast_dtype or self.weights_dtype
        return next(name for name, value in DTYPE_NAMES.items() if value == computed)

    @property
    def mode(self) -> str:
        """`cast` when the aggregator's weights are in the compute dtype, else `autocast`."""
        cast = self.autocast_dtype is not None and self.weights_dtype == self.autocast_dtype
        return "cast" if cast else "autocast"

    def apply(self, module: nn.Module) -> nn.Module:
        """Put the aggregator's weights (the module's own, for an aggregator) in this
        precision's dtype; the heads keep theirs. Returns `module`."""
        getattr(module, "aggregator", module).to(self.weights_dtype)
        return module

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        """Autocast to this precision's dtype on `device_type`, or nothing without one."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.autocast_dtype)


PRECISIONS = {
    precision.name: precision
    for precision in (
        Precision("fp32", torch.float32, None, "fp32 weights, no autocast"),
        Precision("autocast", torch.float32, torch.bfloat16, "fp32 weights under bf16 autocast"),
        Precision(
            "bf16", torch.bfloat16, torch.bfloat16, "aggregator weights in bf16 under bf16 autocast"
        ),
        Precision(
            "autocast-fp16", torch.float32, torch.float16, "fp32 weights under fp16 autocast"
        ),
        Precision(
            "fp16", torch.float16, torch.float16, "aggregator weights in fp16 under fp16 autocast"
        ),
    )
}
ALIASES = {
    "bf16-autocast": "autocast",
    "bf16-cast": "bf16",
    "fp16-autocast": "autocast-fp16",
    "fp16-cast": "fp16",
    "fp32-autocast": "fp32",
    "fp32-cast": "fp32",
}


def get_precision(name: str) -> Precision:
    """The precision named `name` (or an earlier alias such as `bf16-cast`); ValueError naming
    the choices otherwise."""
    key = name.strip()
    found = PRECISIONS.get(ALIASES.get(key, key))
    if found is None:
        raise ValueError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}")
    return found


def from_dtype(dtype: str, mode: str = "autocast") -> Precision:
    """The precision that the earlier pair of options `--dtype D --dtype-mode M` selected
    (`fp32` whatever the mode; `D-M` for bf16 and fp16); ValueError for unknown ones."""
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPE_NAMES)}")
    if mode not in DTYPE_MODES:
        raise ValueError(f"unknown dtype mode {mode!r}; choose from {', '.join(DTYPE_MODES)}")
    return get_precision(f"{dtype}-{mode}")


def choose_precision(
    precision: str | None, dtype: str | None, dtype_mode: str | None, default: Precision
) -> Precision:
    """What a command line asks for: `--precision`, or the earlier `--dtype`/`--dtype-mode`
    pair (a missing half taken from `default`), or `default`; ValueError for both forms."""
    if precision is not None:
        if dtype is not None or dtype_mode is not None:
            raise ValueError("--precision replaces --dtype and --dtype-mode: give one of them")
        return get_precision(precision)
    if dtype is None and dtype_mode is None:
        return default
    return from_dtype(dtype or default.dtype, dtype_mode or "autocast")
