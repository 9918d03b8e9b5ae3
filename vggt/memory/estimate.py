"""What one forward pass of a model needs on a CUDA device, from a pass on fake tensors (no
memory, no GPU): live tensor bytes at the peak (weights, input, kept outputs, transient
activations), the caching allocator's view of them (allocated bytes, a bound on reserved
bytes), and what must fit beside them: the CUDA context and, split over ranks, NCCL's buffers.

The pass runs the precision's program (`vggt.precision`): its weights, its autocast, the heads
in fp32 with autocast off; the images are fp32, as users pass them. It runs on the CPU under
CPU autocast, with CUDA autocast's fp32 rule on top for a CUDA target (`CudaAutocastRules`:
layer_norm, group_norm and softmax run in fp32, as CUDA autocast runs them; CPU autocast leaves
them in their input dtype). Kernel workspaces that do not back a tensor (cuDNN's, oneDNN's
scratchpads) are not seen; the cuBLAS workspace is added.
"""

import contextlib
import gc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from vggt.memory.allocator import (
    never_release_bytes,
    peak_rounded_bytes,
    reserved_bound,
    round_request,
)
from vggt.memory.outputs import named_outputs, output_bytes
from vggt.memory.tracker import LiveBytesTracker
from vggt.models.architecture import Architecture
from vggt.models.variants import get_variant
from vggt.parallel.group import SimulatedGroup, split_evenly
from vggt.parallel.sequence import choose_attention
from vggt.precision import Precision
from vggt.streaming.blocks import StreamedBlocks
from vggt.streaming.chunks import MIN_CHUNK_ELEMENTS

# cuBLAS/cuBLASLt workspace PyTorch allocates for the compute stream on compute capability
# >= 9.0 (Hopper): 4096 KiB x 8, taken from the caching allocator at the first matmul.
CUBLAS_WORKSPACE_BYTES = 32 << 20
# An assumption until `python -m profiling.gpu_check` measures it: the CUDA context and the
# loaded kernels, device memory outside the caching allocator.
CUDA_CONTEXT_BYTES = 600 << 20
# An allowance, at world size > 1, for what NCCL holds outside the caching allocator: its
# communicator's channel buffers (NCCL_BUFFSIZE, 4 MiB by default, per channel and peer for
# each protocol) and its kernels. An assumption until gpu_check measures it.
NCCL_BYTES = 1 << 30


@dataclass(frozen=True)
class Estimate:
    """What one forward pass needs on the (busiest) device, in bytes.

    `frames` over all `world_size` ranks, `rank_frames` of them on the busiest rank (the last).
    `live_peak_bytes`: live tensor bytes at the peak (weights + input + activations), of which
    `output_bytes` are kept outputs and `transient_bytes` the rest of the activations.
    `allocated_bytes`: that peak with each allocation rounded as the caching allocator rounds
    it, plus the cuBLAS workspace. `reserved_bound_bytes`: the device memory within which a
    model of the caching allocator completes the pass, releasing cached segments under
    pressure as PyTorch does (`allocator.reserved_bound`); `reserved_peak_bytes`: what a device
    with room to spare reserves (a replay that never releases), the figure an unconstrained
    run's peak reserve is compared with. `allocations`: the pass's allocation count (sizes
    the allocator's history when a snapshot is taken). `required_bytes`: what must be free on
    the device: reserved bound + CUDA context + NCCL's buffers (world size > 1).
    """

    variant: str
    frames: int
    world_size: int
    rank_frames: int
    precision: str
    live_peak_bytes: int
    weights_bytes: int
    input_bytes: int
    output_bytes: int
    transient_bytes: int
    host_bytes: int
    allocated_bytes: int
    reserved_bound_bytes: int
    reserved_peak_bytes: int
    allocations: int
    cuda_context_bytes: int
    nccl_bytes: int
    required_bytes: int


class FakeModel:
    """One variant built on fake storage (no memory), reused across frame counts.

    `target_device` is the device type the estimate is for: the streamed blocks take its
    minimum chunk size (vggt.streaming.chunks.MIN_CHUNK_ELEMENTS). With `world_size` > 1 the
    sequence is split over that many ranks (`parallelize(group, attention)`, the optimized
    variant's; `attention` None takes `choose_attention`'s default for `ranks_per_node` ranks
    on each node, None: one node) and a pass traces the last
    rank alone through a `SimulatedGroup`: it holds the largest share of `split_evenly` (the
    last ranks take the extra frames and, under Ulysses, the extra heads), so it is the
    busiest rank. With `query_points` > 0 the model has its track head and the pass tracks
    that many points (split over ranks, each rank through its own frames). With
    `host_predictions` a model that can (the optimized one) puts its depth
    and point predictions in host memory chunk by chunk, as `vggt.infer` runs it: they count
    as host bytes. `passes` counts fake passes.
    """

    def __init__(
        self,
        variant: str,
        component: str,
        architecture: Architecture,
        precision: Precision,
        offload: bool = False,
        target_device: str = "cuda",
        cublas_workspace_bytes: int = CUBLAS_WORKSPACE_BYTES,
        cuda_context_bytes: int = CUDA_CONTEXT_BYTES,
        nccl_bytes: int = NCCL_BYTES,
        world_size: int = 1,
        attention: str | None = None,
        ranks_per_node: int | None = None,
        host_predictions: bool = True,
        query_points: int = 0,
    ) -> None:
        if target_device not in MIN_CHUNK_ELEMENTS:
            raise ValueError(f"unknown target device {target_device!r}")
        if world_size < 1:
            raise ValueError(f"world_size must be at least 1, got {world_size}")
        self.variant = variant
        self.target_device = target_device
        self.precision = precision
        self.cublas_workspace_bytes = cublas_workspace_bytes
        self.cuda_context_bytes = cuda_context_bytes
        self.nccl_bytes = nccl_bytes if world_size > 1 else 0
        self.world_size = world_size
        self.query_points = query_points if component == "model" else 0
        if self.query_points:
            architecture = replace(architecture, tracks=True)
        self._estimates: dict[tuple[int, int, int, int], Estimate] = {}
        self.attention = choose_attention(
            attention, world_size, architecture.num_heads, ranks_per_node
        )
        self.passes = 0
        with torch.device("meta"):
            module = precision.apply(get_variant(variant).build(component, architecture))
        aggregator = getattr(module, "aggregator", module)
        if offload and hasattr(aggregator, "offload_device"):
            aggregator.offload_device = torch.device("meta")
        if host_predictions and hasattr(module, "predictions_device"):
            module.predictions_device = torch.device("meta")
        runner = getattr(aggregator, "block_runner", None)
        if isinstance(runner, StreamedBlocks) and runner.policy.min_chunk_tokens is None:
            minimum = runner.policy.min_tokens(torch.device(target_device), aggregator.embed_dim)
            runner.policy = replace(runner.policy, min_chunk_tokens=minimum)
        self.group: SimulatedGroup | None = None
        if world_size > 1:
            if not hasattr(module, "parallelize"):
                raise ValueError(f"variant {variant!r} cannot split a sequence over ranks")
            self.group = SimulatedGroup(world_size - 1, world_size, ranks_per_node)
            module.parallelize(self.group, self.attention)
            runner = aggregator.block_runner
        self.chunk_runner = runner if isinstance(runner, StreamedBlocks) else None
        self.mode = LiveBytesTracker("cpu")
        with self.mode:
            self.module: nn.Module = module.to_empty(device="cpu").eval()
        self.weight_storage_bytes = storage_sizes(self.weights())
        self.weights_bytes = sum(self.weight_storage_bytes)

    def affine_from(self, batch: int, height: int, width: int) -> int:
        """The fewest frames at which every streamed chunk is over the device's minimum (1 with
        no streamed blocks), over all ranks: from there chunks grow with the frame count, and so
        does the peak, near affinely."""
        if self.chunk_runner is None:
            return 1
        policy = self.chunk_runner.policy
        aggregator = getattr(self.module, "aggregator", self.module)
        patches = (height // aggregator.patch_size) * (width // aggregator.patch_size)
        tokens = batch * (aggregator.patch_start_idx + patches)
        device = torch.device(self.target_device)

        def over_minimum(frames: int) -> bool:
            width = aggregator.embed_dim
            return policy.chunk_tokens(frames * tokens, device, width) > policy.min_chunk_tokens

        low, high = 0, 1
        while not over_minimum(high):
            low, high = high, 2 * high
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if over_minimum(middle) else (middle, high)
        return high * self.world_size

    def weights(self) -> list[torch.Tensor]:
        """The module's parameters and buffers (fake tensors)."""
        return [*self.module.parameters(), *self.module.buffers()]

    def estimate(self, frames: int, batch: int, height: int, width: int) -> Estimate:
        """The estimate of `batch` x `frames` fp32 images of height x width (over all ranks;
        the busiest rank's share when split): one fake pass, remembered for the next ask."""
        key = (frames, batch, height, width)
        if key not in self._estimates:
            self._estimates[key] = self._trace(frames, batch, height, width)
        return self._estimates[key]

    def autocast_rules(self) -> contextlib.AbstractContextManager:
        """CUDA autocast's dtype rules on top of CPU autocast for a CUDA target, else nothing."""
        return CudaAutocastRules() if self.target_device == "cuda" else contextlib.nullcontext()

    def _trace(self, frames: int, batch: int, height: int, width: int) -> Estimate:
        """Run one fake forward pass."""
        counts = split_evenly(frames, self.world_size)
        if counts[0] < 1:
            raise ValueError(f"{frames} frames leave ranks of {self.world_size} without frames")
        if self.group is not None:
            self.group.counts = tuple(counts)
        self.passes += 1
        with self.mode, frozen_garbage():
            images = torch.rand(batch, counts[-1], 3, height, width)
            existing = [*self.weights(), images]
            tracking = self.mode.track(existing, record_events=True)
            autocast = self.precision.autocast("cpu")
            points = None
            if self.query_points:
                points = torch.rand(batch, self.query_points, 2) * torch.tensor([width, height])
            with tracking as live, torch.no_grad(), autocast, self.autocast_rules():
                outputs = self.module(images) if points is None else self.module(images, points)
            kept = output_bytes(named_outputs(outputs).values())
        input_bytes = images.numel() * images.element_size()
        resident = [*self.weight_storage_bytes, input_bytes, self.cublas_workspace_bytes]
        replayed = replay_allocator(live.events, resident)
        required = replayed.reserved_bound_bytes + self.cuda_context_bytes + self.nccl_bytes
        return Estimate(
            variant=self.variant,
            frames=frames,
            world_size=self.world_size,
            rank_frames=counts[-1],
            precision=self.precision.label,
            live_peak_bytes=self.weights_bytes + input_bytes + live.peak_bytes,
            weights_bytes=self.weights_bytes,
            input_bytes=input_bytes,
            output_bytes=kept.device,
            transient_bytes=live.peak_bytes - kept.device,
            host_bytes=kept.host,
            allocated_bytes=replayed.allocated_bytes,
            reserved_bound_bytes=replayed.reserved_bound_bytes,
            reserved_peak_bytes=replayed.reserved_peak_bytes,
            allocations=replayed.allocations,
            cuda_context_bytes=self.cuda_context_bytes,
            nccl_bytes=self.nccl_bytes,
            required_bytes=required,
        )


def storage_sizes(tensors: Iterable[torch.Tensor]) -> list[int]:
    """Bytes of each distinct storage behind `tensors` (views of one storage count once)."""
    storages = {StorageWeakRef(t.untyped_storage()): t.untyped_storage() for t in tensors}
    return [storage.nbytes() for storage in storages.values()]


@dataclass(frozen=True)
class Replayed:
    """The caching allocator model's figures for a pass's events after its resident tensors:
    the peak of rounded requests (`allocated_bytes`), the reserved bound, the reserve of a
    replay that never releases, and the pass's allocation count."""

    allocated_bytes: int
    reserved_bound_bytes: int
    reserved_peak_bytes: int
    allocations: int


def replay_allocator(events: list[tuple[int, int]], resident: list[int]) -> Replayed:
    """Replay a tracker's events after `resident` sizes (allocated first, never freed) through
    the caching allocator model."""
    never = never_release_bytes(events, resident)
    return Replayed(
        allocated_bytes=sum(map(round_request, resident)) + peak_rounded_bytes(events),
        reserved_bound_bytes=reserved_bound(events, resident, never),
        reserved_peak_bytes=never,
        allocations=sum(1 for _, delta in events if delta > 0),
    )


# Operators CUDA autocast runs in fp32 whatever their input's dtype, and that a VGGT forward
# calls; CPU autocast runs them in their input's dtype.
CUDA_AUTOCAST_FP32 = frozenset(
    {
        F.layer_norm,
        torch.layer_norm,
        F.group_norm,
        torch.group_norm,
        F.softmax,
        torch.softmax,
        torch.Tensor.softmax,
    }
)

# Backward recomputes checkpointed blocks under the autocast state of their forward: it runs
# inside the rules too. A mode is off while its own handler runs, so the handler re-enters it
# and starts the autograd engine itself (`backward_inside`), which no mode intercepts.
BACKWARD = frozenset({torch.Tensor.backward, torch.autograd.backward})


class CudaAutocastRules(TorchFunctionMode):
    """While CPU autocast is on, run CUDA autocast's fp32 operators in fp32: their lower-precision
    floating inputs are cast up first, as CUDA autocast casts them, so a fake pass allocates the
    fp32 outputs (and input copies) that a CUDA pass does; also in the blocks a training
    backward recomputes."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in CUDA_AUTOCAST_FP32 and torch.is_autocast_enabled("cpu"):
            args, kwargs = tree_map(to_fp32, (args, kwargs))
        if func in BACKWARD:
            with self:
                return backward_inside(args, kwargs)
        return func(*args, **kwargs)


def backward_inside(args: tuple, kwargs: dict) -> None:
    """The backward of one scalar loss (`loss.backward()`, `torch.autograd.backward(loss)`),
    run by the autograd engine directly so that the active modes stay on in it; a backward with
    other arguments is refused."""
    loss = args[0] if len(args) == 1 else None
    plain = isinstance(loss, torch.Tensor) and loss.numel() == 1
    if not plain or any(value not in (None, False) for value in kwargs.values()):
        raise NotImplementedError(
            "a training estimate runs the backward of one scalar loss, without arguments"
        )
    torch.autograd.graph._engine_run_backward(
        (loss,), (torch.ones_like(loss),), False, False, (), True, True
    )


def to_fp32(value: object) -> object:
    """A lower-precision floating tensor cast to fp32; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
        return value.float()
    return value


@contextlib.contextmanager
def frozen_garbage() -> Iterator[None]:
    """Keep the objects that exist now out of garbage collections until the block ends: a fake
    pass creates many objects, and rescanning the model's at every collection costs time."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
