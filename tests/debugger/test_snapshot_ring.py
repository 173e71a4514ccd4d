"""The snapshot ring's bookkeeping when the host refuses (emu.debugger.snapshots)."""

from __future__ import annotations

import errno
import os

from emu.debugger.snapshots import SnapshotRing


def test_a_fork_the_host_refuses_takes_no_snapshot_and_the_schedule_goes_on(monkeypatch):
    ring = SnapshotRing(1000, keep=4)
    assert ring.due(999) is False and ring.due(1000) is True

    def refuse() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refuse)
    fds = len(os.listdir("/proc/self/fd"))
    assert ring.take(1000, None) is None
    assert ring.snapshots == [] and ring.taken == 0
    assert len(os.listdir("/proc/self/fd")) == fds          # its pipes are closed
    assert ring.due_at() == 2000                  # 1,000 on: the schedule goes on
    assert ring.take(2000, None) is None
    assert ring.due_at() == 4000                  # then 2,000 on (the spacing doubled)
    ring.stopped()
    assert ring.due_at() == 3000                  # a stop: 1,000 after the newest attempt
    assert ring.best(5000) is None                # going back: re-executed from boot
