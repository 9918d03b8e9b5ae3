"""The live-bytes tracker on small fake programs: counts, peaks and the allocation events."""

import torch

from vggt.memory.tracker import LiveBytesTracker


def test_new_storages_count_until_freed_and_events_keep_their_order() -> None:
    mode = LiveBytesTracker("cpu")
    with mode:
        existing = torch.empty(100)
        with mode.track([existing], record_events=True) as live:
            existing.add_(1)
            first = torch.empty(1000)
            second = first + 1
            view = second.view(10, 100)
            del first
            empty = torch.empty(0)
    assert live.peak_bytes == 8000
    assert live.live_bytes == 4000
    signs = [(delta > 0, abs(delta)) for _, delta in live.events]
    assert signs == [(True, 4000), (True, 4000), (False, 4000)]
    first_key, second_key = live.events[0][0], live.events[1][0]
    assert live.events[2][0] == first_key != second_key
    assert view.shape == (10, 100) and empty.numel() == 0


def test_nothing_is_counted_outside_a_track_block() -> None:
    mode = LiveBytesTracker("cpu")
    with mode:
        before = torch.empty(10)
        with mode.track() as live:
            inside = torch.empty(10)
        after = torch.empty(10)
    assert live.peak_bytes == 40
    assert live.events is None
    assert before.shape == after.shape == inside.shape
