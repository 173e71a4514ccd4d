"""How long the property tests run. ``make test`` runs each with its bounded number of
examples; ``make fuzz`` sets EMU_FUZZ_SCALE (default 20 there) to multiply them all, and
passes a recorded --hypothesis-seed so that any failure replays."""

from __future__ import annotations

import os

SCALE = max(1.0, float(os.environ.get("EMU_FUZZ_SCALE") or 1))


def examples(n: int) -> int:
    """``n`` examples in the normal suite, ``n * EMU_FUZZ_SCALE`` under make fuzz."""
    return int(n * SCALE)
