"""How the residual stream is cut into chunks that bound each block's temporaries."""

from collections.abc import Iterator
from dataclasses import dataclass

import torch

# C-wide tensors per token a chunk holds at once, at most: its normalised input, q, k and v,
# the attention output and projection, the MLP's input and output and its 4 C hidden state
# (they are never all alive together; this bounds the live ones).
TRANSIENT_WIDTHS = 8
# Fewest elements (tokens x channels) per chunk by device: below these the matrix products
# leave the device idle, or per-operator overhead outweighs them (CPU, measured at 64 channels:
# 261-token chunks cost +24% over the unchunked block, 1024-token chunks -1%). VGGT-1B's 1024
# channels make them 16,384 tokens on CUDA and 64 on the CPU.
MIN_CHUNK_ELEMENTS = {"cuda": 1 << 24, "cpu": 1 << 16}
# Tokens at which a chunk is long enough at any width: the floor never asks for more.
MAX_MIN_CHUNK_TOKENS = {"cuda": 16384, "cpu": 1024}


def chunk_count(length: int, chunk: int) -> int:
    """How many near-equal chunks of about `chunk` items `length` items make (at least one):
    the nearest count, so no chunk is under 2/3 or over 3/2 of `chunk` needlessly."""
    return max(1, round(length / chunk))


def chunk_bounds(length: int, chunk: int) -> Iterator[tuple[int, int]]:
    """(start, end) of `chunk_count(length, chunk)` near-equal consecutive chunks."""
    count = chunk_count(length, chunk)
    size = -(-length // count)
    for start in range(0, length, size):
        yield start, min(start + size, length)


@dataclass(frozen=True)
class ChunkPolicy:
    """Tokens per chunk of an in-place block: enough to keep one chunk's temporaries within
    `transient_budget` times the residual stream's bytes, never fewer than `min_chunk_tokens`
    (None: the device's MIN_CHUNK_ELEMENTS over the stream's width, at most its
    MAX_MIN_CHUNK_TOKENS).
    `transient_budget=None` runs each block on the whole stream at once, still in place."""

    transient_budget: float | None = 1.0
    min_chunk_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.transient_budget is not None and self.transient_budget <= 0:
            raise ValueError(
                f"transient_budget must be positive or None, got {self.transient_budget}"
            )
        if self.min_chunk_tokens is not None and self.min_chunk_tokens < 1:
            raise ValueError(f"min_chunk_tokens must be positive, got {self.min_chunk_tokens}")

    def min_tokens(self, device: torch.device, width: int) -> int:
        """The fewest tokens of `width` channels a chunk holds on `device`."""
        if self.min_chunk_tokens is not None:
            return self.min_chunk_tokens
        kind = device.type if device.type in MIN_CHUNK_ELEMENTS else "cpu"
        return min(-(-MIN_CHUNK_ELEMENTS[kind] // width), MAX_MIN_CHUNK_TOKENS[kind])

    def chunk_tokens(self, total_tokens: int, device: torch.device, width: int) -> int:
        """Tokens per chunk for a stream of `total_tokens` tokens of `width` channels."""
        if self.transient_budget is None:
            return total_tokens
        budgeted = -(-int(total_tokens * self.transient_budget) // TRANSIENT_WIDTHS)
        return max(self.min_tokens(device, width), budgeted)
