"""``emu build-driver``: build a reader's own Windows driver, from any folder, in one command.

    emu build-driver FILE.c [-o FILE.sys]      compile and link FILE.c into a PE32+ .sys
    emu build-driver --template NAME.c         write a driver to start from (DriverEntry, a
                                               device and its link, CREATE/CLOSE and a
                                               METHOD_BUFFERED DEVICE_CONTROL, DriverUnload)

(``python -m emu.tools.build_driver`` takes the same arguments.) It runs the two zig cc
commands docs/drivers.md gives, with the WDK headers and import libraries of the ziglang
wheel: clang from that wheel, ``-target x86_64-windows-gnu``, mingw-w64's ``ddk`` include
folder, the native subsystem, DriverEntry as the entry point, ``-lntoskrnl -lhal``. The
compiler's own messages go to stderr as they are; every failure ends with one line
``emu: error: ...`` and a non-zero exit status (1: the compiler or linker failed; 2: a
bad command line, a missing source, no ziglang).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

EXIT_FAILED, EXIT_USAGE = 1, 2
TARGET = "x86_64-windows-gnu"
# -O2: at zig cc's default -O0 clang compiles in UBSan checks, whose handlers no driver can
# import. -fms-extensions: the pragmas and __try/__except Windows drivers use.
COMPILE_FLAGS = ("-O2", "-fms-extensions", "-Wall")
# A kernel-mode image (IMAGE_SUBSYSTEM_NATIVE) entered at DriverEntry, with no C runtime,
# bound to ntoskrnl.exe and hal.dll through mingw-w64's import libraries.
LINK_FLAGS = ("-shared", "-nostdlib", "-Wl,--subsystem,native", "-Wl,--entry,DriverEntry")
LIBRARIES = ("-lntoskrnl", "-lhal")
TEMPLATE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class BuildError(Exception):
    """A build that cannot go on: one line, and the exit status."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


def ddk_include() -> Path:
    """The WDK headers (mingw-w64's <ntddk.h> and <wdm.h>: its ddk folder) in the ziglang
    wheel."""
    try:
        import ziglang
    except ImportError:
        raise BuildError(f"{sys.executable} has no ziglang: install it into this Python "
                         "(pip install ziglang, or make setup in the repository)") from None
    return Path(ziglang.__file__).parent / "lib" / "libc" / "include" / "any-windows-any" \
        / "ddk"


def commands(source: Path, obj: Path, output: Path) -> list[list[str]]:
    """The compile and link commands for ``source`` (what docs/drivers.md shows)."""
    cc = [sys.executable, "-m", "ziglang", "cc", "-target", TARGET]
    return [[*cc, *COMPILE_FLAGS, f"-I{ddk_include()}", "-c", str(source), "-o", str(obj)],
            [*cc, *LINK_FLAGS, str(obj), *LIBRARIES, "-o", str(output)]]


def build(source: Path, output: Path | None = None) -> Path:
    """Compile and link ``source`` into ``output`` (default: the source's name with .sys, in
    its folder; the linker writes NAME.pdb, which the loader reads for function names,
    and NAME.lib beside it). BuildError if it cannot be built."""
    if not source.is_file():
        raise BuildError(f"{source}: no such file")
    if source.suffix.lower() != ".c":
        raise BuildError(f"{source}: not a C file (the name must end in .c)")
    output = output if output is not None else source.with_suffix(".sys")
    if not output.parent.is_dir():
        raise BuildError(f"{output}: no such folder {output.parent}")
    if output.suffix.lower() != ".sys":
        raise BuildError(f"{output}: a driver's name ends in .sys")
    with tempfile.TemporaryDirectory(prefix="emu-build-driver-") as scratch:
        obj = Path(scratch) / (source.stem + ".o")
        compile_and_link(source, commands(source, obj, output), scratch)
    return output


def zig_env(scratch: str) -> dict[str, str]:
    """The environment zig runs in: this one, with its caches in ``scratch`` when the
    user's cache folder cannot be written (zig keeps them there)."""
    env = dict(os.environ)
    if "ZIG_GLOBAL_CACHE_DIR" not in env and not _writable_cache():
        env["ZIG_GLOBAL_CACHE_DIR"] = env["ZIG_LOCAL_CACHE_DIR"] = str(
            Path(scratch) / "zig-cache")
    return env


def compile_and_link(source: Path, steps: list[list[str]], scratch: str) -> None:
    """Run the compile and the link command of ``steps`` (the compiler's messages on
    stderr); BuildError naming the step that failed."""
    env = zig_env(scratch)
    for step, command in zip(("compile", "link"), steps, strict=True):
        try:
            done = subprocess.run(command, env=env, stdout=sys.stderr)
        except OSError as err:
            raise BuildError(f"cannot run the compiler: {err.strerror}") from None
        if done.returncode != 0:
            raise BuildError(f"{source}: {step} failed (zig cc exit status "
                             f"{done.returncode})", EXIT_FAILED)


def _writable_cache() -> bool:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    try:
        os.makedirs(base, exist_ok=True)
    except OSError:
        return False
    return os.access(base, os.W_OK)


def write_template(path: Path) -> Path:
    """Write the driver template to ``path`` (NAME.c): its device is \\Device\\NAME, its link
    \\??\\NAME. Refuses to overwrite a file, or a NAME that is no C identifier."""
    if path.suffix.lower() != ".c":
        raise BuildError(f"{path}: the template is C: give a name ending in .c")
    if not TEMPLATE_NAME.match(path.stem):
        raise BuildError(f"{path}: the name must be a C identifier (letters, digits, _), "
                         "as it names the device and the control code")
    if path.exists():
        raise BuildError(f"{path}: already exists (not overwritten)")
    if not path.parent.is_dir():
        raise BuildError(f"{path}: no such folder {path.parent}")
    text = resources.files("emu.templates").joinpath("driver.c").read_text()
    path.write_text(text.replace("@NAME@", path.stem))
    return path


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``build-driver`` subcommand of ``emu``."""
    p = sub.add_parser("build-driver", help="build your own driver (a C file) into a .sys",
                       description="Compile and link a WDM driver written in C into a PE32+ "
                       ".sys with the ziglang wheel's clang and WDK headers, or write a "
                       "template to start from.")
    _arguments(p)
    return p


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="FILE.c", help="the driver's C source (with --template: "
                   "the file to write)")
    p.add_argument("-o", "--output", metavar="FILE.sys",
                   help="the image to write (default: FILE.sys beside FILE.c)")
    p.add_argument("--template", action="store_true",
                   help="write a driver template to FILE.c instead of building")


def run(args: argparse.Namespace) -> int:
    """Run ``build-driver`` with parsed arguments: the exit status (errors: one line)."""
    try:
        if args.template:
            if args.output:
                raise BuildError("--template writes a source file: -o does not apply")
            path = write_template(Path(args.source))
            print(f"wrote {path}: build it with `emu build-driver {path}`")
        else:
            out = build(Path(args.source), Path(args.output) if args.output else None)
            print(f"built {out}")
    except BuildError as err:
        print(f"emu: error: {err}", file=sys.stderr)
        return err.status
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m emu.tools.build_driver``: the same as ``emu build-driver``."""
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:     # one line, not argparse's usage dump
            print(f"emu: error: {message}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE)

    p = Parser(prog="emu build-driver")
    _arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
