"""The printable worksheet of ``emu exercise --html``: self-contained (no script, font, image
or link outside the file), the questions first, the answers and explanations at the end."""

from __future__ import annotations

from html import escape

from emu.exercise import Exercise

_STYLE = """
body { font-family: serif; max-width: 52em; margin: 2em auto; line-height: 1.35; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
pre { font-family: monospace; font-size: 0.85em; white-space: pre-wrap; }
section.answers { page-break-before: always; break-before: page; }
"""


def sheet(exercises: list[Exercise]) -> str:
    """The whole HTML page for ``exercises``."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>emu exercises</title>", f"<style>{_STYLE}</style></head><body>",
             "<h1>Exercises on a real x86-64 machine state</h1>",
             "<p>Each exercise names its kind and seed: <code>emu exercise check KIND --seed "
             "S ANSWER</code> checks an answer and explains it.</p>"]
    for i, e in enumerate(exercises, 1):
        parts.append(f'<h2 id="q{i}">{i}. {escape(e.kind)}, seed {e.seed}</h2>')
        parts.append(f"<pre>{escape(e.question)}</pre>")
    parts.append('<section class="answers"><h1>Answers</h1>')
    for i, e in enumerate(exercises, 1):
        parts.append(f'<h2 id="a{i}">{i}. {escape(e.kind)}, seed {e.seed}: '
                     f"<code>{escape(e.answer)}</code></h2>")
        parts.append(f"<pre>{escape(e.explanation)}</pre>")
    parts.append("</section></body></html>")
    return "\n".join(parts) + "\n"
