"""Your own driver (issue 12, item 8), exactly as docs/drivers.md says: in an empty folder
outside the repository, ``emu build-driver --template mydrv.c`` writes a driver,
``emu build-driver mydrv.c`` builds mydrv.sys, and ``emu run --driver mydrv.sys devioctl``
talks to it. Each mistake gets one line and a non-zero exit status, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import emurun
import pefile
import pytest

from emu.tools import build_driver

ROOT = Path(__file__).resolve().parents[2]


def emu(folder: Path, *argv: str) -> subprocess.CompletedProcess:
    """``python -m emu ARGV`` in ``folder``, in a fork of this process (tests/emurun.py)."""
    return emurun.emu(*argv, cwd=folder)


def test_template_build_and_run_from_any_folder(tmp_path, apps):
    wrote = emu(tmp_path, "build-driver", "--template", "mydrv.c")
    assert (wrote.returncode, wrote.stderr) == (0, "")
    assert wrote.stdout == "wrote mydrv.c: build it with `emu build-driver mydrv.c`\n"
    built = emu(tmp_path, "build-driver", "mydrv.c")
    assert (built.returncode, built.stdout) == (0, "built mydrv.sys\n"), built.stderr
    image = pefile.PE(str(tmp_path / "mydrv.sys"))
    assert image.OPTIONAL_HEADER.Subsystem == 1                    # native
    assert image.FILE_HEADER.Machine == 0x8664
    imported = {entry.dll.decode().lower() for entry in image.DIRECTORY_ENTRY_IMPORT}
    assert imported == {"ntoskrnl.exe"}
    ran = emu(tmp_path, "run", "--driver", "mydrv.sys", str(apps / "devioctl"), "\\??\\mydrv",
              "0x222000", "hello")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == ("mydrv.sys: loaded, \\Device\\mydrv and \\??\\mydrv\n"
                          "status 0x00000000\n"
                          "returned 6 bytes\n"
                          "output: HELLO\\x00\n"
                          "mydrv.sys: unloaded\n")
    # No IRP_MJ_READ routine: the I/O manager's default answers.
    read = emu(tmp_path, "run", "--driver", "mydrv.sys", str(apps / "devread"), "\\??\\mydrv")
    assert "status 0xc0000010\n" in read.stdout


def test_an_output_name_and_the_module_form(tmp_path, apps):
    assert emu(tmp_path, "build-driver", "--template", "other.c").returncode == 0
    (tmp_path / "out").mkdir()
    done = subprocess.run([sys.executable, "-m", "emu.tools.build_driver", "other.c", "-o",
                           "out/renamed.sys"], cwd=tmp_path, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "built out/renamed.sys\n"), done.stderr
    ran = emu(tmp_path, "run", "--driver", "out/renamed.sys", str(apps / "devioctl"),
              "\\??\\other", "0x222000", "abc")
    assert "output: ABC\\x00\n" in ran.stdout


def test_a_compile_error_shows_the_compiler_s_message(tmp_path):
    (tmp_path / "bad.c").write_text("#include <ntddk.h>\nint x = y;\n")
    done = emu(tmp_path, "build-driver", "bad.c")
    assert done.returncode == 1
    assert "bad.c:2:9: error: use of undeclared identifier 'y'" in done.stderr
    assert done.stderr.splitlines()[-1] == \
        "emu: error: bad.c: compile failed (zig cc exit status 1)"
    assert "Traceback" not in done.stderr and not (tmp_path / "bad.sys").exists()


@pytest.mark.parametrize(("argv", "line"), [
    (("build-driver", "nope.c"), "emu: error: nope.c: no such file"),
    (("build-driver", "there.c", "-o", "no/such/x.sys"),
     "emu: error: no/such/x.sys: no such folder no/such"),
    (("build-driver", "there.c", "-o", "x.dll"), "emu: error: x.dll: a driver's name ends in .sys"),
    (("build-driver", "notes.txt"), "emu: error: notes.txt: not a C file (the name must end "
     "in .c)"),
    (("build-driver", "--template", "there.c"),
     "emu: error: there.c: already exists (not overwritten)"),
    (("build-driver", "--template", "9lives.c"),
     "emu: error: 9lives.c: the name must be a C identifier (letters, digits, _), as it names "
     "the device and the control code"),
    (("build-driver", "--template", "t.c", "-o", "t.sys"),
     "emu: error: --template writes a source file: -o does not apply"),
    (("build-driver",), "emu: error: the following arguments are required: FILE.c"),
])
def test_bad_input_is_one_line(tmp_path, argv, line):
    (tmp_path / "there.c").write_text("/* a file */\n")
    (tmp_path / "notes.txt").write_text("notes\n")
    done = emu(tmp_path, *argv)
    assert (done.returncode, done.stderr, done.stdout) == (2, line + "\n", "")


def test_no_ziglang_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "d.c").write_text("/* a driver */\n")
    monkeypatch.setitem(sys.modules, "ziglang", None)              # import ziglang fails
    assert build_driver.main([str(tmp_path / "d.c")]) == 2
    err = capsys.readouterr().err
    assert err == (f"emu: error: {sys.executable} has no ziglang: install it into this "
                   "Python (pip install ziglang, or make setup in the repository)\n")


def test_the_template_ships_in_the_package():
    from importlib import resources

    text = resources.files("emu.templates").joinpath("driver.c").read_text()
    for needed in ("DriverEntry", "IoCreateDevice", "IoCreateSymbolicLink", "IRP_MJ_CREATE",
                   "IRP_MJ_CLOSE", "IRP_MJ_DEVICE_CONTROL", "METHOD_BUFFERED",
                   "DriverUnload", "#include <ntddk.h>"):
        assert needed in text
    assert "templates/*.c" in (ROOT / "pyproject.toml").read_text()
