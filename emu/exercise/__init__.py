"""``emu exercise``: seeded exercises asked of a real machine state, checked by the machine.

Each kind boots a machine with real guest apps (and drivers), runs it to a fixed point, then a
seed picks what to ask inside that state (a process, an address, an access). The answer and
its explanation come from the code that runs the machine: emu.hw.mmu.walk and the debugger's
``walk`` text (emu.debugger.walkview), never from a second model. docs/exercises.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEED_MAX = (1 << 32) - 1        # seeds are 0 .. 2**32 - 1


class SceneError(Exception):
    """The guests are not built, or a scene did not reach its point (one line)."""


class AnswerError(ValueError):
    """An answer that does not follow the grammar of docs/exercises.md (one line)."""


@dataclass
class Exercise:
    """One generated exercise: what is asked, the machine's answer and its explanation."""

    kind: str
    seed: int
    question: str                # the whole question, with the state it is asked about
    answer: str                  # the answer in the grammar's canonical form
    explanation: str             # the machine's own words (walk, event, bug check)
    facts: dict[str, Any] = field(default_factory=dict)   # the JSON "facts" of the exercise

    def as_json(self) -> dict[str, Any]:
        """The exercise as docs/exercises.md's JSON schema."""
        return {"kind": self.kind, "seed": self.seed, "question": self.question,
                "answer": self.answer, "explanation": self.explanation, "facts": self.facts}
