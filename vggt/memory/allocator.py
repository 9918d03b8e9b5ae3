"""A model of PyTorch's CUDA caching allocator with its default settings (no expandable
segments, no max_split_size), after c10/cuda/CUDACachingAllocator.cpp: replaying a program's
allocations and frees through it gives the bytes the allocator reserves from the device.

Rules: request sizes round up to a multiple of 512 B (at least 512 B); requests up to 1 MiB
come from the small pool, larger ones from the large pool. A request takes the smallest cached
free block of its pool that fits (the lower address on a tie), split when the remainder is at
least 512 B (small pool) or over 1 MiB (large pool). With no such block a new segment is
reserved: 2 MiB for a small request, 20 MiB for one under 10 MiB, else the request rounded up
to 2 MiB. A freed block merges with the free blocks next to it in its segment. Segments stay
reserved until a new segment would pass `capacity` (a failed cudaMalloc): then every cached
segment that is wholly free is released and the reservation retried, once; failing again is
OutOfMemory.
"""

import bisect
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Environment variables that configure PyTorch's caching allocators; the generic name came with
# torch 2.9, the CUDA one still works.
ALLOCATOR_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
# Settings that change how segments are reserved, which this model does not follow.
UNMODELLED = re.compile(r"expandable_segments\s*:\s*true", re.IGNORECASE)
MIN_BLOCK_BYTES = 512
SMALL_REQUEST_BYTES = 1 << 20
SMALL_SEGMENT_BYTES = 2 << 20
MID_SEGMENT_BYTES = 20 << 20
MIN_LARGE_SEGMENT_REQUEST = 10 << 20
LARGE_SEGMENT_ROUNDING = 2 << 20


def unmodelled_setting(environ: Mapping[str, str] = os.environ) -> str | None:
    """`NAME=value` of an allocator variable that enables expandable segments (reserved bytes
    then grow page by page, not segment by segment as modelled here), or None."""
    for name in ALLOCATOR_VARIABLES:
        if UNMODELLED.search(environ.get(name, "")):
            return f"{name}={environ[name]}"
    return None


def round_request(nbytes: int) -> int:
    """The bytes the allocator hands out for a request: a multiple of 512, at least 512."""
    return max(MIN_BLOCK_BYTES, -(-nbytes // MIN_BLOCK_BYTES) * MIN_BLOCK_BYTES)


def segment_bytes(rounded: int) -> int:
    """Bytes of the segment reserved for a rounded request that no cached block can serve."""
    if rounded <= SMALL_REQUEST_BYTES:
        return SMALL_SEGMENT_BYTES
    if rounded < MIN_LARGE_SEGMENT_REQUEST:
        return MID_SEGMENT_BYTES
    return -(-rounded // LARGE_SEGMENT_ROUNDING) * LARGE_SEGMENT_ROUNDING


def splits(block_bytes: int, rounded: int) -> bool:
    """Whether a block serving a rounded request gives its remainder back as a free block."""
    remainder = block_bytes - rounded
    if rounded <= SMALL_REQUEST_BYTES:
        return remainder >= MIN_BLOCK_BYTES
    return remainder > SMALL_REQUEST_BYTES


@dataclass(eq=False)
class Block:
    """A piece of a segment at a (made-up) device address, free or handed out."""

    address: int
    size: int
    small_pool: bool
    allocated: bool = False
    previous: "Block | None" = None
    next: "Block | None" = None


class OutOfMemory(Exception):
    """A new segment would pass the capacity even after the cached segments were released."""


class CachingAllocatorModel:
    """Reserved and allocated bytes of a sequence of `malloc` and `free` calls on a device of
    `capacity` bytes (None: unlimited; nothing is then ever released). With `release_early`
    the cached segments are released before every new segment, not only on a failure."""

    def __init__(self, capacity: int | None = None, release_early: bool = False) -> None:
        self.capacity = capacity
        self.release_early = release_early
        self.reserved_bytes = 0
        self.peak_reserved_bytes = 0
        self.allocated_bytes = 0
        self.peak_allocated_bytes = 0
        self.segments = 0
        self._next_address = 0
        # Free blocks by pool, sorted by (size, address) as the allocator's block sets are.
        self._free_keys: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
        self._free_blocks: dict[tuple[int, int], Block] = {}

    def malloc(self, nbytes: int) -> Block:
        """Hand out a block for a request of `nbytes` bytes."""
        rounded = round_request(nbytes)
        small = rounded <= SMALL_REQUEST_BYTES
        block = self._take_free(rounded, small) or self._new_segment(rounded, small)
        if splits(block.size, rounded):
            rest = Block(block.address + rounded, block.size - rounded, small, False, block)
            rest.next, block.next = block.next, rest
            if rest.next is not None:
                rest.next.previous = rest
            block.size = rounded
            self._add_free(rest)
        block.allocated = True
        self.allocated_bytes += block.size
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        return block

    def free(self, block: Block) -> None:
        """Return a block to its pool, merged with the free blocks around it."""
        if not block.allocated:
            raise ValueError("this block is not allocated")
        block.allocated = False
        self.allocated_bytes -= block.size
        for neighbour in (block.previous, block.next):
            if neighbour is not None and not neighbour.allocated:
                self._remove_free(neighbour)
                block = self._merge(block, neighbour)
        self._add_free(block)

    def _take_free(self, rounded: int, small: bool) -> Block | None:
        keys = self._free_keys[small]
        index = bisect.bisect_left(keys, (rounded, -1))
        if index == len(keys):
            return None
        return self._free_blocks.pop(keys.pop(index))

    def release_cached(self) -> None:
        """Release every wholly free segment to the device, as on a failed cudaMalloc."""
        for block in list(self._free_blocks.values()):
            if block.previous is None and block.next is None:
                self._remove_free(block)
                self.reserved_bytes -= block.size
                self.segments -= 1

    def _new_segment(self, rounded: int, small: bool) -> Block:
        size = segment_bytes(rounded)
        capacity = self.capacity
        if self.release_early or (capacity is not None and self.reserved_bytes + size > capacity):
            self.release_cached()
            if capacity is not None and self.reserved_bytes + size > capacity:
                raise OutOfMemory(f"{size} more bytes pass {capacity}")
        block = Block(self._next_address, size, small)
        self._next_address += size
        self.reserved_bytes += size
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        self.segments += 1
        return block

    def _add_free(self, block: Block) -> None:
        key = (block.size, block.address)
        bisect.insort(self._free_keys[block.small_pool], key)
        self._free_blocks[key] = block

    def _remove_free(self, block: Block) -> None:
        key = (block.size, block.address)
        keys = self._free_keys[block.small_pool]
        del keys[bisect.bisect_left(keys, key)]
        del self._free_blocks[key]

    @staticmethod
    def _merge(block: Block, neighbour: Block) -> Block:
        """One free block covering two adjacent ones of a segment."""
        first, second = (
            (neighbour, block) if neighbour.address < block.address else (block, neighbour)
        )
        first.size += second.size
        first.next = second.next
        if second.next is not None:
            second.next.previous = first
        return first


def replay(
    events: Iterable[tuple[int, int]],
    allocator: CachingAllocatorModel,
    resident: Iterable[int] = (),
) -> CachingAllocatorModel:
    """Feed a tracker's `(key, signed bytes)` events to `allocator`, after allocating the
    `resident` sizes (never freed): +n allocates n bytes for `key`, -n frees its block."""
    for nbytes in resident:
        allocator.malloc(nbytes)
    blocks: dict[int, Block] = {}
    for key, delta in events:
        if delta > 0:
            blocks[key] = allocator.malloc(delta)
        else:
            allocator.free(blocks.pop(key))
    return allocator


def never_release_bytes(events: list[tuple[int, int]], resident: list[int]) -> int:
    """Peak reserved bytes of a replay that never releases a cached segment: what a device with
    room to spare reserves for the events (after `resident`)."""
    return replay(events, CachingAllocatorModel(), resident).peak_reserved_bytes


def reserved_bound(
    events: list[tuple[int, int]], resident: list[int], never: int | None = None
) -> int:
    """Device bytes within which the allocator model completes the events (after `resident`),
    releasing cached segments only when a new one would not fit, as PyTorch does.

    The search starts at the peak of a replay that releases its cached segments before every
    new one, doubles its distance up from there in steps of 2 MiB (the segment rounding) until
    a capped replay completes, and bisects back to the least capacity that does. It never
    exceeds the peak of a replay that never releases, which any larger device reproduces
    exactly. Completion need not be monotonic in the capacity, so a device between the figure
    and that peak is not guaranteed to complete; in practice the two agree.
    """
    never = replay(events, CachingAllocatorModel(), resident).peak_reserved_bytes
    early = replay(events, CachingAllocatorModel(release_early=True), resident)

    def completes(capacity: int) -> bool:
        try:
            replay(events, CachingAllocatorModel(capacity=capacity), resident)
        except OutOfMemory:
            return False
        return True

    failed, step = None, LARGE_SEGMENT_ROUNDING
    capacity = early.peak_reserved_bytes
    while capacity < never and not completes(capacity):
        failed, capacity, step = capacity, capacity + step, 2 * step
    if capacity >= never:
        return never
    while failed is not None and capacity - failed > LARGE_SEGMENT_ROUNDING:
        middle = (
            failed + (capacity - failed) // 2 // LARGE_SEGMENT_ROUNDING * LARGE_SEGMENT_ROUNDING
        )
        failed, capacity = (failed, middle) if completes(middle) else (middle, capacity)
    return capacity


def peak_rounded_bytes(events: Iterable[tuple[int, int]]) -> int:
    """Peak live bytes of signed allocation events, each request rounded as the allocator does."""
    live = peak = 0
    for _, delta in events:
        live += round_request(delta) if delta > 0 else -round_request(-delta)
        peak = max(peak, live)
    return peak
