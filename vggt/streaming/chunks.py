"""How the residual stream is cut into chunks that bound each block's temporaries."""

from collections.abc import Iterator
from dataclasses import dataclass


def chunk_bounds(length: int, chunk: int) -> Iterator[tuple[int, int]]:
    """(start, end) of near-equal consecutive chunks of at most `chunk` items over range(length)."""
    count = -(-length // chunk)
    size = -(-length // count)
    for start in range(0, length, size):
        yield start, min(start + size, length)


@dataclass(frozen=True)
class ChunkPolicy:
    """Tokens per chunk: 1/`token_chunks` of the residual stream, at least `min_chunk_tokens`.

    `token_chunks=None` (or 1) runs each block on the whole stream at once, still in place.
    """

    token_chunks: int | None = 8
    min_chunk_tokens: int = 512

    def __post_init__(self) -> None:
        if self.token_chunks is not None and self.token_chunks < 1:
            raise ValueError(f"token_chunks must be at least 1 or None, got {self.token_chunks}")
        if self.min_chunk_tokens < 1:
            raise ValueError(f"min_chunk_tokens must be positive, got {self.min_chunk_tokens}")

    def chunk_tokens(self, total_tokens: int) -> int:
        """Tokens per chunk for a stream of `total_tokens` (the whole stream when unchunked)."""
        if self.token_chunks is None or self.token_chunks == 1:
            return total_tokens
        return max(self.min_chunk_tokens, -(-total_tokens // self.token_chunks))
