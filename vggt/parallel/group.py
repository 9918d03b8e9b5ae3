"""The ranks a sequence is split over: who holds which frames, and the few collectives the
sequence-parallel model needs, behind one small class the estimator can replace."""

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` items (frames, heads) in `parts` near-equal contiguous shares, the larger ones
    last: how a sequence's frames are split over ranks by default, so rank 0, which also
    gathers, tracks and writes, holds no more than the others."""
    if parts < 1:
        raise ValueError(f"cannot split into {parts} parts")
    base, extra = divmod(total, parts)
    return [base + (part >= parts - extra) for part in range(parts)]


def starts(counts: Sequence[int]) -> list[int]:
    """Where each of consecutive blocks of `counts` items begins."""
    offsets = [0]
    for count in counts[:-1]:
        offsets.append(offsets[-1] + count)
    return offsets


def rank_slice(counts: Sequence[int], rank: int) -> slice:
    """The consecutive items of `rank` when blocks of `counts` items follow in rank order."""
    first = starts(counts)[rank]
    return slice(first, first + counts[rank])


@dataclass(frozen=True)
class FrameLayout:
    """How one forward's frames lie over the ranks: counts per rank, in rank order."""

    counts: tuple[int, ...]
    rank: int

    @property
    def frames(self) -> int:
        """All frames of the sequence."""
        return sum(self.counts)

    def start(self, rank: int | None = None) -> int:
        """Index of the first frame of `rank` (this rank by default) in the whole sequence."""
        return sum(self.counts[: self.rank if rank is None else rank])

    @property
    def local(self) -> int:
        """Frames this rank holds."""
        return self.counts[self.rank]


class CollectiveError(RuntimeError):
    """A collective failed: another rank is gone or late, or the link to it broke."""


def message_line(error: BaseException) -> str:
    """The first non-blank line of `error`'s message, stripped, at most 300 characters."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")[:300]


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Run the collective `what` names; a RuntimeError it raises (running out of memory
    aside) becomes a CollectiveError, so callers tell a peer's failure by its type."""
    try:
        yield
    except (CollectiveError, torch.OutOfMemoryError):
        raise
    except RuntimeError as error:
        raise CollectiveError(f"{what} failed: {message_line(error)}") from error


# Collectives the host may queue on a GPU before waiting for the oldest of them to finish:
# NCCL's watchdog times a collective from when it is queued, so a host running a whole global
# block's exchanges ahead would make a slow, healthy block look hung.
EXCHANGES_AHEAD = 2
# The most bytes of gradients one all-reduce sums (a larger tensor goes alone).
REDUCE_BUCKET_BYTES = 256 << 20


def hold_back(ends: Sequence, ahead: int = EXCHANGES_AHEAD) -> None:
    """Wait (`synchronize()`) for the collective that ended `ahead` collectives before the last
    of `ends`, so that no more than `ahead` are queued behind the one running."""
    if len(ends) > ahead:
        ends[-ahead - 1].synchronize()


@dataclass
class CommunicationLog:
    """What this rank's collectives sent, and the time its compute waited for them: host time
    on CPU (gloo blocks the caller), CUDA events on the compute stream on GPUs, where the host
    stays at most EXCHANGES_AHEAD collectives ahead of the device."""

    calls: int = 0
    bytes_sent: int = 0
    host_seconds: float = 0.0
    events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = field(default_factory=list)

    @contextlib.contextmanager
    def timing(self, what: str, bytes_sent: int, device: torch.device) -> Iterator[None]:
        """Count collective `what` sending `bytes_sent` bytes and time the block around it;
        its failure is raised as a CollectiveError."""
        self.calls += 1
        self.bytes_sent += bytes_sent
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            with collective(what):
                yield
            end.record()
            self.events.append((start, end))
            hold_back([finish for _, finish in self.events[-EXCHANGES_AHEAD - 1 :]])
            return
        begin = time.perf_counter()
        with collective(what):
            yield
        self.host_seconds += time.perf_counter() - begin

    @property
    def seconds(self) -> float:
        """The time spent waiting (synchronises with the GPU when there are CUDA events)."""
        if self.events:
            self.events[-1][1].synchronize()
        waited = sum(start.elapsed_time(end) for start, end in self.events) / 1e3
        return self.host_seconds + waited


class SequenceGroup:
    """The collectives of sequence parallelism over a torch.distributed process group;
    `log` counts what they move. `ranks_per_node` (None: all on one node) says how the ranks,
    numbered node by node, lie over nodes, for attention that follows the topology. With
    `overlap` (the default) attention starts each exchange before it waits for the one before,
    so that its compute runs while the exchange is in flight (two sets of exchange buffers)."""

    overlap = True

    def __init__(
        self,
        group: dist.ProcessGroup | None = None,
        ranks_per_node: int | None = None,
        log: CommunicationLog | None = None,
    ) -> None:
        if not dist.is_initialized():
            raise RuntimeError("sequence parallelism needs torch.distributed initialised first")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.ranks_per_node = ranks_per_node or self.world_size
        self._buffers: dict[str, torch.Tensor] = {}
        self._nodes: tuple[SequenceGroup, SequenceGroup] | None = None
        self.log = log or CommunicationLog()

    def by_node(self) -> "tuple[SequenceGroup, SequenceGroup]":
        """(the ranks of this rank's node, the ranks at this rank's place on every node) as
        groups sharing this group's log; made once, by every rank of the group together."""
        if self._nodes is None:
            size = self.ranks_per_node
            if self.world_size % size:
                raise ValueError(f"{self.world_size} ranks do not fill nodes of {size} ranks")
            ranks = [self._global_rank(rank) for rank in range(self.world_size)]
            with collective("making the node groups"):
                within, _ = dist.new_subgroups_by_enumeration(
                    [ranks[first : first + size] for first in range(0, self.world_size, size)]
                )
                across, _ = dist.new_subgroups_by_enumeration(
                    [ranks[place::size] for place in range(size)]
                )
            self._nodes = (
                SequenceGroup(within, log=self.log),
                SequenceGroup(across, log=self.log),
            )
        return self._nodes

    def layout(self, images: torch.Tensor, check: Callable[[torch.Tensor], None]) -> FrameLayout:
        """Every rank's frame count, after each rank has run `check` on its own images [B, n,
        3, H, W]: a problem on any rank raises the same ValueError on all of them, so no rank
        is left waiting in a collective."""
        try:
            if images.ndim == 5 and images.shape[1] == 0:
                raise ValueError("holds no frames (use at most as many ranks as frames)")
            check(images)
            facts = (images.shape[1], (images.shape[0], *images.shape[2:]), None)
        except ValueError as error:
            facts = (0, None, str(error))
        gathered: list = [None] * self.world_size
        with collective("comparing the ranks' frames"):
            dist.all_gather_object(gathered, facts, group=self.group)
        problems = [f"rank {rank}: {fact[2]}" for rank, fact in enumerate(gathered) if fact[2]]
        if problems:
            raise ValueError("; ".join(problems))
        shapes = {shape for _, shape, _ in gathered}
        if len(shapes) > 1:
            raise ValueError(f"ranks disagree on batch size or image size: {sorted(shapes)}")
        return FrameLayout(tuple(count for count, _, _ in gathered), self.rank)

    def exchange(
        self,
        outgoing: Sequence[Sequence[torch.Tensor]],
        incoming: Sequence[tuple[int, ...]],
        dtype: torch.dtype,
        buffers: str = "exchange",
    ) -> "Transfer":
        """Start sending rank r the tensors outgoing[r] (stacked along a new first dim, in
        `dtype`); the transfer's `wait()` returns what each rank r sent here, shaped
        incoming[r].

        The results are views of receive buffer `buffers`, kept for the next exchange through
        it: start that one only after using them. `release()` frees the buffers.
        """
        counts = [sum(t.numel() for t in tensors) for tensors in outgoing]
        sizes = [torch.Size(shape).numel() for shape in incoming]
        like = outgoing[0][0]
        source = self._buffer(f"{buffers}/send", sum(counts), like, dtype)
        offset = 0
        for tensors in outgoing:
            for tensor in tensors:
                source[offset : offset + tensor.numel()].view(tensor.shape).copy_(tensor)
                offset += tensor.numel()
        output = self._buffer(f"{buffers}/receive", sum(sizes), like, dtype)
        transfer = self.all_to_all(output, source, sizes, counts)
        transfer.result = [
            part.view(shape) for part, shape in zip(output.split(sizes), incoming, strict=True)
        ]
        return transfer

    def release(self, buffers: str = "") -> None:
        """Free the exchange buffers (kept from one exchange to the next) whose names start
        with `buffers` (all by default)."""
        for name in [name for name in self._buffers if name.startswith(buffers)]:
            del self._buffers[name]

    def slot(self, piece: int) -> int:
        """Which of the two sets of exchange buffers exchange `piece` uses: alternate ones
        with `overlap` (the next starts before this one is waited for), else always one."""
        return piece % 2 if self.overlap else 0

    def _buffer(self, name: str, size: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The first `size` elements of buffer `name`, grown (never shrunk) as needed."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            self._buffers.pop(name, None)
            buffer = self._buffers[name] = like.new_empty(size, dtype=dtype)
        return buffer[:size]

    def all_to_all(
        self,
        output: torch.Tensor,
        source: torch.Tensor,
        output_splits: Sequence[int],
        source_splits: Sequence[int],
    ) -> "Transfer":
        """Start sending `source`'s consecutive pieces (sizes `source_splits`) to ranks 0, 1,
        ...; their pieces arrive in `output` (sizes `output_splits`) once `wait()` returns."""
        elsewhere = sum(source_splits) - source_splits[self.rank]
        with collective("all-to-all"):
            work = dist.all_to_all_single(
                output,
                source,
                list(output_splits),
                list(source_splits),
                group=self.group,
                async_op=True,
            )
        return Transfer([work], self.log, elsewhere * source.element_size(), source.device)

    def all_reduce_sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place, a few large collectives at a time (the
        tensors flattened into buckets of at most `REDUCE_BUCKET_BYTES` per dtype)."""
        for bucket in _buckets(tensors, REDUCE_BUCKET_BYTES):
            flat = torch.cat([tensor.reshape(-1) for tensor in bucket])
            self._all_reduce(flat)
            for tensor, summed in zip(bucket, flat.split([t.numel() for t in bucket]), strict=True):
                tensor.copy_(summed.view(tensor.shape))

    def _all_reduce(self, flat: torch.Tensor) -> None:
        sent = _nbytes(flat) * 2 * (self.world_size - 1) // self.world_size
        with self.log.timing("all-reduce", sent, flat.device), collective("all-reduce"):
            dist.all_reduce(flat, group=self.group)

    def ring_shift(self, outgoing: torch.Tensor, incoming: torch.Tensor) -> "Transfer":
        """Start sending `outgoing` to the next rank and receiving the previous rank's into
        `incoming`; wait on the result before reading `incoming` or writing `outgoing`."""
        following = self._global_rank((self.rank + 1) % self.world_size)
        preceding = self._global_rank((self.rank - 1) % self.world_size)
        operations = [
            dist.P2POp(dist.isend, outgoing, following, self.group),
            dist.P2POp(dist.irecv, incoming, preceding, self.group),
        ]
        nbytes = outgoing.numel() * outgoing.element_size()
        with collective("ring exchange"):
            works = dist.batch_isend_irecv(operations)
        return Transfer(works, self.log, nbytes, outgoing.device, "ring exchange")

    def all_gather_frames(self, local: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
        """Every rank's [B, n_rank, ...] tensor, concatenated along dim 1 in rank order."""
        padded = self._padded(local, layout)
        pieces = [torch.empty_like(padded) for _ in range(self.world_size)]
        sent = _nbytes(padded) * (self.world_size - 1)
        with self.log.timing("all-gather", sent, padded.device):
            dist.all_gather(pieces, padded, group=self.group)
        return _unpad(pieces, layout)

    def gather_frames(self, local: torch.Tensor, layout: FrameLayout) -> torch.Tensor | None:
        """Every rank's [B, n_rank, ...] tensor concatenated along dim 1 on rank 0 of the
        group; None on the others."""
        padded = self._padded(local, layout)
        pieces = [torch.empty_like(padded) for _ in range(self.world_size)]
        destination = self._global_rank(0)
        sent = 0 if self.rank == 0 else _nbytes(padded)
        with self.log.timing("gather", sent, padded.device):
            dist.gather(padded, pieces if self.rank == 0 else None, destination, group=self.group)
        return _unpad(pieces, layout) if self.rank == 0 else None

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Overwrite `tensor` on every rank with the group's rank 0's (through a contiguous
        copy where it is a strided view: the backends send raw memory)."""
        sent = _nbytes(tensor) * (self.world_size - 1) if self.rank == 0 else 0
        contiguous = tensor.contiguous()
        with self.log.timing("broadcast", sent, tensor.device):
            dist.broadcast(contiguous, self._global_rank(0), group=self.group)
        if contiguous is not tensor:
            tensor.copy_(contiguous)

    def _global_rank(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    @staticmethod
    def _padded(local: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
        """`local` [B, n, ...] padded with zeros to the most frames any rank holds."""
        padded = local.new_zeros((local.shape[0], max(layout.counts), *local.shape[2:]))
        padded[:, : local.shape[1]] = local
        return padded


class Transfer:
    """Collectives in flight (`works`); `wait()` blocks until they are done, logs the wait as
    communication that sent `bytes_sent` bytes, and returns `result` (what they fill)."""

    def __init__(
        self,
        works: list,
        log: CommunicationLog,
        bytes_sent: int,
        device: torch.device,
        what: str = "all-to-all",
    ) -> None:
        self.works = works
        self.log = log
        self.bytes_sent = bytes_sent
        self.device = device
        self.what = what
        self.result: list[torch.Tensor] | None = None

    def wait(self) -> list[torch.Tensor] | None:
        """Block until this rank's part of the collectives is done; their `result`."""
        with self.log.timing(self.what, self.bytes_sent, self.device):
            for work in self.works:
                work.wait()
        return self.result


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _buckets(tensors: Sequence[torch.Tensor], limit: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive runs of same-dtype tensors of at most `limit` bytes together (a larger
    tensor alone)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        if bucket and (tensor.dtype != bucket[0].dtype or size + _nbytes(tensor) > limit):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += _nbytes(tensor)
    if bucket:
        yield bucket


def _unpad(pieces: list[torch.Tensor], layout: FrameLayout) -> torch.Tensor:
    """The padded per-rank pieces cut to their frame counts and joined along dim 1."""
    return torch.cat([p[:, :n] for p, n in zip(pieces, layout.counts, strict=True)], dim=1)


class SimulatedGroup(SequenceGroup):
    """One rank of a split sequence, alone: collectives give tensors of the right shapes but
    move nothing, so a trace of this rank (e.g. the memory estimator's) needs no other rank."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        ranks_per_node: int | None = None,
        log: CommunicationLog | None = None,
    ) -> None:
        self.group = None
        self.rank = rank
        self.world_size = world_size
        self.ranks_per_node = ranks_per_node or world_size
        self.counts: tuple[int, ...] | None = None
        self._buffers = {}
        self.log = log or CommunicationLog()

    def by_node(self) -> "tuple[SequenceGroup, SequenceGroup]":
        """Simulated groups of this rank's node and of its place on every node."""
        size = self.ranks_per_node
        return (
            SimulatedGroup(self.rank % size, size, log=self.log),
            SimulatedGroup(self.rank // size, self.world_size // size, log=self.log),
        )

    def layout(self, images: torch.Tensor, check: Callable[[torch.Tensor], None]) -> FrameLayout:
        """The layout of `counts` (set beforehand), after checking this rank's images."""
        check(images)
        if self.counts is None or self.counts[self.rank] != images.shape[1]:
            raise ValueError(f"rank {self.rank} of {self.counts} got {images.shape[1]} frames")
        return FrameLayout(self.counts, self.rank)

    def all_to_all(
        self,
        output: torch.Tensor,
        source: torch.Tensor,
        output_splits: Sequence[int],
        source_splits: Sequence[int],
    ) -> Transfer:
        """Nothing moves; `output` keeps whatever it holds."""
        return Transfer([], self.log, 0, source.device)

    def _all_reduce(self, flat: torch.Tensor) -> None:
        """Nothing moves."""

    def ring_shift(self, outgoing: torch.Tensor, incoming: torch.Tensor) -> Transfer:
        """Nothing moves."""
        return Transfer([], self.log, 0, outgoing.device, "ring exchange")

    def all_gather_frames(self, local: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
        """A tensor of the gathered shape."""
        return local.new_empty((local.shape[0], layout.frames, *local.shape[2:]))

    def gather_frames(self, local: torch.Tensor, layout: FrameLayout) -> torch.Tensor | None:
        """A tensor of the gathered shape on rank 0, None elsewhere."""
        return self.all_gather_frames(local, layout) if self.rank == 0 else None

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Nothing moves."""
