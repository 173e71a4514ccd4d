"""ntoskrnl.exe's and hal.dll's exports as PE drivers import them, one module per component
(Ex: pool; Io: I/O manager; Ke: kernel; Mm: memory manager; Ps: processes; Rtl: run-time
library; Hal). Each routine has the x64 signature and the behaviour of its WDK
declaration and Microsoft's reference page, and registers itself with
``emu.nt.exports.export(name, dll=...)``. Importing this package registers them all, in
the fixed order below (which fixes their trap addresses).
"""

from emu.nt import exports as _exports
from emu.nt import io as _io
from emu.nt.ntos import ex, hal, io, ke, mm, ps, rtl  # noqa: F401 (registers the exports)

# The I/O manager's default dispatch routine: not an export (no driver imports it), but a
# trap address like theirs, registered after them all so their addresses stay where they
# were. Every MajorFunction entry of a PE driver's DRIVER_OBJECT starts as it (emu.nt.io).
_exports.export("IopInvalidDeviceRequest", dll=None)(_io.invalid_device_request)
# Registered after the table above, so that its trap addresses stay where they were.
from emu.nt.ntos import current  # noqa: E402, F401 (KeGetCurrentThread, PsGetCurrentThread)
