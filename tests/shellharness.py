"""The debugger's state commands with the shell's side of the contract (message, error),
their output captured: shared by tests/debugger and tests/nt."""

from __future__ import annotations

import cmd
import io
from typing import Any

from emu.debugger.cmd_state import StateCommands


class Harness(StateCommands, cmd.Cmd):
    """The state commands with the shell's side of the contract: output captured."""

    def __init__(self, target: Any, stop_info: Any = None) -> None:
        super().__init__(stdout=io.StringIO())
        self.target = target
        self.view_pid: int | None = None
        self.stop_info = stop_info
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)

    def error(self, text: str) -> None:
        self.lines.append("error: " + text)

    def run(self, line: str) -> str:
        """Run one command; its whole output."""
        self.lines = []
        self.onecmd(line)
        return "\n".join(self.lines)
