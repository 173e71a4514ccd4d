"""An install without a compiler (issue 15, item 3): ``python -m build --wheel`` makes a wheel
that carries the built guests and emu/hw/_native.so; installed by pip into a fresh virtual
environment, with no C compiler on PATH and outside the checkout, it plays the whole tour,
runs its guests, and ``emu build`` builds and runs a reader's own app and driver.

The fresh environment gets emu from the wheel alone (pip installs it, ``--no-deps``); the
third-party packages the wheel requires (its Requires-Dist with the ``guest`` extra, and
theirs) are the project's own, linked into a folder its site-packages names in a .pth file,
and ``pip check`` confirms they satisfy the wheel's requirements. That keeps the test offline
and fast (ziglang alone is 400 MB installed) without letting the checkout's emu in: the
project's editable install (its .pth and finder) is not in that folder.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from emu import guests

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("private-address-spaces", "private-handles", "app-crash-is-contained",
             "kernel-addresses-are-protected", "privileged-instructions",
             "driver-crash-is-fatal", "shared-kernel-space", "arbitrary-thread-context",
             "paging-to-disk", "address-limits")
TAG = "py3-none-" + sysconfig.get_platform().replace("-", "_").replace(".", "_")


def run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=600, **kwargs)


# Over 5 s on this 2-core machine, once for the module: `python -m build` makes the sdist and
# the wheel from it, then pip installs the wheel into a fresh virtual environment (venv).
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from the checkout (its guests built by make all) as the README says:
    ``python -m build`` (the sdist, then the wheel from it)."""
    out = tmp_path_factory.mktemp("dist")
    done = run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out], cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [p.name for p in out.glob("*.tar.gz")] == ["emu-0.1.0.tar.gz"]
    (built,) = out.glob("*.whl")
    return built


def requirements(metadata: str, extras: set[str]) -> list[Requirement]:
    """The Requires-Dist of ``metadata`` that apply here with ``extras`` asked for."""
    found = []
    for line in email.parser.Parser().parsestr(metadata).get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({**default_environment(),
                                                          "extra": extra})
                                     for extra in {"", *extras}):
            found.append(req)
    return found


def link_dependencies(metadata: str, folder: Path) -> list[str]:
    """Link into ``folder`` every installed distribution the wheel needs (with its ``guest``
    extra), and theirs: their top-level modules and .dist-info. Their names."""
    todo, done = requirements(metadata, {"guest"}), []
    while todo:
        req = todo.pop()
        dist = importlib.metadata.distribution(req.name)
        name = dist.metadata["Name"].lower()
        if name in done or name == "emu":
            continue
        assert dist.version in req.specifier, (req, dist.version)
        done.append(name)
        site = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or () if not str(f).startswith("..")}:
            if top != "__pycache__" and not (folder / top).exists():
                (folder / top).symlink_to(site / top)
        todo += requirements(dist.read_text("METADATA") or "", set(req.extras))
    return done


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed by pip."""
    home = tmp_path_factory.mktemp("venv")
    env = home / "env"
    done = run([sys.executable, "-m", "venv", "--without-pip", env])
    assert done.returncode == 0, done.stderr
    python = env / "bin" / "python"
    done = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                "--no-index", "--no-cache-dir", wheel])
    assert done.returncode == 0, done.stdout + done.stderr
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read("emu-0.1.0.dist-info/METADATA").decode()
    deps = home / "deps"
    deps.mkdir()
    assert {"unicorn", "capstone", "pyelftools", "pefile", "purepdb", "ziglang"} <= \
        set(link_dependencies(metadata, deps))
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_path('platlib'))"])
    (Path(site.stdout.strip()) / "emu-test-deps.pth").write_text(f"{deps}\n")
    check = run([sys.executable, "-m", "pip", "--python", python, "check"])
    assert (check.returncode, check.stdout) == (0, "No broken requirements found.\n"), \
        check.stdout + check.stderr
    return env


def compilerless(venv: Path) -> dict:
    """The environment of a machine without a C compiler: PATH is the venv's bin alone."""
    environ = {"PATH": str(venv / "bin"), "HOME": os.path.expanduser("~"), "LANG": "C.UTF-8"}
    for cc in ("gcc", "cc", "clang", "zig"):
        assert shutil.which(cc, path=environ["PATH"]) is None, cc
    return environ


@pytest.fixture
def no_compiler(venv) -> dict:
    """The environment of a machine without a C compiler (compilerless)."""
    return compilerless(venv)


TOUR = "emu-venv/bin/emu scenario run --all --out tour"     # the README's tour command


# Over 5 s on this 2-core machine, once for the module: the whole tour with its pages, from
# the installed wheel in a fresh interpreter (nothing of the checkout's emu imported). The
# README's commands and the tour's own test read this one run (the same command, the same
# environment) instead of playing it twice.
@pytest.fixture(scope="module")
def wheel_tour(venv, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's tour command run once without a compiler: (its folder, the run)."""
    here = tmp_path_factory.mktemp("tour")
    (here / "emu-venv").symlink_to(venv)             # the environment the wheel went into
    return here, run(["/bin/sh", "-c", TOUR], env=compilerless(venv), cwd=here)


def test_the_wheel_carries_the_guests_and_the_native_library(wheel):
    assert wheel.name == f"emu-0.1.0-{TAG}.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "Root-Is-Purelib: false\n" in z.read("emu-0.1.0.dist-info/WHEEL").decode()
    built_apps = {p.name for p in (ROOT / "guest" / "build" / "apps").iterdir()}
    assert {n.removeprefix("emu/_guest/build/apps/") for n in names
            if n.startswith("emu/_guest/build/apps/")} == built_apps
    assert {"hello", "hello-pie", "hello32", "badread"} <= built_apps
    drivers = sorted(p.stem for p in (ROOT / "guest" / "drivers-pe").glob("*.c"))
    for name in drivers:
        assert f"emu/_guest/build/drivers/{name}.sys" in names
        assert f"emu/_guest/build/drivers/{name}.pdb" in names
    assert not any(n.endswith(".lib") or "/build/pe/" in n or "zig-cache" in n for n in names)
    for path in ("include/emu/lib.h", "include/emu/syscall.h", "lib/crt0.S", "lib/printf.c",
                 "lib/syscall.S", "link/app.ld", "apps/hello.c", "drivers-pe/pehello.c",
                 "lib32/crt0.S", "lib32/syscall.S", "lib32/divdi3.c", "link/app32.ld"):
        assert f"emu/_guest/{path}" in names, path
    assert "emu/hw/_native.so" in names and "emu/hw/native.c" not in names
    assert "emu/templates/driver.c" in names
    assert not any("__pycache__" in n for n in names)


def source_copy(folder: Path, built: bool) -> Path:
    """A copy of the checkout's sources in ``folder``: with its built guests and _native.so
    when ``built``, else nothing built."""
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "_native*.so", "build")
    for name in ("emu", "guest"):
        shutil.copytree(ROOT / name, folder / name, ignore=junk)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "Makefile"):
        shutil.copy2(ROOT / name, folder / name)
    if built:
        shutil.copytree(ROOT / "guest" / "build" / "apps", folder / "guest" / "build" / "apps")
        shutil.copytree(ROOT / "guest" / "build" / "drivers",
                        folder / "guest" / "build" / "drivers",
                        ignore=shutil.ignore_patterns("*.lib"))
        shutil.copy2(ROOT / "emu" / "hw" / "_native.so", folder / "emu" / "hw" / "_native.so")
    return folder


def build_in(folder: Path) -> str:
    """``python -m build --wheel`` in ``folder``, refused: what it printed."""
    done = run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                folder / "dist"], cwd=folder)
    assert done.returncode != 0 and not list((folder / "dist").glob("*.whl"))
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout + done.stderr


def test_the_wheel_is_not_built_without_the_guests(tmp_path):
    said = build_in(source_copy(tmp_path, built=False))
    assert "error: guest/build/apps/asyncread is missing (and " in said
    assert "more): the wheel carries the built guests and emu/hw/_native.so: run `make all` " \
        "first" in said


def test_the_wheel_is_not_built_from_stale_guests(tmp_path):
    folder = source_copy(tmp_path, built=True)
    later = (folder / "guest" / "build" / "apps" / "hello").stat().st_mtime + 10
    os.utime(folder / "guest" / "apps" / "hello.c", (later, later))
    said = build_in(folder)
    # hello and hello-pie are both made from hello.c.
    assert "error: guest/build/apps/hello is older than guest/apps/hello.c (and 1 more): " \
        "the wheel carries the built guests and emu/hw/_native.so: run `make all` first" in said


def test_the_installed_emu_is_the_wheel_s(venv, no_compiler, tmp_path):
    shown = run([venv / "bin" / "python", "-c", "import emu, emu.guests, emu.nt.fs; "
                 "print(emu.__file__); print(emu.guests.root()); print(emu.nt.fs.DEFAULT_ROOT)"],
                env=no_compiler, cwd=tmp_path)
    package = Path(shown.stdout.split()[0]).parent
    assert package.is_relative_to(venv) and ROOT not in package.parents
    assert shown.stdout.split()[1:] == [str(package / "_guest"),
                                        str(package / "_guest" / "build" / "apps")]
    assert guests.root() == ROOT / "guest"          # while the checkout's own is the checkout's


def test_the_tour_plays_from_the_wheel_without_a_compiler(wheel_tour):
    tmp_path, done = wheel_tour     # the whole tour with its pages, from the installed wheel
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.endswith("Pictures: tour/index.html\n"
                                "The tour: 10 scenarios, 10 held their claims.\n")
    index = (tmp_path / "tour" / "index.html").read_text()
    for name in SCENARIOS:
        assert f'href="{name}.html"' in index
        page = (tmp_path / "tour" / f"{name}.html").read_text()
        assert "<svg" in page and '<p class="held">The claim holds.</p>' in page


def test_the_wheel_s_guests_run_and_read_its_file_system(venv, no_compiler, tmp_path):
    apps = Path(run([venv / "bin" / "python", "-c", "import emu.guests; "
                     "print(emu.guests.apps_dir())"], env=no_compiler).stdout.strip())
    hello = run([venv / "bin" / "emu", "run", apps / "hello", "a"], env=no_compiler,
                cwd=tmp_path)
    assert (hello.returncode, hello.stdout) == (0, "Hello, world!\nargv[1] = a\n")
    # The default --fs is the wheel's apps folder: reader reads its hello.
    data = (apps / "hello").read_bytes()
    read = run([venv / "bin" / "emu", "run", apps / "reader", "hello"], env=no_compiler,
               cwd=tmp_path)
    assert read.stdout.splitlines()[:2] == [f"read {len(data)} bytes", f"sum {sum(data)}"]
    # Bare names: the wheel's own guests.
    loaded = run([venv / "bin" / "emu", "run", "--driver", "pehello", "exitcode", "5"],
                 env=no_compiler, cwd=tmp_path)
    assert loaded.returncode == 5, loaded.stderr
    assert loaded.stdout.startswith("pehello.sys: DriverEntry, registry path ")
    crash = run([venv / "bin" / "emu", "run", "badread"], env=no_compiler, cwd=tmp_path)
    assert crash.returncode == 125
    assert crash.stderr.startswith('process 12 "badread" terminated: STATUS_ACCESS_VIOLATION')


APP = r"""
#include <emu/lib.h>

int main(int argc, char **argv)
{
    printf("my own app: %s\n", argc > 1 ? argv[1] : "-");
    return 7;
}
"""

DRIVER = r"""
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    DbgPrint("mydrv.sys: my own driver\n");
    return STATUS_SUCCESS;
}
"""


def test_emu_build_from_the_wheel_builds_an_app_and_a_driver_that_run(venv, no_compiler,
                                                                        tmp_path):
    (tmp_path / "mine.c").write_text(APP)
    (tmp_path / "mydrv.c").write_text(DRIVER)
    emu = venv / "bin" / "emu"
    app = run([emu, "build", "mine.c"], env=no_compiler, cwd=tmp_path)
    assert (app.returncode, app.stdout) == (0, "built mine (app)\n"), app.stderr
    driver = run([emu, "build", "mydrv.c"], env=no_compiler, cwd=tmp_path)
    assert (driver.returncode, driver.stdout) == (0, "built mydrv.sys (driver)\n"), \
        driver.stderr
    ran = run([emu, "run", "--driver", "mydrv.sys", "mine", "hi"], env=no_compiler,
              cwd=tmp_path)
    assert (ran.returncode, ran.stdout) == (7, "mydrv.sys: my own driver\nmy own app: hi\n"), \
        ran.stderr
    # The same app as a 32-bit one (emu build --app32): the wheel's lib32 and link/app32.ld.
    app32 = run([emu, "build", "--app32", "mine.c", "-o", "mine32"], env=no_compiler,
                cwd=tmp_path)
    assert (app32.returncode, app32.stdout) == (0, "built mine32 (32-bit app)\n"), app32.stderr
    assert (tmp_path / "mine32").read_bytes()[:5] == b"\x7fELF\x01"      # ELFCLASS32
    ran32 = run([emu, "run", "mine32", "hi32"], env=no_compiler, cwd=tmp_path)
    assert (ran32.returncode, ran32.stdout) == (7, "my own app: hi32\n"), ran32.stderr


def emu_here(folder: Path, *argv) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "emu", *argv], cwd=folder)


def test_a_bare_name_is_a_built_guest_unless_a_file_of_that_name_is_here(tmp_path):
    assert guests.find("apps", "hello") == ROOT / "guest" / "build" / "apps" / "hello"
    assert guests.find("drivers", "pehello") == guests.find("drivers", "pehello.sys") == \
        ROOT / "guest" / "build" / "drivers" / "pehello.sys"
    for kind, name in (("apps", "nosuch"), ("apps", "../apps/hello"), ("drivers", "..")):
        with pytest.raises(guests.GuestNotFound, match="no such file"):
            guests.find(kind, name)
    ran = emu_here(tmp_path, "run", "--driver", "pehello.sys", "hello", "x", "--", "exitcode")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[1:] == ["Hello, world!", "argv[1] = x"]
    # A file of that name in the current folder wins; a path with "/" is only a path.
    shutil.copy(ROOT / "guest" / "build" / "apps" / "exitcode", tmp_path / "hello")
    assert emu_here(tmp_path, "run", "hello", "9").returncode == 9
    missing = emu_here(tmp_path, "run", "./badread")
    assert (missing.returncode, missing.stderr) == (2, "emu: error: badread: no such file\n")
    # emu debug and emu query take the same names.
    build = ROOT / "guest" / "build"
    debug = run([sys.executable, "-m", "emu", "debug", "--driver", "pehello", "exitcode", "4"],
                cwd=tmp_path, input="continue\n")
    assert debug.stdout.splitlines()[:2] == [
        "pehello.sys: DriverEntry, registry path \\Registry\\Machine\\System\\"
        "CurrentControlSet\\Services\\pehello",
        'process 12 "exitcode" stopped at its entry point exitcode!_start, ring 3'], \
        debug.stdout + debug.stderr
    query = ["query", "write", "0x403000", "8", "--pid", "12", "--driver"]
    by_name = emu_here(tmp_path, *query, "pehello", "echo", "a")
    by_path = emu_here(tmp_path, *query, build / "drivers" / "pehello.sys",
                       build / "apps" / "echo", "a")
    assert by_name.returncode == 0 and (by_name.stdout, by_name.stderr) == \
        (by_path.stdout, by_path.stderr)
    unknown = emu_here(tmp_path, "run", "--driver", "nosuch", "exitcode")
    assert (unknown.returncode, unknown.stderr) == (2, "emu: error: nosuch: no such file\n")


def readme_install_block() -> list[str]:
    """The commands of the README's "Without a compiler" block run on the compiler-less
    machine."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Without a compiler"):readme.index("## The tour")]
    blocks = section.split("```sh\n")[1:]
    return [line for line in blocks[1].split("```")[0].splitlines() if line.strip()]


def test_the_readme_s_commands_work_from_the_wheel(wheel, venv, no_compiler, tmp_path,
                                                   wheel_tour):
    venv_line, pip_line, *rest = readme_install_block()
    assert venv_line == "python3 -m venv emu-venv"
    assert pip_line == f"emu-venv/bin/pip install 'dist/{wheel.name}[guest]'"
    (tmp_path / "emu-venv").symlink_to(venv)        # the environment the wheel went into
    commands = [line.split("  #")[0].strip() for line in rest]
    assert TOUR in commands
    outputs = []
    for line, command in zip(rest, commands, strict=True):
        if command == TOUR:         # the tour's one run in the module, with its folder
            tour_folder, done = wheel_tour
        else:
            done = run(["/bin/sh", "-c", command], env=no_compiler, cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
        outputs.append(done.stdout)
        comment = line.split("  # ")[1].strip() if "  # " in line else ""
        if comment.startswith(("built ", "mine")):
            assert done.stdout == comment + "\n", command
    assert outputs[1] == "Hello, world!\nargv[1] = a\nargv[2] = b\n"
    assert (tour_folder / "tour" / "index.html").is_file()
