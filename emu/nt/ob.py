"""The object manager: executive objects and the per-process handle tables that name them.

A handle is an index into ONE process's handle table (Windows Internals, ch. 8
"Object handles and the process handle table"): values are multiples of 4,
private to the process. The same number in another process names nothing, or
something else entirely, which is why a handle cannot be passed between
processes by value (STATUS_INVALID_HANDLE).

Objects count their handles; a waitable object has a signal state and a list
of waiting threads (dispatcher objects: process, thread, event).
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt.process import Thread

HANDLE_INCREMENT = 4             # handle values are multiples of 4, as on Windows
MAX_HANDLES = 4096               # per process: beyond it, STATUS_INSUFFICIENT_RESOURCES
NT_CURRENT_PROCESS = 0xFFFF_FFFF_FFFF_FFFF     # NtCurrentProcess(): -1
NT_CURRENT_THREAD = 0xFFFF_FFFF_FFFF_FFFE      # NtCurrentThread(): -2
CONSOLE_DEVICE = "\\Device\\Console"           # the name NtOpenFile gives the console


def handle_argument(value: int, bits: int) -> int:
    """A handle as a system call received it: a 32-bit process's handles are sign-extended,
    as WOW64 does, so its NtCurrentProcess() (0xFFFFFFFF) is the same -1."""
    if bits == 32 and 0x8000_0000 <= value <= 0xFFFF_FFFF:
        return value | 0xFFFF_FFFF_0000_0000
    return value


class ObjectType(enum.Enum):
    PROCESS = "Process"
    THREAD = "Thread"
    EVENT = "Event"
    FILE = "File"
    CONSOLE = "Console"
    DEVICE = "Device"            # an open device (a FILE_OBJECT on a DEVICE_OBJECT)


class HandleError(Exception):
    """A handle value that fails: carries the NTSTATUS to return."""

    def __init__(self, status: NTSTATUS) -> None:
        super().__init__(status.name)
        self.status = status


class DispatcherObject:
    """Something a thread can wait on: signalled or not, with its waiters (KOBJECTS)."""

    object_type: ObjectType
    handle_count: int = 0

    def __init__(self) -> None:
        self.waiters: list[Thread] = []
        self.handle_count = 0

    @property
    def signalled(self) -> bool:
        raise NotImplementedError

    def acquire(self) -> None:
        """What a satisfied wait does to the object (an auto-reset event resets)."""


class Event(DispatcherObject):
    """KEVENT: a notification event stays set; a synchronization event wakes one waiter."""

    object_type = ObjectType.EVENT

    def __init__(self, manual_reset: bool, state: bool) -> None:
        super().__init__()
        self.manual_reset = manual_reset
        self.state = state

    @property
    def signalled(self) -> bool:
        return self.state

    def acquire(self) -> None:
        if not self.manual_reset:
            self.state = False


@dataclass(eq=False)
class FileObject:
    """An open file of the guest file system: its bytes and the current position."""

    path: str
    data: bytes
    position: int = 0
    handle_count: int = 0
    object_type: ObjectType = field(default=ObjectType.FILE, init=False)


class ConsoleObject:
    """The console device, opened as a file (\\Device\\Console): writes go to the screen."""

    object_type = ObjectType.CONSOLE
    path = CONSOLE_DEVICE

    def __init__(self) -> None:
        self.handle_count = 0


def keeps_itself_alive(obj) -> bool:
    """Whether ``obj`` is a process or thread still running: it needs no handle to live."""
    return obj.object_type in (ObjectType.PROCESS, ObjectType.THREAD) and not obj.signalled


class ObjectDirectory:
    """Every named or unnamed object that some handle still refers to (the object manager's
    view): an object is deleted when its last handle closes (ObDereferenceObject)."""

    def __init__(self) -> None:
        self._live: dict[int, object] = {}

    def created(self, obj) -> None:
        self._live[id(obj)] = obj

    def closed(self, obj) -> None:
        """A handle closed, or a process or thread ended: delete the object if nothing keeps
        it (a running process or thread keeps itself alive)."""
        if obj.handle_count == 0 and not keeps_itself_alive(obj):
            self._live.pop(id(obj), None)

    def live(self) -> list:
        return list(self._live.values())


_RESERVED = object()             # a slot taken for an object still being made


class HandleTable:
    """One process's handle table: value -> object. A create service reserves its slot
    before it makes the object, so that a full table refuses the call before anything
    exists (and a new thread or process never runs without the handle that names it)."""

    def __init__(self) -> None:
        self._entries: dict[int, object] = {}
        # Every value below _next is in _entries or in _freed (a heap): the lowest free
        # value is found without a scan (a full table made 4,096 handles in O(n^2)).
        self._next = HANDLE_INCREMENT
        self._freed: list[int] = []

    def __len__(self) -> int:
        return len(self._entries)

    def reserve(self) -> int:
        """The lowest free value, held for ``fill``; STATUS_INSUFFICIENT_RESOURCES (a
        HandleError) when the table already holds MAX_HANDLES."""
        if len(self._entries) >= MAX_HANDLES:
            raise HandleError(NTSTATUS.STATUS_INSUFFICIENT_RESOURCES)
        if self._freed:
            value = heapq.heappop(self._freed)
        else:
            value, self._next = self._next, self._next + HANDLE_INCREMENT
        self._entries[value] = _RESERVED
        return value

    def _free(self, value: int) -> None:
        del self._entries[value]
        heapq.heappush(self._freed, value)

    def fill(self, value: int, obj) -> None:
        """ObInsertObject's second half: the reserved ``value`` now names ``obj``
        (STATUS_INVALID_HANDLE if the slot went, with its process's table)."""
        if self._entries.get(value) is not _RESERVED:
            raise HandleError(NTSTATUS.STATUS_INVALID_HANDLE)
        self._entries[value] = obj
        obj.handle_count += 1

    def unreserve(self, value: int) -> None:
        """The object was not made: give the reserved slot back."""
        if self._entries.get(value) is _RESERVED:
            self._free(value)

    def insert(self, obj) -> int:
        """ObInsertObject/ObOpenObject: a new handle to ``obj`` (lowest free value)."""
        value = self.reserve()
        self.fill(value, obj)
        return value

    def lookup(self, value: int, *types: ObjectType):
        """ObReferenceObjectByHandle: the object ``value`` names here, of one of ``types``."""
        obj = self._entries.get(value)
        if obj is None or obj is _RESERVED:
            raise HandleError(NTSTATUS.STATUS_INVALID_HANDLE)
        if types and obj.object_type not in types:
            raise HandleError(NTSTATUS.STATUS_OBJECT_TYPE_MISMATCH)
        return obj

    def close(self, value: int):
        """NtClose: forget ``value``; returns the object (its handle count is one lower)."""
        obj = self._entries.get(value)
        if obj is None or obj is _RESERVED:
            raise HandleError(NTSTATUS.STATUS_INVALID_HANDLE)
        self._free(value)
        obj.handle_count -= 1
        return obj

    def close_all(self) -> list:
        """Process exit: close every handle (the table is destroyed; reserved slots go)."""
        for value in [v for v, obj in self._entries.items() if obj is _RESERVED]:
            self._free(value)
        return [self.close(value) for value in sorted(self._entries)]

    def reserved(self) -> list[int]:
        """The values reserved for objects still being made."""
        return sorted(v for v, obj in self._entries.items() if obj is _RESERVED)

    def items(self) -> list[tuple[int, object]]:
        """(value, object) of every open handle, by value."""
        return sorted((v, obj) for v, obj in self._entries.items() if obj is not _RESERVED)
