"""Snapshots of the whole emulator for going back in time: forked copies that sleep.

A machine paused between two instructions lives as much in Python frames (inside the
dispatcher, a system service, a DPC) as in RAM and registers, so the one snapshot that keeps
all of it is the emulator process itself. Every ``interval`` instructions the session forks
(as gdb's ``checkpoint`` and rr do): the child sleeps, sharing its memory copy-on-write with
the emulator that runs on, so a snapshot costs only the pages written after it was taken.
RAM is a private mapping for this reason (emu.hw.memory), and each snapshot takes its own
copy of the pagefile's used slots.

Going back to position P resumes the newest snapshot at or before P: the running emulator
hands it the debugger's state (breakpoints, the stop to report) and waits; the snapshot
re-executes from its position to P and carries on the session on the same terminal. When
it ends, the exit status travels back to the waiting emulator, which exits with it. At most
``keep`` snapshots sleep at once (the oldest is dropped): the memory budget is ``keep``
times the pages written per interval, at most ``keep`` times the emulator's size
(docs/debugger.md). A position older than every snapshot is re-executed from boot.

Linux only (fork, pipes, PR_SET_PDEATHSIG so that no snapshot outlives its parent).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import struct
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

PR_SET_PDEATHSIG = 1          # prctl(2): a signal for this process when its parent dies
_LENGTH = struct.Struct("<I")
_STATUS = struct.Struct("<i")
QUIT = b""                    # the message that drops a snapshot


@dataclass
class Snapshot:
    """A sleeping copy of the emulator at ``position`` (instructions and exceptions since boot)."""

    position: int
    pid: int
    command: int              # pipe to it: a message resumes it, QUIT drops it
    reply: int                # pipe from it: "ready", then its exit status

    def private_kib(self) -> int | None:
        """Memory it holds alone (pages written since it was taken), from /proc."""
        try:
            with open(f"/proc/{self.pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Private_Dirty:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None


class SnapshotRing:
    """The sleeping snapshots of one debugging session (see the module docstring)."""

    def __init__(self, interval: int = 2_000_000, keep: int = 8) -> None:
        if interval <= 0 or keep < 0:
            raise ValueError("snapshot interval must be positive and the count not negative")
        self.interval = interval
        self.keep = keep
        self.snapshots: list[Snapshot] = []
        self.next_at = interval
        self.waiter: int | None = None    # set when resumed: where our exit status goes
        self.taken = 0

    def due(self, position: int) -> bool:
        """Whether a snapshot should be taken at ``position``."""
        return self.keep > 0 and position >= self.next_at

    def take(self, position: int, pagefile) -> Any:
        """Fork a snapshot. The running emulator gets None back at once; the snapshot, if it
        is ever resumed, gets the message it was resumed with (and never returns else)."""
        self.next_at = position + self.interval
        sys.stdout.flush()
        sys.stderr.flush()
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(down_w)
            os.close(up_r)
            return self._sleep(down_r, up_w, pagefile)
        os.close(down_r)
        os.close(up_w)
        if os.read(up_r, 1) != b"R":
            raise RuntimeError("a debugger snapshot failed to start")
        self.snapshots.append(Snapshot(position, pid, down_w, up_r))
        self.taken += 1
        while len(self.snapshots) > self.keep:
            self._drop(self.snapshots.pop(0))
        return None

    def _sleep(self, command: int, reply: int, pagefile) -> Any:
        """The child's life: wait to be resumed (return the message) or dropped (exit)."""
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if pagefile is not None:
            pagefile.take_private_copy()
        os.write(reply, b"R")
        message = _receive(command)
        if message is None:
            os._exit(0)
        os.close(command)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.waiter = reply
        self.next_at = 0               # snapshot again from here on
        alive, message = message
        for s in [s for s in self.snapshots if s.position not in alive]:
            self.snapshots.remove(s)   # dropped by the emulator that ran on after this fork
            for fd in (s.command, s.reply):
                with contextlib.suppress(OSError):
                    os.close(fd)
        return message

    def best(self, target: int) -> Snapshot | None:
        """The newest snapshot at or before position ``target``."""
        fit = [s for s in self.snapshots if s.position <= target]
        return fit[-1] if fit else None

    def resume(self, snapshot: Snapshot, message: Any) -> NoReturn:
        """Hand the session to ``snapshot`` and wait for it to end; exit with its status.
        Later snapshots belong to a future that is being replaced: they are dropped."""
        for s in list(self.snapshots):
            if s is not snapshot and s.position > snapshot.position:
                self._drop(s)
        sys.stdout.flush()
        sys.stderr.flush()
        alive = [s.position for s in self.snapshots if s.position < snapshot.position]
        _send(snapshot.command, (alive, message))
        data = _read_exact(snapshot.reply, _STATUS.size)
        status = _STATUS.unpack(data)[0] if data else 1
        self.finish(status)
        os._exit(status)

    def finish(self, status: int) -> None:
        """This emulator ends with ``status``: drop its snapshots, tell whoever waits."""
        for s in self.snapshots:
            self._drop(s)
        self.snapshots = []
        if self.waiter is not None:
            with contextlib.suppress(OSError):
                os.write(self.waiter, _STATUS.pack(status))
            self.waiter = None

    def forget_all(self) -> None:
        """Drop every snapshot (the history they hold is being rebuilt from boot)."""
        for s in self.snapshots:
            self._drop(s)
        self.snapshots = []
        self.next_at = 0

    @staticmethod
    def _drop(snapshot: Snapshot) -> None:
        with contextlib.suppress(OSError):
            _send(snapshot.command, QUIT)
        for fd in (snapshot.command, snapshot.reply):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(snapshot.pid, 0)


def _send(fd: int, message: Any) -> None:
    data = message if message == QUIT else pickle.dumps(message)
    os.write(fd, _LENGTH.pack(len(data)) + data)


def _receive(fd: int) -> Any:
    """The next message, or None for QUIT or a closed pipe."""
    head = _read_exact(fd, _LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (n,) = _LENGTH.unpack(head)
    if n == 0:
        return None
    return pickle.loads(_read_exact(fd, n))


def _read_exact(fd: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)
