"""Kept layers offloaded to host memory: same predictions, each byte copied out and back once,
host memory from an arena reused, grown and released as documented, pinning refusals
tolerated; on CUDA, pinned copies overlapping compute, no synchronisation in the block loop."""

import gc
import mmap
import weakref
from collections.abc import Iterator

import pytest
import torch
from torch.autograd import DeviceType

from tests.support.compare import assert_same_predictions
from tests.support.configs import SMALL_VGGT
from tests.support.images import seeded_images
from vggt.models.vggt_vram_optimized import VGGTOptimized
from vggt.streaming import offload
from vggt.streaming.offload import HostBlock, HostStore, OffloadedLayer

CPU = torch.device("cpu")
QUERY_POINTS = torch.tensor([[[10.0, 20.0], [70.0, 90.0], [130.0, 5.0]]])
# 11 frames make two chunks of the heads' 8-frame passes: one full, one partial.
FRAMES = 11


@pytest.fixture(autouse=True)
def no_kept_host_memory() -> Iterator[None]:
    """Each test starts and ends with no arena."""
    offload.release_host_memory()
    yield
    offload.release_host_memory()


def paired_models(device: torch.device, **config) -> tuple[VGGTOptimized, VGGTOptimized]:
    torch.manual_seed(0)
    on_device = VGGTOptimized(**SMALL_VGGT, **config).to(device).eval()
    offloaded = VGGTOptimized(**SMALL_VGGT, **config, offload_outputs=True).to(device).eval()
    offloaded.load_state_dict(on_device.state_dict())
    return on_device, offloaded


@pytest.mark.parametrize("batch", [1, 2])
def test_offloaded_predictions_equal_on_device_ones(batch: int) -> None:
    on_device, offloaded = paired_models(CPU)
    images = seeded_images(batch, FRAMES, 140, 140)
    points = QUERY_POINTS.expand(batch, -1, -1)
    with torch.no_grad():
        expected = on_device(images, query_points=points)
        actual = offloaded(images, query_points=points)
    assert_same_predictions(actual, expected)


def test_each_kept_byte_leaves_and_returns_once() -> None:
    _, model = paired_models(CPU)
    images = seeded_images(2, FRAMES, 56, 70)
    tokens = 5 + 4 * 5
    half = 2 * FRAMES * tokens * 32 * 4  # one [B, S, P, C] float32 half
    model.aggregator.offload_piece_bytes = half // 3
    with torch.no_grad():
        view, start = model.aggregate(images)
        model.predict(view, images, start, None)
    store = view[1].store
    kept = len(view.orig_indices)
    out, back = store.transfers.device_to_host, store.transfers.host_to_device
    assert sum(out) == sum(back) == kept * 2 * half
    # each half leaves in 4 contiguous pieces (a third of its bytes, rounded to whole tokens)
    assert len(out) == kept * 2 * 4 and max(out) <= half // 3
    # back: per frame chunk (8 + 3 frames), kept layer, half and batch element, one copy
    assert len(back) == 2 * kept * 2 * 2
    assert sorted(set(back)) == [3 * tokens * 32 * 4, 8 * tokens * 32 * 4]
    assert kept * 2 * half <= store.memory.numel() <= 1.05 * kept * 2 * half


def test_the_next_forward_reuses_the_arena() -> None:
    _, model = paired_models(CPU)
    with torch.no_grad():
        first, _, _ = model.aggregator(seeded_images(1, FRAMES, 56, 56))
        block, pointer = first[1].store.block, first[1].host.data_ptr()
        del first
        # fewer frames need fewer bytes: the same block, not a new one
        second, _, _ = model.aggregator(seeded_images(1, 3, 56, 56))
    assert second[1].store.block is block
    assert second[1].host.data_ptr() == pointer


def test_the_arena_grows_for_a_bigger_forward_and_never_shrinks() -> None:
    _, model = paired_models(CPU)
    with torch.no_grad():
        small, _, _ = model.aggregator(seeded_images(1, 3, 56, 56))
        small_block = weakref.ref(small[1].store.block)
        small_bytes = small[1].store.block.nbytes
        del small
        large, _, _ = model.aggregator(seeded_images(1, FRAMES, 56, 56))
        block = large[1].store.block
        assert small_block() is None  # released before the bigger block was taken
        assert block.nbytes >= large[1].store.memory.numel() > small_bytes
        del large
        again, _, _ = model.aggregator(seeded_images(1, 3, 56, 56))
    assert again[1].store.block is block


def test_a_live_result_keeps_the_arena_from_the_next_forward() -> None:
    on_device, offloaded = paired_models(CPU)
    images = [seeded_images(1, FRAMES, 56, 56, seed=seed) for seed in (0, 1)]
    with torch.no_grad():
        first = offloaded.aggregate(images[0])
        kept = {index: layer.host.clone() for index, layer in first[0].items()}
        second = offloaded.aggregate(images[1])
        assert second[0][1].store.block is not first[0][1].store.block
        for index, layer in first[0].items():
            torch.testing.assert_close(layer.host, kept[index], rtol=0, atol=0)
        for (view, start), image in zip((first, second), images, strict=True):
            actual = offloaded.predict(view, image, start, None)
            assert_same_predictions({**actual, "images": image}, on_device(image))


def test_host_memory_is_released_with_the_view_that_owns_it() -> None:
    _, model = paired_models(CPU)
    images = seeded_images(1, 3, 56, 56)
    with torch.no_grad():
        first, _, _ = model.aggregator(images)  # the arena's block
        second, _, _ = model.aggregator(images)  # a block of its own
    assert all(isinstance(layer, OffloadedLayer) for _, layer in second.items())
    arena_block = weakref.ref(first[5].store.block)
    own_block = weakref.ref(second[5].store.block)
    assert arena_block() is not own_block()
    del second
    gc.collect()
    assert own_block() is None
    del first
    gc.collect()
    assert arena_block() is not None  # kept for the next forward


def test_release_host_memory_frees_the_arena() -> None:
    _, model = paired_models(CPU)
    with torch.no_grad():
        view, _, _ = model.aggregator(seeded_images(1, 3, 56, 56))
    block = weakref.ref(view[5].store.block)
    del view
    gc.collect()
    assert block() is not None
    offload.release_host_memory()
    assert block() is None


def test_meta_host_memory_never_goes_through_the_arena() -> None:
    store = HostStore(4096, torch.device("meta"), CPU)
    block = weakref.ref(store.block)
    assert store.memory.is_meta and store.block.pinned_bytes == 0
    del store
    assert block() is None


def test_offloaded_layers_are_not_silently_copied_whole() -> None:
    _, model = paired_models(CPU)
    with torch.no_grad():
        view, _, _ = model.aggregator(seeded_images(1, 3, 56, 56))
    layer = view[5]
    assert layer.shape == (1, 3, 21, 64)
    with pytest.raises(AttributeError):
        layer.mean()
    frames = layer.fetch_frames(1, 3).assemble()
    assert frames.shape == (1, 2, 21, 64)
    torch.testing.assert_close(frames[..., :32], layer.host[0, :, 1:3], rtol=0, atol=0)
    torch.testing.assert_close(frames[..., 32:], layer.host[1, :, 1:3], rtol=0, atol=0)


def test_training_keeps_layers_on_the_device() -> None:
    _, model = paired_models(CPU, enable_track=False)
    model.train()
    view, _ = model.aggregate(seeded_images(1, 2, 56, 56))
    assert isinstance(view[5], torch.Tensor) and view[5].requires_grad


class FakeCudart:
    """cudaHostRegister and cudaHostUnregister answering the given statuses, calls recorded."""

    def __init__(self, register: int, unregister: int) -> None:
        self.statuses = {"register": register, "unregister": unregister}
        self.calls: list[str] = []

    def cudaHostRegister(self, pointer: int, size: int, flags: int) -> int:
        self.calls.append("register")
        return self.statuses["register"]

    def cudaHostUnregister(self, pointer: int) -> int:
        self.calls.append("unregister")
        return self.statuses["unregister"]

    def cudaGetErrorString(self, status: int) -> str:
        return f"fake error {status}"


@pytest.fixture
def cleared(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """Records each reset of CUDA's last error."""
    calls: list[None] = []
    monkeypatch.setattr(offload, "_clear_cuda_error", lambda: calls.append(None))
    return calls


def test_a_refused_pinning_warns_and_falls_back_to_pageable_memory(
    monkeypatch: pytest.MonkeyPatch, cleared: list[None]
) -> None:
    cudart = FakeCudart(register=2, unregister=0)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    size = 2 * mmap.PAGESIZE
    with pytest.warns(RuntimeWarning, match=rf"cudaHostRegister of {size} bytes.*fake error 2"):
        block = HostBlock(size - 1, CPU, pin=True)
    assert block.pinned_bytes == 0 and block.nbytes == size
    assert len(cleared) == 1
    del block
    assert cudart.calls == ["register"]  # nothing to unpin


def test_a_refused_unpinning_warns_once_and_never_raises(
    monkeypatch: pytest.MonkeyPatch, cleared: list[None]
) -> None:
    cudart = FakeCudart(register=0, unregister=1)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    block = HostBlock(mmap.PAGESIZE, CPU, pin=True)
    assert block.pinned_bytes == mmap.PAGESIZE and not cleared
    with pytest.warns(RuntimeWarning, match=rf"cudaHostUnregister of {mmap.PAGESIZE} bytes"):
        del block  # __del__ releases it
    assert cudart.calls == ["register", "unregister"] and len(cleared) == 1


def overlapping(copies: list, kernels: list) -> list:
    """The copies whose GPU interval overlaps a kernel's."""
    return [
        copy
        for copy in copies
        if any(
            copy.time_range.start < kernel.time_range.end
            and kernel.time_range.start < copy.time_range.end
            for kernel in kernels
        )
    ]


@pytest.mark.gpu
def test_cuda_offload_is_pinned_overlapped_and_exact() -> None:
    device = torch.device("cuda")
    on_device, offloaded = paired_models(device)
    # 20 frames of 37 x 37 patches (three head chunks: 8 + 8 + 4): global attention over 27,480
    # tokens keeps the GPU behind the host, so copies and the next kernels are queued together
    frames, side = 20, 518
    images = seeded_images(1, frames, side, side).to(device)
    points = QUERY_POINTS.to(device)
    tokens = frames * (5 + (side // 14) ** 2)
    half = tokens * 32 * 4  # one [B, S, P, C] float32 half
    offloaded.aggregator.offload_piece_bytes = half // 4
    pieces = -(-tokens // (half // 4 // (32 * 4)))  # pieces of whole tokens
    assert pieces >= 4
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.no_grad():
        expected = on_device(images, query_points=points)
        warm, _, _ = offloaded.aggregator(images)  # pins the arena
        pointer = warm[1].host.data_ptr()
        del warm
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=activities) as profile:
            view, start, _ = offloaded.aggregator(images)
            actual = offloaded.predict(view, images, start, points)
            torch.cuda.synchronize()
    store, kept = view[1].store, len(view.orig_indices)
    assert view[1].host.data_ptr() == pointer  # the arena, pinned once
    assert view[1].host.is_pinned() and store.block.pinned_bytes >= kept * 2 * half
    assert_same_predictions({**actual, "images": images}, expected)
    out, back = store.transfers.device_to_host, store.transfers.host_to_device
    assert len(out) == kept * 2 * pieces and len(back) == 3 * kept * 2

    events = profile.events()
    on_gpu = [e for e in events if e.device_type == DeviceType.CUDA]
    host_names = {e.name for e in events if e.device_type == DeviceType.CPU}
    # kernels: neither copies nor fills, nor the GPU spans of record_function ranges
    kernels = [
        e
        for e in on_gpu
        if not e.name.startswith(("Memcpy", "Memset")) and e.name not in host_names
    ]
    # the offload's copies run on streams without kernels (.item() copies run on the compute one)
    kernel_streams = {e.device_resource_id for e in kernels}
    copies = [
        e
        for e in on_gpu
        if e.name.startswith("Memcpy") and e.device_resource_id not in kernel_streams
    ]
    copies_out = [e for e in copies if e.name == "Memcpy DtoH (Device -> Pinned)"]
    copies_back = [e for e in copies if e.name == "Memcpy HtoD (Pinned -> Device)"]
    assert len(copies_out) == len(out) and len(copies_back) == len(back)
    assert len(copies) == len(out) + len(back), sorted({e.name for e in copies})
    assert overlapping(copies_out, kernels), "no copy out overlaps a kernel"
    assert overlapping(copies_back, kernels), "no copy back overlaps a kernel"

    loop = next(
        e for e in events if e.name == "aggregator.blocks" and e.device_type == DeviceType.CPU
    )
    host_calls = [
        e.name
        for e in events
        if loop.time_range.start <= e.time_range.start < loop.time_range.end
        and e.device_type == DeviceType.CPU
    ]
    assert "cudaMemcpyAsync" in host_calls
    assert not [name for name in host_calls if "Synchronize" in name]


@pytest.mark.gpu
def test_a_refused_cuda_pinning_leaves_cuda_usable() -> None:
    block = HostBlock(1 << 20, CPU, pin=True)
    assert block.pinned_bytes == 1 << 20 and block.memory.is_pinned()
    # registering the same memory twice fails; the error must not reach the next kernel
    with pytest.warns(RuntimeWarning, match=r"cudaHostRegister of 1048576 bytes failed"):
        assert offload._pin(block.memory) == 0
    assert torch.ones(4, device="cuda").add_(1).sum().item() == 8
    block.release()
    assert block.pinned_bytes == 0 and not block.memory.is_pinned()
