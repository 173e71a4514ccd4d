"""Where `emu debug` takes its snapshots (docs/debugger.md, "Going back"): `interval` after
the newest one, the spacing doubling while the machine runs on without a stop, up to 16
intervals; a stop brings it back to `interval`; going back adds one `interval` before the
target. Positions only: the same script gives the same snapshots, as `info snapshots` says."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import emurun

ROOT = Path(__file__).resolve().parents[2]
LOOP = str(Path("guest") / "build" / "apps" / "loop")


def debug(script: str, *args: str) -> subprocess.CompletedProcess:
    """``emu debug ARGS`` with ``script`` on standard input (batch mode), in a fork of this
    process (tests/emurun.py)."""
    return emurun.emu("debug", *args, input=script, cwd=ROOT, timeout=120)


def debug_process(script: str, *args: str) -> subprocess.CompletedProcess:
    """``debug`` in a subprocess: a fresh interpreter (its own hash seed)."""
    return subprocess.run([sys.executable, "-m", "emu", "debug", *args], input=script,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def snapshot_lists(out: str) -> list[list[str]]:
    """Each `info snapshots` answer, its memory figures dropped (they are the host's)."""
    answers = out.split(") info snapshots\n")[1:]
    return [[re.sub(r"\s+\d+ KiB of its own$", "", line)
             for line in answer.split("(emu", 1)[0].splitlines()] for answer in answers]


HEADER_1000 = ("of at most 20 snapshots, one every 1000 instructions after a stop, the spacing "
               "doubling while the machine runs on, up to 16000 (older positions: "
               "re-executed from boot)")


def test_a_long_run_snapshots_at_a_doubling_spacing_and_going_back_adds_one_near():
    r = debug("position\nsi 100000\ninfo snapshots\nrsi 1\nposition\ninfo snapshots\n",
              "--snapshot-interval", "1000", "--snapshots", "20", LOOP, "100000")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 instruction or exception since boot" in r.stdout      # the entry point
    first, back = snapshot_lists(r.stdout)
    # From position 1: 1,000 after boot, then gaps of 1,000, 2,000, 4,000, 8,000 and
    # 16,000 (the cap) while `si 100000` runs on.
    assert first == [f"10 {HEADER_1000}",
                     *(f"  at position {p}" for p in
                       (1000, 2000, 4000, 8000, 16000, 32000, 48000, 64000, 80000, 96000)),
                     "  the next at position 97000"]      # the stop: 1,000 after the newest
    # rsi 1 to 100,000 resumes the snapshot at 96,000: it forks again there (it is used
    # up), at 97,000, and once at 99,000, 1,000 before the target (not also at 99,000 by
    # the doubling spacing, which would be closer than 1,000 to it).
    assert "100000 instructions and exceptions since boot" in r.stdout
    assert back == [f"12 {HEADER_1000}",
                    *(f"  at position {p}" for p in
                      (1000, 2000, 4000, 8000, 16000, 32000, 48000, 64000, 80000, 96000,
                       97000, 99000)),
                    "  the next at position 100000"]


def test_a_stop_brings_the_spacing_back_and_the_ring_keeps_the_newest():
    r = debug("si 100000\nsi 10\nsi 5000\ninfo snapshots\n",
              "--snapshot-interval", "1000", "--snapshots", "4", LOOP, "100000")
    assert r.returncode == 0, r.stdout + r.stderr
    (answer,) = snapshot_lists(r.stdout)
    # At 100,001, after a run that last snapshotted at 96,000, the next run (si 10)
    # snapshots at once; its stop at 100,011 keeps the spacing at 1,000, so `si 5000`
    # snapshots at 101,001, then 1,000 and 2,000 apart; its stop at 105,011 makes the next
    # due 1,000 after the newest. At most 4 are kept: the oldest went first.
    assert answer == [
        "4 of at most 4 snapshots, one every 1000 instructions after a stop, the spacing "
        "doubling while the machine runs on, up to 16000 (older positions: re-executed "
        "from boot)",
        "  at position 100001", "  at position 101001", "  at position 102001",
        "  at position 104001", "  the next at position 105001"]


def test_the_same_script_takes_the_same_snapshots_and_lands_in_the_same_state():
    script = ("break printf\ncontinue\nrsi 3\ninfo snapshots\nregisters\nsi 2\nrsi 1\n"
              "info snapshots\nposition\n")
    args = ("--snapshot-interval", "2000", LOOP, "30000")
    one, two = debug(script, *args), debug_process(script, *args)
    plain = debug(script, "--snapshots", "0", LOOP, "30000")
    assert one.returncode == two.returncode == plain.returncode == 0, one.stdout
    assert snapshot_lists(one.stdout) == snapshot_lists(two.stdout)
    strip = [line for line in one.stdout.splitlines() if "KiB of its own" not in line]
    assert strip == [line for line in two.stdout.splitlines()
                     if "KiB of its own" not in line]
    # Going back through snapshots or from boot: the same transcript apart from the list.
    no_info = re.compile(r"\) info snapshots\n.*?(?=\(emu)", re.S)
    assert no_info.sub(") ", one.stdout) == no_info.sub(") ", plain.stdout)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_going_back_when_the_snapshots_were_killed_from_outside_re_executes_from_boot():
    proc = subprocess.Popen([sys.executable, "-m", "emu", "debug", "--snapshot-interval",
                             "1000", LOOP, "3000"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        proc.stdin.write("si 10000\nposition\n")
        proc.stdin.flush()
        while not proc.stdout.readline().endswith(" since boot\n"):
            pass
        snapshots = children(proc.pid)
        assert len(snapshots) == 4                 # at 1,000, 2,000, 4,000 and 8,000
        for pid in snapshots:                      # the host's OOM killer, say
            os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate("rsi 4000\nposition\nregisters rip rsp\n", timeout=120)
    finally:
        proc.kill()
        proc.wait()
    plain = debug("si 6000\nposition\nregisters rip rsp\n", "--snapshots", "0", LOOP, "3000")
    assert "Traceback" not in out
    assert out.split(") rsi 4000\n")[1].split("(emu", 1)[0] == \
        plain.stdout.split(") si 6000\n")[1].split("(emu", 1)[0]
    assert "6001 instructions and exceptions since boot" in out
    assert after_position(out) == after_position(plain.stdout)


def after_position(out: str) -> str:
    return out.rsplit(") position\n", 1)[1]
