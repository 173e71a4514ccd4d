"""docs/debugger.md's transcripts are what `emu debug` prints today: each example below is
run from the repository's root with the machine the doc names, and its fenced block (the
prompt with its command, then every line of the answer) is found verbatim in the output."""

from __future__ import annotations

from pathlib import Path

import emurun
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "debugger.md").read_text()


def block(first: str) -> str:
    """The fenced block of docs/debugger.md whose first line is ``first``."""
    start = DOC.index("```\n" + first + "\n") + len("```\n")
    return DOC[start:DOC.index("```", start)]


# (the block's first line, the script that leads there and runs it, the machine)
EXAMPLES = [
    ("(emu pid 12 ring 3 0x40208d) walk rsp", "until 0x40208d\nwalk rsp\n",
     ["guest/build/apps/hello"]),
    ("(emu pid 20 ring 0 0xfffff800010010f0) history events dpc",
     "catch dpc\ncontinue\nhistory events dpc\n",
     ["--driver", "slowneither.sys", "slowread", r"\Device\SlowNeither", "--", "victim"]),
    ("(emu ended) history calls IoCompleteRequest",
     "continue\nhistory calls IoCompleteRequest\n",
     ["--driver", "twice.sys", "devread", r"\Device\Twice"]),
]


@pytest.mark.parametrize("first, script, machine", EXAMPLES, ids=["walk", "events", "calls"])
def test_the_transcript_docs_show_is_the_one_emu_debug_prints(first, script, machine):
    r = emurun.emu("debug", *machine, input=script, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert block(first) in r.stdout
