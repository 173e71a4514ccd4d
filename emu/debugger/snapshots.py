"""Snapshots of the whole emulator for going back in time: forked copies that sleep.

A machine paused between two instructions lives as much in Python frames (inside the
dispatcher, a system service, a DPC) as in RAM and registers, so the one snapshot that keeps
all of it is the emulator process itself. Now and then (``SnapshotRing``: a spacing that
starts at ``interval`` after a stop and doubles while the machine runs on, up to 16 times
that) the session forks (as gdb's ``checkpoint`` and rr do): the child sleeps, sharing its
memory copy-on-write with the emulator that runs on, so a snapshot costs only the pages
written after it was taken. RAM is a private mapping for this reason (emu.hw.memory).

The emulator never waits for a child: the fork returns and the guest runs on, while the
child sets its death signal and goes to sleep on its pipe (a dropped one is SIGKILLed and
reaped later). The one exception is a pagefile with slots in use: the child copies them to
a file of its own before the emulator may write them again, and the emulator waits for that
copy; with none in use the child makes its own empty file only when it is resumed.

Going back to position P resumes the newest snapshot at or before P: the running emulator
hands it the debugger's state (breakpoints, the stop to report) and waits; the snapshot
re-executes from its position to P and carries on the session on the same terminal. When
it ends, the exit status travels back to the waiting emulator, which exits with it. At most
``keep`` snapshots sleep at once (the oldest is dropped): the memory budget is ``keep``
times the pages written between two snapshots, at most ``keep`` times the emulator's size
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
TAKEN_OVER = b"T"             # a resumed snapshot's answer: the session is in its hands
_STATUS = struct.Struct("<i")


class SnapshotLost(Exception):
    """A snapshot's process died before it could be resumed (killed from outside, the
    host's OOM killer): going back uses an older one, or boot."""


@dataclass
class Snapshot:
    """A sleeping copy of the emulator at ``position`` (instructions and exceptions since boot)."""

    position: int
    pid: int
    command: int              # pipe to it: a message resumes it (SIGKILL drops it)
    reply: int                # pipe from it: "ready", then its exit status
    ready: bool = False       # its "ready" has been read

    def wait_ready(self) -> None:
        """Wait until the child has started (its pagefile copy made, its death signal set);
        SnapshotLost if it died first."""
        if not self.ready:
            try:
                ready = os.read(self.reply, 1) == b"R"
            except OSError:
                ready = False
            if not ready:
                raise SnapshotLost(f"snapshot at position {self.position} is gone")
            self.ready = True

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
    """The sleeping snapshots of one debugging session (see the module docstring).

    When they are taken (positions only, never wall time, so the same commands give the same
    snapshots): ``interval`` positions after the newest one, then at a spacing that doubles
    with each snapshot while the machine runs on without a stop, up to ``GROWTH`` times
    ``interval``; a stop brings the spacing back to ``interval`` (counted from the newest
    snapshot, so the first run after a long one snapshots at once). A long ``continue``
    forks a few times (10 on the way to 100 M from an interval of 1 M: at 1, 2, 4, 8, 16,
    32, 48 ... 96 M), and where the user works they are dense. Going back to a target adds
    one more on the way, ``interval`` before it, so that stepping back again from there
    re-executes little."""

    GROWTH = 16               # the spacing grows to at most this many intervals

    def __init__(self, interval: int = 1_000_000, keep: int = 8) -> None:
        if interval <= 0 or keep < 0:
            raise ValueError("snapshot interval must be positive and the count not negative")
        self.interval = interval
        self.keep = keep
        self.snapshots: list[Snapshot] = []
        self.newest = 0                   # the newest snapshot's position (or where history
        #                                   was picked up: boot, a resumed snapshot)
        self.spacing = interval           # from the newest snapshot to the next
        self.next_at = interval
        self.near: int | None = None      # one more, before a going-back's target
        self.waiter: int | None = None    # set when resumed: where our exit status goes
        self.taken = 0
        self._dying: list[int] = []       # dropped snapshots not reaped yet
        self._term_handler: Any = None    # a sleeping snapshot's: SIGTERM's, to put back
        _bind_prctl()                     # in the emulator: a child finds it bound

    @property
    def cap(self) -> int:
        """The largest spacing."""
        return self.interval * self.GROWTH

    def due_at(self) -> int:
        """The position of the next snapshot (the CPU's budget is cut there)."""
        return self.next_at if self.near is None else min(self.next_at, self.near)

    def due(self, position: int) -> bool:
        """Whether a snapshot should be taken at ``position``."""
        return self.keep > 0 and position >= self.due_at()

    def stopped(self) -> None:
        """The machine paused for the user: snapshots are dense again from the newest one."""
        self.spacing = self.interval
        self.next_at = min(self.next_at, self.newest + self.interval)

    def going_to(self, target: int) -> None:
        """A re-execution to ``target`` begins: one more snapshot ``interval`` before it,
        if that is past the newest (stepping back again from the target is then short)."""
        near = target - self.interval
        self.near = near if near > self.newest else None

    def describe(self) -> str:
        """The policy, for ``info snapshots``."""
        return (f"{len(self.snapshots)} of at most {self.keep} snapshots, one every "
                f"{self.interval} instructions after a stop, the spacing doubling while the "
                f"machine runs on, up to {self.cap} (older positions: re-executed from boot)")

    def take(self, position: int, pagefile) -> Any:
        """Fork a snapshot. The running emulator gets None back at once; the snapshot, if it
        is ever resumed, gets the message it was resumed with (and never returns else)."""
        self.newest = position
        self.next_at = position + self.spacing
        self.spacing = min(2 * self.spacing, self.cap)
        if self.near is not None:
            if position >= self.near:
                self.near = None
            elif self.next_at > self.near - self.interval:
                self.next_at = self.near   # not two snapshots closer than interval
        self._reap()
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        copy_now = pagefile is not None and pagefile.used_slots > 0
        try:
            down_r, down_w = os.pipe()
            up_r, up_w = os.pipe()
        except OSError:                    # out of file descriptors: no snapshot here
            return None
        # Ctrl-C and SIGTERM to the process group stay blocked across the fork until the
        # child has its own handlers: one arriving while Python's after-fork work runs in
        # the child would print that child's traceback ("Exception ignored in _after_fork").
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_BLOCKED)
        try:
            pid = os.fork()
        except OSError:                    # EAGAIN, ENOMEM: the host refuses a process;
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for fd in (down_r, down_w, up_r, up_w):   # going back uses an older snapshot
                os.close(fd)
            return None
        if pid == 0:
            # The child does as little as it can before it sleeps: every page it writes
            # (Python's reference counts included) becomes a private copy it holds.
            _set_death_signal()
            if os.getppid() != parent:     # the emulator ended before prctl: nobody resumes
                os._exit(0)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            # SIGTERM to the process group (`timeout emu debug ...`) ends a sleeping
            # snapshot silently: only the emulator says "terminated by SIGTERM".
            self._term_handler = signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)    # one that came: ends it now
            if copy_now:                   # its slots, before the emulator writes them again
                pagefile.take_private_copy()
            os.write(up_w, b"R")
            return self._sleep(down_r, up_w, None if copy_now else pagefile,
                               (down_w, up_r))
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(down_r)
        os.close(up_w)
        snapshot = Snapshot(position, pid, down_w, up_r)
        # The emulator runs on at once: it waits for the child only when the child has
        # pagefile slots to copy before this emulator may write them again.
        if copy_now:
            try:
                snapshot.wait_ready()
            except SnapshotLost:
                self._drop(snapshot)
                return None
        self.snapshots.append(snapshot)
        self.taken += 1
        while len(self.snapshots) > self.keep:
            self._drop(self.snapshots.pop(0))
        return None

    def _sleep(self, command: int, reply: int, pagefile, ends: tuple[int, int]) -> Any:
        """The child's life: wait to be resumed (return the message) or dropped (killed).
        ``pagefile``: still shared with the emulator (it had no slot in use at the fork),
        made private once resumed; ``ends``: the emulator's ends of the two pipes."""
        message = _receive(command)
        if message is None:
            os._exit(0)
        os.write(reply, TAKEN_OVER)    # from here on the session is this process's
        for fd in (command, *ends):
            os.close(fd)
        if pagefile is not None:
            pagefile.take_private_copy()   # nothing to copy: none of its slots was in use
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, self._term_handler or signal.SIG_DFL)
        self._dying = []               # the emulator's children, not this one's
        self.waiter = reply
        self._pick_up(self.newest)     # snapshot again from here on (this one is used up)
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
        """Hand the session to ``snapshot`` and wait for it to end; exit with its status
        (SnapshotLost, with nothing handed over, if it has died). Later snapshots belong to
        a future that is being replaced: they are dropped."""
        for s in list(self.snapshots):
            if s is not snapshot and s.position > snapshot.position:
                self.snapshots.remove(s)
                self._drop(s)
        sys.stdout.flush()
        sys.stderr.flush()
        alive = [s.position for s in self.snapshots if s.position < snapshot.position]
        try:
            snapshot.wait_ready()
            _send(snapshot.command, (alive, message))
            if _read_exact(snapshot.reply, len(TAKEN_OVER)) != TAKEN_OVER:
                raise SnapshotLost(f"snapshot at position {snapshot.position} is gone")
        except (SnapshotLost, OSError):  # it died before it took the session: nothing lost
            self.snapshots.remove(snapshot)
            self._drop(snapshot)
            raise SnapshotLost(f"snapshot at position {snapshot.position} is gone") from None
        # SIGTERM to this emulator (or to the process group) ends the session where it
        # runs now: the snapshot says "terminated by SIGTERM", and its status comes back.
        with contextlib.suppress(ValueError):          # not the main thread: no handler
            signal.signal(signal.SIGTERM, lambda *_: _forward(snapshot.pid, signal.SIGTERM))
        data = _read_exact(snapshot.reply, _STATUS.size)
        if len(data) == _STATUS.size:
            status = _STATUS.unpack(data)[0]
        else:                            # killed from outside while it ran the session
            sys.stderr.write(f"emu: error: the debugger's snapshot at position "
                             f"{snapshot.position}, which had taken over the session, was "
                             "killed: the session ends\n")
            status = 1
        self.finish(status)
        os._exit(status)

    def finish(self, status: int) -> None:
        """This emulator ends with ``status``: drop its snapshots, tell whoever waits."""
        for s in self.snapshots:
            self._drop(s)
        self.snapshots = []
        self._reap(block=True)
        if self.waiter is not None:
            with contextlib.suppress(OSError):
                os.write(self.waiter, _STATUS.pack(status))
            self.waiter = None

    def forget_all(self) -> None:
        """Drop every snapshot (the history they hold is being rebuilt from boot)."""
        for s in self.snapshots:
            self._drop(s)
        self.snapshots = []
        self._pick_up(0)

    def _pick_up(self, position: int) -> None:
        """History goes on from ``position`` with no snapshot there: take one at once."""
        self.newest = position
        self.spacing = self.interval
        self.next_at = position
        self.near = None

    def _drop(self, snapshot: Snapshot) -> None:
        """End a sleeping snapshot at once (SIGKILL: it needs no CPU time to go) and close
        its pipes; it is reaped later (``_reap``), so the emulator never waits for it."""
        with contextlib.suppress(OSError):
            os.kill(snapshot.pid, signal.SIGKILL)
        for fd in (snapshot.command, snapshot.reply):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._dying.append(snapshot.pid)

    def _reap(self, block: bool = False) -> None:
        """Collect the exit of dropped snapshots (all of them with ``block``)."""
        for pid in list(self._dying):
            try:
                done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
            except ChildProcessError:      # not ours (a resumed snapshot's sibling)
                done = pid
            except OSError:
                done = 0
            if done:
                self._dying.remove(pid)


_prctl: Any = None


def _bind_prctl() -> None:
    """Find libc's prctl once, in the emulator (a child would dlopen it anew each time)."""
    global _prctl
    if _prctl is None:
        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = False


_FORK_BLOCKED = frozenset({signal.SIGINT, signal.SIGTERM})


def _forward(pid: int, signum: int) -> None:
    """Send ``signum`` on to ``pid`` (gone already: nothing to do)."""
    with contextlib.suppress(OSError):
        os.kill(pid, signum)


def _set_death_signal() -> None:
    """PR_SET_PDEATHSIG: SIGKILL this process when its parent dies (prctl(2))."""
    _bind_prctl()
    if _prctl:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _send(fd: int, message: Any) -> None:
    data = pickle.dumps(message)
    os.write(fd, _LENGTH.pack(len(data)) + data)


def _receive(fd: int) -> Any:
    """The next message, or None for a closed pipe."""
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
