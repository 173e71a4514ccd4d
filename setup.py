"""Packaging hooks (the rest is in pyproject.toml): what makes the wheel work without a compiler.

- The built guests go in as package data, under emu/_guest/ (emu/guests.py finds them
  there): the apps (guest/build/apps/*: the ET_EXEC apps, the PIE flavour, the 32-bit apps),
  the PE drivers (guest/build/drivers/*.sys and the .pdb their function names come from),
  and what a reader needs to build their own with ``emu build``: guest/include, the
  library's sources (guest/lib, guest/lib32), the linker scripts (guest/link), and the
  guests' own sources as examples. The WDK headers and import libraries the PE drivers
  build against are in the ``ziglang`` wheel, a dependency.
- The guests are not built here: build them first (``make all``: the guests and
  emu/hw/_native.so). A missing or stale one stops the build with one line saying so.
- emu/hw/_native.so (compiled C, loaded with ctypes) goes in too, so the wheel is tagged
  for this platform (py3-none-linux_x86_64 on x86-64 Linux: the library uses no Python
  API, so any Python 3 of that platform loads it). emu/hw/native.c stays out of the wheel:
  emu/hw/native.py rebuilds the library when the source is newer, and pip gives installed
  files the time of installation, which would send it looking for a compiler.
- An editable install (``make setup``'s ``pip install -e``) runs none of this: it uses the
  checkout's guest/ (emu.guests).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
GUEST = HERE / "guest"
NATIVE = HERE / "emu" / "hw" / "_native.so"
# Copied as they are (sources, headers, linker scripts): folder -> file patterns.
SOURCES = {"include": ("**/*.h",), "lib": ("*.c", "*.S"), "lib32": ("*.c", "*.S"),
           "link": ("*.ld",), "apps": ("*.c", "*.h", "*.S"), "apps32": ("*.c",),
           "drivers-pe": ("*.c",)}
PIE_APPS = ("hello-pie",)        # guest/Makefile's PIE_APPS: built from apps/hello.c


class GuestsNotBuilt(SystemExit):
    """The guests (or the native library) are missing or older than their sources."""


def built_guests() -> list[tuple[Path, Path]]:
    """(built file, its source) for every guest guest/Makefile builds: each app, each 32-bit
    app, the PIE flavour, each PE driver and its .pdb."""
    pairs = []
    for folder in ("apps", "apps32"):
        for source in sorted((GUEST / folder).glob("*.[cS]")):
            pairs.append((GUEST / "build" / "apps" / source.stem, source))
    for name in PIE_APPS:
        pairs.append((GUEST / "build" / "apps" / name, GUEST / "apps" / f"{name[:-4]}.c"))
    for source in sorted((GUEST / "drivers-pe").glob("*.c")):
        for suffix in (".sys", ".pdb"):
            pairs.append((GUEST / "build" / "drivers" / f"{source.stem}{suffix}", source))
    return pairs


def check_built() -> None:
    """Stop with one line unless every guest and the native library exist and are newer
    than their sources."""
    stale = [(out, src) for out, src in built_guests() + [(NATIVE, NATIVE.with_name("native.c"))]
             if not out.is_file() or out.stat().st_mtime < src.stat().st_mtime]
    if stale:
        out, src = stale[0]
        state = "missing" if not out.is_file() else f"older than {src.relative_to(HERE)}"
        more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
        raise GuestsNotBuilt(f"error: {out.relative_to(HERE)} is {state}{more}: the wheel "
                             "carries the built guests and emu/hw/_native.so: run `make all` "
                             "first")


class BuildWithGuests(build_py):
    """build_py, then the guests and the native library copied into the package."""

    def run(self) -> None:
        """Copy the package, then emu/_guest/ and emu/hw/_native.so."""
        if self.editable_mode:
            super().run()
            return
        check_built()
        package = Path(self.build_lib) / "emu"
        if package.exists():
            shutil.rmtree(package)       # nothing left over from an earlier build
        super().run()
        target = package / "_guest"
        for out, _ in built_guests():
            self._copy(out, target / out.relative_to(GUEST))
        for folder, patterns in SOURCES.items():
            for pattern in patterns:
                for path in sorted((GUEST / folder).glob(pattern)):
                    self._copy(path, target / path.relative_to(GUEST))
        self._copy(NATIVE, Path(self.build_lib) / "emu" / "hw" / NATIVE.name)
        native_source = Path(self.build_lib) / "emu" / "hw" / "native.c"
        if native_source.exists():
            native_source.unlink()

    def _copy(self, source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(source), str(target), preserve_mode=True)


class WithNative(Distribution):
    """A distribution holding compiled code (_native.so): installed as platform code, so
    bdist_wheel makes a platform wheel."""

    def has_ext_modules(self) -> bool:
        """True: emu/hw/_native.so."""
        return True


class PlatformWheel(bdist_wheel):
    """A wheel for this platform (it carries _native.so), for any Python 3 (no Python ABI)."""

    def get_tag(self) -> tuple[str, str, str]:
        """py3, no ABI, this platform."""
        return "py3", "none", super().get_tag()[2]


setup(distclass=WithNative, cmdclass={"build_py": BuildWithGuests, "bdist_wheel": PlatformWheel})
