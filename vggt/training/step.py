"""One fine-tuning step in three phases: forward with the loss, backward, the AdamW update.

`TrainingStep` sets what trains and what autograd keeps, then runs each phase inside the
caller's `phase(name)` context, so meters can reset and read peaks per phase.
"""

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from vggt.parallel.group import SequenceGroup
from vggt.precision import Precision
from vggt.training.checkpointing import check_policy
from vggt.training.loss import Targets, layers_loss, training_loss
from vggt.training.trainable import set_trainable

PHASES = ("forward", "backward", "optimizer")
PhaseContext = Callable[[str], contextlib.AbstractContextManager]


def no_phase(name: str) -> contextlib.AbstractContextManager:
    """The phase context when nobody measures phases."""
    return contextlib.nullcontext()


def make_optimizer(parameters: list[nn.Parameter], lr: float = 1e-5) -> torch.optim.Optimizer:
    """AdamW over `parameters`; the fused kernel where there is one (no per-step temporaries
    the size of the parameters), the for-each one elsewhere."""
    if not parameters:
        raise ValueError("nothing to train: every parameter is frozen")
    device = parameters[0].device.type
    fused = device in ("cuda", "cpu")
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=0.05, fused=fused or None)


class TrainingStep:
    """Forward, backward and an AdamW step of `model` (a VGGT or an aggregator) training
    `parts`, with activations checkpointed as `checkpoint` says, in `precision`. An aggregator
    alone is trained on the mean square of `layers` (the ones heads would read).

    Split over ranks (`parallelize`), each rank passes its own frames and targets and the
    sequence's `total_frames`; the ranks' gradients are summed after backward, so every rank
    takes the step one device would."""

    def __init__(
        self,
        model: nn.Module,
        parts: tuple[str, ...],
        checkpoint: str,
        precision: Precision,
        lr: float = 1e-5,
        layers: list[int] | None = None,
    ) -> None:
        if not hasattr(model, "aggregator") and not layers:
            raise ValueError("an aggregator trained alone needs the layers its loss reads")
        self.model = model.train()
        self.layers = layers
        self.precision = precision
        self.parameters = set_trainable(model, parts)
        model.checkpoint_activations(check_policy(checkpoint))
        self.optimizer = make_optimizer(self.parameters, lr)
        self.gradient_bytes = 0

    def sequence_group(self) -> SequenceGroup | None:
        """The ranks the model's sequence is split over (their gradients are summed), if any."""
        aggregator = getattr(self.model, "aggregator", self.model)
        return getattr(aggregator, "sequence_group", None)

    def loss(
        self,
        images: torch.Tensor,
        targets: Targets | None,
        query_points: torch.Tensor | None = None,
        total_frames: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """The forward and its loss terms ("total" is what backward differentiates)."""
        with self.precision.autocast(images.device.type):
            if not hasattr(self.model, "aggregator"):
                layers = self.model(images)[0]
                return {"total": layers_loss(layers, self.layers, total_frames)}
            predictions = self.model(images, query_points)
        return training_loss(predictions, targets, total_frames)

    def __call__(
        self,
        images: torch.Tensor,
        targets: Targets | None,
        query_points: torch.Tensor | None = None,
        phase: PhaseContext = no_phase,
        total_frames: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """One step; returns the loss terms, detached. `gradient_bytes` holds the gradients'
        bytes after backward."""
        with phase("forward"):
            losses = self.loss(images, targets, query_points, total_frames)
        with phase("backward"):
            losses["total"].backward()
            values = {name: value.detach() for name, value in losses.items()}
            del losses
            group = self.sequence_group()
            if group is not None:
                group.all_reduce_sum_([p.grad for p in self.parameters if p.grad is not None])
        self.gradient_bytes = sum(
            p.grad.numel() * p.grad.element_size() for p in self.parameters if p.grad is not None
        )
        with phase("optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return values
