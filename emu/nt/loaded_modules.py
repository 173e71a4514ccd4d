"""The loaded module list (PsLoadedModuleList, reduced): each driver image in the kernel
half, and which one holds a code address.

emu.nt.drivers loads and starts drivers; everything that only asks "whose code is this?"
(a bug check's blame, ``bt``, the I/O manager's checks) asks here, with no import of
the loader, the PE parser or the exports' modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emu.nt.loader import Segment

if TYPE_CHECKING:
    from emu.nt.interfaces import LoadedModules


@dataclass
class DriverImage:
    """A driver file, parsed and relocated for its kernel base."""

    path: str
    name: str
    base: int
    entry: int                              # DriverEntry
    segments: list[Segment]
    pages: dict[int, bytearray]
    page_flags: dict[int, int]
    imports: list[str]
    symbols: dict[str, int] = field(default_factory=dict)
    discardable: set[int] = field(default_factory=set)   # pages freed after DriverEntry
    is_pe: bool = True                      # every driver is a PE .sys (emu.nt.pe)
    functions: list = field(default_factory=list)   # .pdata: unwind.RuntimeFunction, sorted
    sections: list = field(default_factory=list)    # PE sections: pe.Section
    pdb: str = ""                           # the PDB its function names came from

    @property
    def end(self) -> int:
        return max(s.end for s in self.segments)


@dataclass
class Driver:
    """A loaded driver (the DRIVER_OBJECT it was given, and how DriverEntry ended)."""

    image: DriverImage
    driver_object: int
    status: int | None = None
    unloaded: bool = False


def symbolize(ex: LoadedModules, address: int) -> str:
    """``driver.sys!Function+0x1a`` (or ``driver.sys+0x1234``) for a code address in a loaded
    driver, as WinDbg names it; ``nt!memcpy`` for a kernel export's address; the bare address
    elsewhere."""
    driver = driver_at(ex, address)
    if driver is None:
        # The export table (emu.nt.exports) is imported with the first driver: before
        # that no export exists, and no code runs at ring 0 but the executive's own.
        from emu.nt import exports

        name = exports.name_at(address)
        return f"0x{address:x}" if name is None else f"nt!{name}"
    image = driver.image
    best = max(((value, name) for name, value in image.symbols.items() if value <= address),
               default=None)
    if best is None:
        return f"{image.name}+0x{address - image.base:x}"
    return f"{image.name}!{best[1]}+0x{address - best[0]:x}"


def driver_at(ex: LoadedModules, address: int) -> Driver | None:
    """The loaded driver whose image contains ``address``."""
    for driver in ex.drivers:
        if driver.image.base <= address < driver.image.end and not driver.unloaded:
            return driver
    return None
