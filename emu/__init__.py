"""emu: a teaching-grade x86-64 machine: Unicorn CPU, Python MMU and rings, NT-like executive."""

__version__ = "0.1.0"

from emu.machine import Machine, MachineResult  # noqa: E402

__all__ = ["Machine", "MachineResult", "__version__"]
