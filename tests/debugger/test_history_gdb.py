"""gdb's ``monitor history events`` under ``emu run --gdb``, and a crash dump's refusal."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import emurun

ROOT = Path(__file__).resolve().parents[2]
APPS = Path("guest") / "build" / "apps"
SLOW = ["--driver", str(Path("guest") / "build" / "drivers" / "slowneither.sys"),
        str(APPS / "slowread"), r"\Device\SlowNeither", "--", str(APPS / "victim")]


def test_monitor_history_events_under_emu_run_gdb():
    gdb_path = shutil.which("gdb")
    assert gdb_path is not None, "gdb must be on PATH (README: make test needs it)"
    emu = subprocess.Popen([sys.executable, "-m", "emu", "run", "--gdb", "127.0.0.1:0", *SLOW],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=ROOT)
    try:
        line = emu.stderr.readline()
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1)
        gdb = subprocess.run(
            [gdb_path, "-nx", "-batch", "-iex", "set debuginfod enabled off",
             "-ex", f"target remote 127.0.0.1:{port}",
             "-ex", "monitor history events process-create",
             "-ex", "monitor history events nmi", "-ex", "continue"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "LC_ALL": "C"})
        out = gdb.stdout + gdb.stderr
        emu.communicate(timeout=120)
    finally:
        emu.kill()
    assert 'process-create: process 12 "slowread" created (args: \\Device\\SlowNeither)' in out
    assert 'process-create: process 20 "victim" created' in out
    assert "2 events of kind process-create from boot to position 0" in out
    assert "error: no event kind 'nmi'" in out
    assert emu.returncode == 0


def test_a_crash_dump_has_no_history(apps, tmp_path):
    dump = tmp_path / "crash.dmp"
    r = emurun.emu("run", "--dump", dump, "--driver",
                   ROOT / "guest" / "build" / "drivers" / "crash.sys", apps / "hello", cwd=ROOT,
                   timeout=120)
    assert r.returncode == 126
    r = emurun.emu("debug", "--dump", dump, input="history events\n", cwd=ROOT, timeout=120)
    assert "error: no event history here: it is kept for a machine started by emu debug " \
        "or emu run --gdb (a crash dump has none)" in r.stdout
    assert r.returncode == 1
