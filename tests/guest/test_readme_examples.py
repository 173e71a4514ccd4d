"""guest/README.md's reference results, run exactly as the table says (its options included):
each command prints the documented line."""

from __future__ import annotations

import re
from pathlib import Path

import emurun
import pytest

README = Path(__file__).resolve().parents[2] / "guest" / "README.md"
# | `sweep 3 2` (with `--mem 128M`) | `sweep checksum 102` |
ROW = re.compile(r"^\| `(?P<cmd>[a-z0-9 ]+)`(?: \(with `(?P<opts>[^`]+)`\))? \| "
                 r"`(?P<out>[^`]+)` \|$", re.MULTILINE)


def reference_rows() -> list[tuple[str, str, str]]:
    text = README.read_text()
    table = text[text.index("Reference results"):]
    table = table[:table.index("\n\n", table.index("| command"))]
    return [(m["cmd"], m["opts"] or "", m["out"]) for m in ROW.finditer(table)]


def test_the_table_is_read():
    assert ("sweep 3 2", "--mem 128M", "sweep checksum 102") in reference_rows()


@pytest.mark.parametrize("cmd, opts, out", reference_rows())
def test_reference_result(apps, cmd, opts, out):
    name, *args = cmd.split()
    r = emurun.emu("run", *opts.split(), str(apps / name), *args, timeout=300)
    assert (r.returncode, r.stdout, r.stderr) == (0, out + "\n", "")
