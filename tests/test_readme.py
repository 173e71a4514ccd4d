"""The README's examples are true for the current build: the Debugging block's prompts
(every address shown) and the badread fault line are what the machine prints."""

from __future__ import annotations

import re
from pathlib import Path

import emurun

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PROMPT = re.compile(r"^\(emu pid \d+ ring \d 0x[0-9a-f]+\) (.*)$", re.MULTILINE)


def debugging_block() -> tuple[str, list[str]]:
    """The README's ``emu debug`` command and its prompt lines."""
    section = README[README.index("## Debugging"):]
    block = section[section.index("```sh") + 6:section.index("```\n", 6)]
    first, *rest = block.strip().splitlines()
    return first.split("#")[0].strip(), rest


def test_the_debugging_block_shows_the_prompts_the_machine_prints():
    command, lines = debugging_block()
    assert command == ".venv/bin/emu debug guest/build/apps/badread" and len(lines) == 7
    script = "".join(PROMPT.match(line).group(1) + "\n" for line in lines)
    app = command.split()[-1]
    r = emurun.emu("debug", app, input=script, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    shown = [line for line in r.stdout.splitlines() if PROMPT.match(line)]
    assert shown == lines


def test_the_badread_example_prints_what_the_readme_shows():
    section = README[README.index("## Running guests"):]
    block = section[section.index("```sh") + 6:section.index("```\n", 6)]
    lines = block.splitlines()
    start = lines.index(".venv/bin/emu run guest/build/apps/badread")
    expected = [line.removeprefix("# ") for line in lines[start + 1:start + 4]]
    r = emurun.emu("run", "guest/build/apps/badread", cwd=ROOT, timeout=120)
    assert r.stdout == expected[0] + "\n"
    assert r.stderr == expected[1] + " " + expected[2].strip() + "\n"
