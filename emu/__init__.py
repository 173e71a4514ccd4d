"""emu: a teaching-grade x86-64 machine: Unicorn CPU, Python MMU and rings, NT-like executive."""

import gc

__version__ = "0.1.0"

# Importing the machine makes about 20,000 objects that live as long as the process
# (modules, classes, enum members, tables). The collector would walk them over and over
# while they are made, then again in the first collections after: about 6 ms of CPU, 5% of
# `emu run hello` (start-up, docs/performance.md). So it is off while they are made, and
# they join the oldest generation at once (gc.freeze then gc.unfreeze: the Python docs),
# unless the program froze objects of its own (unfreezing would thaw them too).
_collecting = gc.isenabled()
gc.disable()
try:
    from emu.machine import Machine, MachineResult  # noqa: E402
finally:
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()
    if _collecting:
        gc.enable()

__all__ = ["Machine", "MachineResult", "__version__"]
