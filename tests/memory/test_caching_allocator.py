"""The caching-allocator model on hand-written request sequences."""

import pytest

from vggt.memory.allocator import (
    CachingAllocatorModel,
    OutOfMemory,
    replay,
    reserved_bound,
    round_request,
    unmodelled_setting,
)

KIB = 1 << 10
MIB = 1 << 20


def test_requests_round_to_512_bytes() -> None:
    assert round_request(1) == 512
    assert round_request(512) == 512
    assert round_request(513) == 1024
    assert round_request(3 * MIB + 1) == 3 * MIB + 512


def test_a_3_mib_request_reserves_a_20_mib_segment() -> None:
    allocator = CachingAllocatorModel()
    allocator.malloc(3 * MIB)
    assert allocator.reserved_bytes == 20 * MIB
    assert allocator.allocated_bytes == 3 * MIB
    allocator.malloc(3 * MIB)
    assert allocator.reserved_bytes == 20 * MIB
    assert allocator.segments == 1


def test_segments_of_large_requests_round_to_2_mib() -> None:
    allocator = CachingAllocatorModel()
    allocator.malloc(10 * MIB)
    assert allocator.reserved_bytes == 10 * MIB
    allocator.malloc(11 * MIB + 1)
    assert allocator.reserved_bytes == 22 * MIB
    allocator.malloc(9 * MIB + 512 * KIB)
    assert allocator.reserved_bytes == 42 * MIB


def test_a_freed_block_is_split_for_a_smaller_request() -> None:
    allocator = CachingAllocatorModel()
    allocator.free(allocator.malloc(100 * MIB))
    allocator.malloc(60 * MIB)
    assert allocator.reserved_bytes == 100 * MIB
    assert allocator.allocated_bytes == 60 * MIB
    allocator.malloc(40 * MIB)
    assert allocator.reserved_bytes == 100 * MIB
    assert allocator.segments == 1


def test_a_remainder_over_1_mib_splits_off_and_1_mib_does_not() -> None:
    splitting = CachingAllocatorModel()
    splitting.free(splitting.malloc(12 * MIB))
    splitting.malloc(10 * MIB + 512 * KIB)
    assert splitting.allocated_bytes == 10 * MIB + 512 * KIB
    whole = CachingAllocatorModel()
    whole.free(whole.malloc(12 * MIB))
    whole.malloc(11 * MIB)
    assert whole.allocated_bytes == 12 * MIB
    assert whole.peak_allocated_bytes == 12 * MIB


def test_small_requests_share_a_2_mib_segment() -> None:
    allocator = CachingAllocatorModel()
    for _ in range(20):
        allocator.malloc(100 * KIB)
    assert allocator.reserved_bytes == 2 * MIB
    assert allocator.allocated_bytes == 20 * 100 * KIB
    allocator.malloc(100 * KIB)
    assert allocator.reserved_bytes == 4 * MIB


def test_pools_do_not_share_blocks() -> None:
    allocator = CachingAllocatorModel()
    allocator.free(allocator.malloc(20 * MIB))
    allocator.malloc(4 * KIB)
    assert allocator.reserved_bytes == 22 * MIB
    allocator.free(allocator.malloc(MIB))
    allocator.malloc(MIB + 512)
    assert allocator.reserved_bytes == 22 * MIB


def test_smallest_fitting_block_is_used() -> None:
    allocator = CachingAllocatorModel()
    thirty = allocator.malloc(30 * MIB)
    fifty = allocator.malloc(50 * MIB)
    allocator.free(fifty)
    allocator.free(thirty)
    allocator.malloc(25 * MIB)
    allocator.malloc(45 * MIB)
    assert allocator.reserved_bytes == 80 * MIB
    assert allocator.allocated_bytes == 70 * MIB


def test_freed_neighbours_merge_back_into_the_segment() -> None:
    allocator = CachingAllocatorModel()
    first = allocator.malloc(4 * MIB)
    second = allocator.malloc(4 * MIB)
    third = allocator.malloc(4 * MIB)
    allocator.free(second)
    allocator.free(first)
    allocator.free(third)
    allocator.malloc(20 * MIB)
    assert allocator.reserved_bytes == 20 * MIB
    assert allocator.segments == 1


def test_blocks_of_different_segments_never_merge() -> None:
    allocator = CachingAllocatorModel()
    first = allocator.malloc(12 * MIB)
    second = allocator.malloc(12 * MIB)
    allocator.free(first)
    allocator.free(second)
    allocator.malloc(24 * MIB)
    assert allocator.reserved_bytes == 48 * MIB


def test_peak_reserved_outlives_frees() -> None:
    allocator = CachingAllocatorModel()
    allocator.free(allocator.malloc(64 * MIB))
    allocator.malloc(MIB + 512)
    assert allocator.allocated_bytes == MIB + 512
    assert allocator.reserved_bytes == allocator.peak_reserved_bytes == 64 * MIB
    assert allocator.peak_allocated_bytes == 64 * MIB


def test_freeing_a_free_block_is_refused() -> None:
    allocator = CachingAllocatorModel()
    block = allocator.malloc(KIB)
    allocator.free(block)
    with pytest.raises(ValueError, match="not allocated"):
        allocator.free(block)


def test_replay_of_signed_events() -> None:
    allocator = CachingAllocatorModel()
    replay([(1, 30 * MIB), (2, 3 * MIB), (1, -30 * MIB), (3, 24 * MIB), (2, -3 * MIB)], allocator)
    assert allocator.reserved_bytes == 50 * MIB
    assert allocator.peak_allocated_bytes == 33 * MIB
    assert allocator.allocated_bytes == 24 * MIB


def test_a_capped_device_releases_free_segments_before_failing() -> None:
    allocator = CachingAllocatorModel(capacity=60 * MIB)
    allocator.free(allocator.malloc(30 * MIB))
    kept = allocator.malloc(20 * MIB)
    assert allocator.reserved_bytes == 30 * MIB
    allocator.malloc(25 * MIB)
    # 30 + 26 MiB would fit; the 20 MiB block sits in the 30 MiB segment, which stays.
    assert allocator.reserved_bytes == 56 * MIB
    allocator.free(kept)
    # 56 + 34 MiB pass 60 MiB: the wholly free 30 MiB segment goes, and 26 + 34 MiB fit.
    allocator.malloc(34 * MIB)
    assert allocator.reserved_bytes == 60 * MIB
    with pytest.raises(OutOfMemory):
        allocator.malloc(KIB)


def test_releasing_early_keeps_only_segments_in_use() -> None:
    events = [(1, 30 * MIB), (1, -30 * MIB), (2, 40 * MIB), (2, -40 * MIB)]
    assert replay(events, CachingAllocatorModel()).peak_reserved_bytes == 70 * MIB
    early = replay(events, CachingAllocatorModel(release_early=True))
    assert early.peak_reserved_bytes == 40 * MIB


def test_the_reserved_bound_is_the_least_capacity_that_completes() -> None:
    # Two 30 MiB blocks, the first freed, then 40 MiB: with the first block's segment released
    # 30 + 40 MiB suffice where a replay that never releases reserves 100 MiB.
    events = [(1, 30 * MIB), (2, 30 * MIB), (1, -30 * MIB), (3, 40 * MIB)]
    assert replay(events, CachingAllocatorModel()).peak_reserved_bytes == 100 * MIB
    bound = reserved_bound(events, [10 * MIB])
    assert bound == 80 * MIB
    replay(events, CachingAllocatorModel(capacity=bound), [10 * MIB])
    with pytest.raises(OutOfMemory):
        replay(events, CachingAllocatorModel(capacity=bound - 2 * MIB), [10 * MIB])


def test_expandable_segments_are_named_as_unmodelled() -> None:
    assert unmodelled_setting({}) is None
    assert unmodelled_setting({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}) is None
    setting = "garbage_collection_threshold:0.6,expandable_segments:True"
    assert unmodelled_setting({"PYTORCH_ALLOC_CONF": setting}) == f"PYTORCH_ALLOC_CONF={setting}"
    assert unmodelled_setting({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"}) is None
