"""PE drivers a test writes in C, built as `emu build-driver` builds them
(emu.tools.build_driver: the ziglang wheel's clang against the WDK's headers)."""

from __future__ import annotations

from pathlib import Path

from emu.tools import build_driver


def build_sources(folder: Path, sources: dict[str, str]) -> dict[str, Path]:
    """Each ``name: C text`` of ``sources`` written to ``folder``/name.c and built there:
    name -> the .sys."""
    built = {}
    for name, text in sources.items():
        (folder / f"{name}.c").write_text(text)
        built[name] = build_driver.build(folder / f"{name}.c")
    return built
