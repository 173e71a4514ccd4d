"""The offline replacement policies behind `make bench`'s table, on textbook strings."""

from __future__ import annotations

from bench.paging import clock_faults, fifo_faults, optimal_faults

# Silberschatz et al., Operating System Concepts, ch. 10: 3 frames.
TEXTBOOK = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]
BELADY = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]     # FIFO's anomaly: more frames, more faults


def test_fifo_and_optimal_give_the_textbook_counts():
    assert fifo_faults(TEXTBOOK, 3) == 15
    assert optimal_faults(TEXTBOOK, 3) == 9


def test_fifo_shows_beladys_anomaly_and_optimal_does_not():
    assert (fifo_faults(BELADY, 3), fifo_faults(BELADY, 4)) == (9, 10)
    assert (optimal_faults(BELADY, 3), optimal_faults(BELADY, 4)) == (7, 6)


def test_the_clock_gives_a_second_chance():
    # 1, 2 loaded; 1 referenced again; 3 must evict: the hand clears 1's and 2's bits and
    # takes 1's frame (a full lap: both were referenced). Then 1 faults again, evicting 2
    # (its bit was cleared on the lap), and 3 and 1 are hits.
    assert clock_faults([1, 2, 1, 3, 1, 3, 1], 2) == 4
    assert clock_faults(TEXTBOOK, 3) == 14
    assert clock_faults(list(range(10)) * 3, 10) == 10         # fits: compulsory only


def test_optimal_is_never_beaten():
    import random

    rng = random.Random(5)
    for _ in range(50):
        refs = [rng.randrange(12) for _ in range(200)]
        frames = rng.randrange(1, 12)
        best = optimal_faults(refs, frames)
        assert best <= min(fifo_faults(refs, frames), clock_faults(refs, frames))
        assert best >= len(set(refs))
