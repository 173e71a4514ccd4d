"""``emu build``: build a reader's own ring-3 app or driver with the pip-installed toolchain.

    emu build FILE.c [-o OUT] [--app | --app32 | --driver]

No host compiler is needed: clang comes from the ``ziglang`` wheel (``zig cc``, run as
``python -m ziglang cc``), the guests' headers, library and linker script from the guest tree
in use (emu.guests: a checkout's guest/, or the copy an installed wheel carries).

- An app is built as guest/Makefile builds the ring-3 apps (the ET_EXEC flavour): the same
  freestanding flags (``-target x86_64-freestanding-none``: no C library, no OS ABI note),
  crt0 first, the project's library (guest/lib, compiled from its sources), linked static at
  0x400000 with guest/link/app.ld. Default output: FILE without ``.c``, beside it.
- A 32-bit app (``--app32``, never detected: the same C builds either way) is built as
  guest/Makefile builds apps32/: ELF32 i386 (``-target x86-freestanding-none``, gcc's
  ``-m32``), crt0 and the system call stubs of guest/lib32 (``int 0x2e``), the same library
  sources and lib32/divdi3.c, linked static at 0x400000 with guest/link/app32.ld. It runs
  in compatibility mode (guest/README.md, "32-bit apps"). Default output as for an app.
- A driver is built as guest/Makefile's pe-drivers are (emu.tools.build_driver, the same as
  ``emu build-driver``): a PE32+ .sys of the native subsystem against the WDK headers of the
  ziglang wheel. Default output: FILE.sys beside FILE.c.

The kind: ``--driver``, ``--app`` or ``--app32`` when given; otherwise a source that defines
or declares ``DriverEntry`` (the name followed by ``(``, outside comments and string
literals) is a driver, anything else an app. Every failure prints one line
``emu: error: ...`` (after the compiler's own messages, shown as they are) and exits
non-zero: 1 when the compiler or the linker failed, 2 for a bad command line, a missing
source, an output that cannot be written, or no ziglang.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from emu import guests
from emu.outputs import output_problem
from emu.tools import build_driver
from emu.tools.build_driver import EXIT_FAILED, EXIT_USAGE, BuildError

TARGET = "x86_64-freestanding-none"
TARGET32 = "x86-freestanding-none"        # i386, as gcc -m32 (guest/Makefile's x86 flavour)
# guest/Makefile's CFLAGS (without -Werror: a reader's warnings are shown, not fatal), and
# its exec flavour's -fno-pie. Freestanding ring-3 code: no C library, no stack protector,
# no CET endbr64, frame pointers for the debugger's backtrace, no red zone (System V ABI
# 3.2.2 allows one; the executive's exception dispatch pushes below rsp), -g for symbols.
# -O2 also keeps out the UBSan checks zig cc compiles in at its default -O0.
CFLAGS = ("-std=gnu11", "-Wall", "-O2", "-g", "-ffreestanding", "-nostdlib", "-static",
          "-fno-stack-protector", "-fcf-protection=none", "-fno-omit-frame-pointer",
          "-mno-red-zone", "-fno-asynchronous-unwind-tables", "-fno-pie")
# guest/Makefile's LDFLAGS and EXEC_LDFLAGS: 4 KiB pages, no build-id note, no executable
# stack, static ET_EXEC at 0x400000 by link/app.ld. (zig's linker takes no
# --orphan-handling=error: app.ld's sections are the same, its check is the Makefile's.)
LDFLAGS = ("-nostdlib", "-Wl,-z,max-page-size=0x1000", "-Wl,-z,common-page-size=0x1000",
           "-Wl,--build-id=none", "-Wl,-z,noexecstack", "-static", "-no-pie")
# guest/Makefile's LIB_SRCS, after lib/crt0.S (it defines the entry point, _start).
LIB_SOURCES = ("lib/exit.c", "lib/printf.c", "lib/string.c", "lib/syscall.S", "lib/except.c")
# guest/Makefile's LIB32_SRCS, after lib32/crt0.S: the C library of the 64-bit apps with the
# int 0x2e stubs, and the 64-bit division helpers libgcc would give (-nostdlib leaves them out).
LIB32_SOURCES = ("lib/exit.c", "lib/printf.c", "lib/string.c", "lib32/syscall.S",
                 "lib32/divdi3.c")


class AppKind(NamedTuple):
    """How guest/Makefile builds one flavour of ring-3 app."""

    target: str                  # zig cc's -target
    crt0: str                    # the entry point's source, linked first
    library: tuple[str, ...]     # the library's sources, linked last
    script: str                  # the linker script


APP_KINDS = {
    "app": AppKind(TARGET, "lib/crt0.S", LIB_SOURCES, "link/app.ld"),
    # guest/Makefile's X86_LDFLAGS name -m elf_i386: zig's -target x86 links ELF32 i386.
    "app32": AppKind(TARGET32, "lib32/crt0.S", LIB32_SOURCES, "link/app32.ld"),
}
# What `built OUT (KIND)` says.
KIND_NAMES = {"app": "app", "app32": "32-bit app", "driver": "driver"}

_COMMENTS_AND_STRINGS = re.compile(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|'
                                   r"'(?:\\.|[^'\\\n])*'", re.S)
_DRIVER_ENTRY = re.compile(r"\bDriverEntry\s*\(")


def is_driver_source(text: str) -> bool:
    """True if C source ``text`` names ``DriverEntry(`` outside comments and literals."""
    return _DRIVER_ENTRY.search(_COMMENTS_AND_STRINGS.sub(" ", text)) is not None


def zig_cc(target: str = TARGET) -> list[str]:
    """The pip-installed clang: ``python -m ziglang cc`` (BuildError without ziglang)."""
    build_driver.ddk_include()        # the one check (and message) for a missing ziglang
    return [sys.executable, "-m", "ziglang", "cc", "-target", target]


def app_commands(source: Path, obj: Path, output: Path, kind: str = "app") -> list[list[str]]:
    """The compile and link commands of an app of ``kind`` ("app" or "app32"): what
    guest/Makefile runs, with zig cc."""
    root, flavour = guests.root(), APP_KINDS[kind]
    cc = zig_cc(flavour.target)
    compile_ = [*cc, *CFLAGS, f"-I{root / 'include'}", "-c", str(source), "-o", str(obj)]
    # The library is compiled from its sources by the same command (zig caches the objects).
    link = [*cc, *CFLAGS, f"-I{root / 'include'}", *LDFLAGS,
            f"-Wl,-T,{root / flavour.script}", str(root / flavour.crt0), str(obj),
            *(str(root / s) for s in flavour.library), "-o", str(output)]
    return [compile_, link]


def build_app(source: Path, output: Path, kind: str = "app") -> Path:
    """Compile and link ``source`` into the app ``output`` (``kind`` "app" or "app32");
    BuildError if it cannot be built (the compiler's messages go to stderr first)."""
    flavour = APP_KINDS[kind]
    missing = [s for s in ("include", flavour.script, flavour.crt0, *flavour.library)
               if not (guests.root() / s).exists()]
    if missing:
        raise BuildError(f"{guests.root() / missing[0]}: missing (the guest tree has no "
                         "headers and library to build with)")
    with tempfile.TemporaryDirectory(prefix="emu-build-") as scratch:
        obj, image = Path(scratch) / (source.stem + ".o"), Path(scratch) / source.stem
        build_driver.compile_and_link(source, app_commands(source, obj, image, kind), scratch)
        try:
            shutil.copyfile(image, output)
            os.chmod(output, 0o755)
        except OSError as err:
            raise BuildError(f"-o {output}: cannot write it: {err.strerror}") from None
    return output


def build(source: Path, output: Path | None = None, kind: str | None = None) -> tuple[str, Path]:
    """Build ``source`` as ``kind`` ("app", "app32", "driver", or None: detected) into
    ``output`` (default beside the source); (the kind, the output). BuildError if it cannot."""
    if not source.is_file():
        raise BuildError(f"{source}: no such file")
    if source.suffix.lower() != ".c":
        raise BuildError(f"{source}: not a C file (the name must end in .c)")
    if kind is None:
        try:
            text = source.read_text(errors="replace")
        except OSError as err:
            raise BuildError(f"{source}: cannot read it: {err.strerror}") from None
        kind = "driver" if is_driver_source(text) else "app"
    if output is None:
        output = source.with_suffix(".sys" if kind == "driver" else "")
    problem = output_problem("-o", output)
    if problem:
        raise BuildError(problem)
    if output.resolve() == source.resolve():
        raise BuildError(f"-o {output}: the same file as the source")
    if kind == "driver":
        return kind, build_driver.build(source, output)
    return kind, build_app(source, output, kind)


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``build`` subcommand of ``emu``."""
    p = sub.add_parser("build", help="build your own app or driver (a C file) without a "
                       "host compiler",
                       description="Compile and link a C file into a ring-3 app (ELF64, "
                       "linked as the guest apps are; ELF32 with --app32) or, when it has a "
                       "DriverEntry, a PE32+ driver .sys, with the ziglang wheel's clang.")
    p.add_argument("source", metavar="FILE.c", help="the C source")
    p.add_argument("-o", "--output", metavar="OUT", help="the file to write (default: FILE "
                   "for an app, FILE.sys for a driver, beside FILE.c)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--app", dest="kind", action="store_const", const="app",
                      help="build a ring-3 app (default unless the source has a DriverEntry)")
    kind.add_argument("--app32", dest="kind", action="store_const", const="app32",
                      help="build a 32-bit ring-3 app (ELF32 i386, run in compatibility "
                      "mode, as guest/apps32 are built)")
    kind.add_argument("--driver", dest="kind", action="store_const", const="driver",
                      help="build a driver (default when the source has a DriverEntry)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``emu build`` with parsed arguments: the exit status (errors: one line)."""
    try:
        kind, out = build(Path(args.source), Path(args.output) if args.output else None,
                          args.kind)
    except BuildError as err:
        print(f"emu: error: {err}", file=sys.stderr)
        return err.status
    print(f"built {out} ({KIND_NAMES[kind]})")
    return 0


__all__ = ["EXIT_FAILED", "EXIT_USAGE", "add_parser", "build", "is_driver_source", "run"]
