"""Devices on the I/O port bus: hardware that finishes work later and raises an interrupt.

The slow device (ports 0x300-0x30F, interrupt vector 0x31) models a disk or a
network card: a driver starts a transfer with an OUT, the device works for a
while (a fixed number of guest instructions: time on this machine is counted
in instructions, so the interrupt lands at the same instruction in every run)
and then raises its interrupt line, whatever the CPU is running by then. The
driver's ISR acknowledges it and reads the data with IN.
"""

from __future__ import annotations

SLOW_DEVICE_PORT = 0x300
SLOW_DEVICE_VECTOR = 0x31
SLOW_DEVICE_LATENCY = 200_000           # instructions from START to the interrupt
PORT_COMMAND, PORT_DATA, PORT_STATUS = 0x0, 0x4, 0x8
COMMAND_START = 1
STATUS_IDLE, STATUS_BUSY, STATUS_DONE = 0, 1, 2
DATA = b"data from the slow device"


class SlowDevice:
    """A device that answers a START with an interrupt SLOW_DEVICE_LATENCY instructions later."""

    base = SLOW_DEVICE_PORT
    vector = SLOW_DEVICE_VECTOR

    def __init__(self) -> None:
        self.state = STATUS_IDLE
        self.fire_at: int | None = None     # machine clock of the pending interrupt
        self._data = b""
        self._pos = 0

    def port_out(self, offset: int, value: int, now: int) -> None:
        if offset == PORT_COMMAND and value == COMMAND_START and self.state != STATUS_BUSY:
            self.state = STATUS_BUSY
            self.fire_at = now + SLOW_DEVICE_LATENCY
            self._data, self._pos = DATA, 0

    def port_in(self, offset: int) -> int:
        if offset == PORT_STATUS:
            return self.state
        if offset == PORT_DATA and self.state == STATUS_DONE:
            chunk = self._data[self._pos:self._pos + 4]
            self._pos += 4
            return int.from_bytes(chunk.ljust(4, b"\0"), "little")
        return 0

    def due(self, now: int) -> bool:
        """The interrupt line goes up at fire_at: the transfer is done."""
        if self.fire_at is not None and now >= self.fire_at:
            self.fire_at = None
            self.state = STATUS_DONE
            return True
        return False
