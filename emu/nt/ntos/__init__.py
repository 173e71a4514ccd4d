"""ntoskrnl.exe's and hal.dll's exports as PE drivers import them, one module per component
(Ex: pool; Io: I/O manager; Ke: kernel; Mm: memory manager; Ps: processes; Rtl: run-time
library; Hal). Each routine has the x64 signature and the behaviour of its WDK
declaration and Microsoft's reference page, and registers itself with
``emu.nt.exports.export(name, dll=...)``. Importing this package registers them all, in
the fixed order below (which fixes their trap addresses).
"""

from emu.nt.ntos import ex, hal, io, ke, mm, ps, rtl  # noqa: F401 (registers the exports)
