"""``emu build FILE.c`` (issue 15, item 3): a reader's own app or driver, built with the
pip-installed clang (ziglang) and no host compiler, then run on the machine. The kind comes
from the flag or from a DriverEntry in the source; every mistake is one line and a non-zero
exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pefile
import pytest
from elftools.elf.elffile import ELFFile

from emu.build import is_driver_source

EMU = [sys.executable, "-m", "emu"]
# The PATH of a machine without a C compiler: only this Python's own folder.
NO_CC = {**os.environ, "PATH": os.path.dirname(sys.executable)}
NO_CC.pop("CC", None)

APP = r"""
#include <emu/lib.h>
#include <emu/syscall.h>

/* DriverEntry is only named in this comment: still an app. */
static int twice(int x) { return 2 * x; }

int main(int argc, char **argv)
{
    printf("mine: %d args, first %s, %s\n", argc, argv[1], "DriverEntry(");
    return twice(21);
}
"""

DRIVER = r"""
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    DbgPrint("mydrv.sys: hello from %wZ\n", RegistryPath);
    return STATUS_SUCCESS;
}
"""


def emu(folder: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EMU, *argv], cwd=folder, capture_output=True, text=True,
                          env=NO_CC, timeout=300)


def test_the_compiler_is_hidden_from_these_tests():
    import shutil
    assert [shutil.which(cc, path=NO_CC["PATH"]) for cc in ("gcc", "cc", "clang")] == \
        [None, None, None]


def test_an_app_is_built_as_the_guest_apps_are_and_runs(tmp_path):
    (tmp_path / "mine.c").write_text(APP)
    built = emu(tmp_path, "build", "mine.c")
    assert (built.returncode, built.stdout) == (0, "built mine (app)\n"), built.stderr
    with open(tmp_path / "mine", "rb") as f:
        elf = ELFFile(f)
        assert (elf["e_type"], elf["e_machine"], elf["e_ident"]["EI_OSABI"]) == \
            ("ET_EXEC", "EM_X86_64", "ELFOSABI_SYSV")
        loads = [(s["p_vaddr"], s["p_flags"]) for s in elf.iter_segments()
                 if s["p_type"] == "PT_LOAD"]
        assert not any(s["p_type"] in ("PT_INTERP", "PT_DYNAMIC") for s in elf.iter_segments())
        # link/app.ld: R at 0x400000, then R X, then R W, each on its own page.
        assert loads[0] == (0x400000, 4) and [flags for _, flags in loads] == [4, 5, 6]
        assert all(vaddr % 0x1000 == 0 for vaddr, _ in loads)
        assert elf.get_section_by_name(".symtab").get_symbol_by_name("main")
    assert os.access(tmp_path / "mine", os.X_OK)
    ran = emu(tmp_path, "run", "mine", "first")
    assert (ran.returncode, ran.stdout) == (42, "mine: 2 args, first first, DriverEntry(\n")


APP32 = r"""
#include <emu/lib.h>
#include <emu/syscall.h>

int main(int argc, char **argv)
{
    unsigned long long big = 3000000000000ULL;   /* __udivdi3: lib32/divdi3.c */
    printf("mine32: %d args, %d-byte pointers, stack %s 2 GB, %llu, pid %u\n", argc,
           (int)sizeof(void *), (unsigned long)&argc < 0x80000000UL ? "below" : "above",
           big / (unsigned)argc, (unsigned)NtGetCurrentProcessId());
    return argc + 30;
}
"""


def test_a_32_bit_app_is_built_as_apps32_are_and_runs_in_compatibility_mode(tmp_path):
    (tmp_path / "mine32.c").write_text(APP32)
    built = emu(tmp_path, "build", "--app32", "mine32.c")
    assert (built.returncode, built.stdout) == (0, "built mine32 (32-bit app)\n"), built.stderr
    with open(tmp_path / "mine32", "rb") as f:
        elf = ELFFile(f)
        assert (elf.elfclass, elf["e_type"], elf["e_machine"], elf["e_ident"]["EI_OSABI"]) == \
            (32, "ET_EXEC", "EM_386", "ELFOSABI_SYSV")
        assert not any(s["p_type"] in ("PT_INTERP", "PT_DYNAMIC") for s in elf.iter_segments())
        loads = [(s["p_vaddr"], s["p_flags"]) for s in elf.iter_segments()
                 if s["p_type"] == "PT_LOAD"]
        # link/app32.ld: R at 0x400000, then R X, then R W, each on its own page.
        assert loads[0] == (0x400000, 4) and [flags for _, flags in loads] == [4, 5, 6]
        assert all(vaddr % 0x1000 == 0 for vaddr, _ in loads)
        symbols = elf.get_section_by_name(".symtab")
        assert symbols.get_symbol_by_name("main") and symbols.get_symbol_by_name("__udivdi3")
    assert os.access(tmp_path / "mine32", os.X_OK)
    ran = emu(tmp_path, "run", "mine32", "a", "b")
    assert (ran.returncode, ran.stdout) == (
        33, "mine32: 3 args, 4-byte pointers, stack below 2 GB, 1000000000000, pid 12\n"), \
        ran.stderr
    # -o names it; the same source built as a 64-bit app prints 8-byte pointers.
    (tmp_path / "bin").mkdir()
    assert emu(tmp_path, "build", "--app32", "mine32.c", "-o", "bin/m").stdout == \
        "built bin/m (32-bit app)\n"
    assert emu(tmp_path, "run", "bin/m").stdout.startswith("mine32: 1 args, 4-byte pointers")
    assert emu(tmp_path, "build", "mine32.c", "-o", "m64").returncode == 0
    assert emu(tmp_path, "run", "m64").stdout.startswith("mine32: 1 args, 8-byte pointers")


def test_a_32_bit_build_error_is_one_summary_line(tmp_path):
    (tmp_path / "bad32.c").write_text("int main(void)\n{\n    return missing;\n}\n")
    done = emu(tmp_path, "build", "--app32", "bad32.c")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines()[-1] == \
        "emu: error: bad32.c: compile failed (zig cc exit status 1)"
    assert "Traceback" not in done.stderr and not (tmp_path / "bad32").exists()


def test_a_driver_is_detected_by_its_driver_entry_and_loads(tmp_path, apps):
    (tmp_path / "mydrv.c").write_text(DRIVER)
    built = emu(tmp_path, "build", "mydrv.c")
    assert (built.returncode, built.stdout) == (0, "built mydrv.sys (driver)\n"), built.stderr
    image = pefile.PE(str(tmp_path / "mydrv.sys"))
    assert (image.OPTIONAL_HEADER.Subsystem, image.FILE_HEADER.Machine) == (1, 0x8664)
    ran = emu(tmp_path, "run", "--driver", "mydrv.sys", str(apps / "exitcode"), "7")
    assert ran.returncode == 7, ran.stderr
    assert ran.stdout.startswith("mydrv.sys: hello from \\Registry\\Machine\\System\\"
                                 "CurrentControlSet\\Services\\mydrv\n")


def test_the_flags_choose_the_kind_and_o_names_the_output(tmp_path):
    (tmp_path / "mydrv.c").write_text(DRIVER)
    (tmp_path / "out").mkdir()
    built = emu(tmp_path, "build", "--driver", "mydrv.c", "-o", "out/other.sys")
    assert (built.returncode, built.stdout) == (0, "built out/other.sys (driver)\n")
    assert (tmp_path / "out" / "other.sys").read_bytes()[:2] == b"MZ"
    # Forced to be an app, a driver's source does not link (no main, no ntoskrnl).
    forced = emu(tmp_path, "build", "--app", "mydrv.c")
    assert forced.returncode == 1 and not (tmp_path / "mydrv").exists()
    assert forced.stderr.splitlines()[-1].startswith("emu: error: mydrv.c: ")


@pytest.mark.parametrize(("text", "driver"), [
    ("NTSTATUS DriverEntry(PDRIVER_OBJECT d, PUNICODE_STRING r) { return 0; }", True),
    ("NTSTATUS\nDriverEntry (PDRIVER_OBJECT d, PUNICODE_STRING r);", True),
    ("// DriverEntry(\nint main(void) { return 0; }", False),
    ("/* DriverEntry(d, r) */ int main(void) { return 0; }", False),
    ('int main(void) { puts("DriverEntry("); return 0; }', False),
    ("int MyDriverEntry(void); int main(void) { return 0; }", False),
])
def test_a_driver_is_a_source_naming_driver_entry_outside_comments(text, driver):
    assert is_driver_source(text) is driver


def test_a_compile_error_shows_the_compiler_and_one_summary_line(tmp_path):
    (tmp_path / "bad.c").write_text("int main(void)\n{\n    return missing;\n}\n")
    done = emu(tmp_path, "build", "bad.c")
    assert done.returncode == 1 and done.stdout == ""
    assert "bad.c:3:12: error: use of undeclared identifier 'missing'" in done.stderr
    assert done.stderr.splitlines()[-1] == \
        "emu: error: bad.c: compile failed (zig cc exit status 1)"
    assert "Traceback" not in done.stderr and not (tmp_path / "bad").exists()


def test_a_link_error_names_the_link(tmp_path):
    (tmp_path / "nolink.c").write_text("int absent(void);\nint main(void) { return absent(); }\n")
    done = emu(tmp_path, "build", "nolink.c")
    assert done.returncode == 1
    assert "absent" in done.stderr
    assert done.stderr.splitlines()[-1] == \
        "emu: error: nolink.c: link failed (zig cc exit status 1)"


@pytest.mark.parametrize(("argv", "line"), [
    (["build", "absent.c"], "emu: error: absent.c: no such file"),
    (["build", "notc.txt"], "emu: error: notc.txt: not a C file (the name must end in .c)"),
    (["build", "ok.c", "-o", "nodir/ok"], "emu: error: -o nodir/ok: no such directory nodir"),
    (["build", "ok.c", "-o", "adir"], "emu: error: -o adir: is a directory"),
    (["build", "ok.c", "-o", "ok.c"], "emu: error: -o ok.c: the same file as the source"),
    (["build", "--driver", "ok.c", "-o", "ok.bin"],
     "emu: error: ok.bin: a driver's name ends in .sys"),
    (["build", "--app", "--driver", "ok.c"],
     "emu: error: argument --driver: not allowed with argument --app"),
    (["build", "--app32", "--driver", "ok.c"],
     "emu: error: argument --driver: not allowed with argument --app32"),
    (["build", "--driver", "--app32", "ok.c"],
     "emu: error: argument --app32: not allowed with argument --driver"),
    (["build", "--app", "--app32", "ok.c"],
     "emu: error: argument --app32: not allowed with argument --app"),
    (["build"], "emu: error: the following arguments are required: FILE.c"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, argv, line):
    (tmp_path / "ok.c").write_text("int main(void) { return 0; }\n")
    (tmp_path / "notc.txt").write_text("int main(void) { return 0; }\n")
    (tmp_path / "adir").mkdir()
    done = emu(tmp_path, *argv)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", line + "\n")


def test_an_output_the_system_refuses_is_one_line(tmp_path):
    # /proc takes no new files: refused before the build (no permission) or when the
    # image is written (root may pass the permission check).
    (tmp_path / "ok.c").write_text("int main(void) { return 0; }\n")
    done = emu(tmp_path, "build", "ok.c", "-o", "/proc/emu-build-out")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("emu: error: -o /proc/emu-build-out: cannot write ")


def test_without_ziglang_the_build_is_one_line(tmp_path):
    (tmp_path / "ok.c").write_text("int main(void) { return 0; }\n")
    done = subprocess.run([sys.executable, "-c", "import sys; sys.modules['ziglang'] = None; "
                           "from emu.cli import main; sys.exit(main(['build', 'ok.c']))"],
                          cwd=tmp_path, capture_output=True, text=True, env=NO_CC, timeout=300)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"emu: error: {sys.executable} has no ziglang: install it into this "
                           "Python (pip install ziglang, or make setup in the repository)\n")
