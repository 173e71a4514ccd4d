"""guest/README.md's "Building your own app or driver outside the tree", run exactly as
written: its C files are written into an empty folder, its shell blocks run there (with EMU
set to this repository), and each run prints the lines the README shows after it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "guest" / "README.md").read_text()
BLOCK = re.compile(r"^```(c|sh)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def section() -> str:
    start = README.index("## Building your own app or driver outside the tree")
    return README[start:README.index("\n## ", start + 1)]


def test_the_recipe_builds_and_runs_an_app_a_32_bit_app_and_a_driver(apps, tmp_path):
    blocks = BLOCK.findall(section())
    assert [kind for kind, _ in blocks] == ["c", "sh", "sh", "c", "sh"]
    env = {**os.environ, "EMU": str(ROOT)}
    shell = ""
    for kind, text in blocks:
        if kind == "c":
            name = re.match(r"/\* (\S+\.c) \*/\n", text).group(1)
            (tmp_path / name).write_text(text)
            continue
        shell += text          # each block again with those before it (their variables)
        expected = [line[2:] for line in text.splitlines() if line.startswith("# ")]
        r = subprocess.run(["bash", "-e", "-c", shell], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-len(expected):] == expected, r.stdout
    assert {p.name for p in tmp_path.iterdir()} >= {"myapp", "myapp32", "mydrv.sys"}
