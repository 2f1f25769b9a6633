"""The streaming ticks every model backend shows progress with."""

from __future__ import annotations

import pytest

from cellreasoner.progress import STREAM_SHARE, StreamTicks


def test_stream_ticks_never_pass_their_share_and_add_up_to_the_total():
    shown: list[float] = []
    ticks = StreamTicks(shown.append, total=4.0)
    for _ in range(100):  # a reply longer than its token budget
        ticks.tick(0.25)
    assert sum(shown) == pytest.approx(STREAM_SHARE * 4.0)
    ticks.finish()
    assert sum(shown) == pytest.approx(4.0) and all(s > 0 for s in shown)


def test_stream_ticks_without_a_callback_show_nothing():
    ticks = StreamTicks(None)
    ticks.tick(0.5)
    ticks.finish()
    assert ticks.shown == 0.0
