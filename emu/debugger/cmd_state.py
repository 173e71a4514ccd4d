"""The debugger commands that SHOW state (and ``set`` it): a mixin for the cmd.Cmd shell.

The shell provides ``self.target`` (a Target), ``self.message(text)``, ``self.error(text)``
(one line; the shell adds "error: "), ``self.view_pid`` (the process whose address space
``x``, ``walk``, ``disas``... read; None: the current one) and ``self.stop_info`` (the
last stop, with ``.reason`` and ``.exception``). The first line of each ``do_*``
docstring is its usage line, the rest its help. ``info`` dispatches through the table
``info_subcommands``; the shell may extend it (e.g. with ``breakpoints``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from emu.debugger import analyze, mapview, memview, regview, views, walkview
from emu.debugger.expr import ExprError, evaluate
from emu.debugger.memview import Format, Reader
from emu.debugger.records import TargetError
from emu.debugger.stops import SessionError

_ACCESS_WORDS = {"read": "read", "write": "write", "fetch": "fetch", "execute": "fetch",
                 "exec": "fetch"}
_RING_WORDS = {"user": 3, "kernel": 0, "ring3": 3, "ring0": 0}
_WIDTHS = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}
_ASSIGN = re.compile(r"(?<![=!<>])=(?!=)")
_OPERATOR_END = re.compile(r"[-+*/%&|^<>(~!]$")
DEFAULT_DISAS = 10
MAX_DISAS = 1000


def no_argument(command: str, arg: str) -> None:
    """A command that takes none was given one: one error line (SessionError), not the
    command run as if it had not been there (``nexti 5`` is not five steps)."""
    if arg.strip():
        raise SessionError(f"{command} takes no argument, not {arg.strip()!r} "
                           f"(see help {command})")


def _guarded(method: Callable[[Any, str], None]) -> Callable[[Any, str], None]:
    """Turn a user's mistake (TargetError, ExprError, or SessionError: a command that needs
    a running machine where there is none) into one error line; anything else is a bug of
    ours, still one line (the shell must survive it)."""
    @functools.wraps(method)
    def run(self: Any, arg: str) -> None:
        try:
            method(self, arg)
        except (TargetError, ExprError, SessionError) as err:
            self.error(str(err))
        except Exception as err:  # noqa: BLE001 - a bug must not end the session
            self.error(f"{method.__name__[3:]}: internal error ({type(err).__name__}: "
                       f"{err}); please report it")
    return run


def _split_count(words: list[str]) -> tuple[str, int | None]:
    """(expression, N) when the last word is a number after a complete expression."""
    if len(words) >= 2 and words[-1].isdigit() and not _OPERATOR_END.search(words[-2]):
        return " ".join(words[:-1]), int(words[-1])
    return " ".join(words), None


class StateCommands:
    """registers, info, set, x, xp, disas, bt, walk, vtop, ptov, vmmap, pfn, tlb, ps,
    process, threads, handles, lm, irp, irql, analyze, check."""

    # Provided by the shell (annotations only: nothing here shadows the shell's own).
    target: Any
    view_pid: int | None
    stop_info: Any
    message: Callable[[str], None]
    error: Callable[[str], None]

    # -- helpers ---------------------------------------------------------------------------

    def _eval(self, text: str) -> int:
        if not text.strip():
            raise ExprError("an address or value is needed")
        return evaluate(text, self.target, self.view_pid)

    def _pid(self, text: str) -> int:
        try:
            pid = int(text, 0)
        except ValueError:
            raise TargetError(f"bad process id '{text}' (see ps)") from None
        self.target.process(pid)
        return pid

    def _rip(self) -> int | None:
        try:
            return self.target.registers(self.view_pid)["rip"]
        except TargetError:
            return None

    # -- registers -------------------------------------------------------------------------

    @_guarded
    def do_registers(self, arg: str) -> None:
        """registers [NAME...]
        Without names: the general registers, RIP with its symbol, RFLAGS decoded, the
        segment registers with their descriptors and the CPL, and CR0/CR2/CR3/CR4/EFER by
        their set bits (`info cr` explains every bit). With names (rax, eax, al, r8d, cr3,
        fs_base...): just those. Alias: regs."""
        names = arg.split()
        if not names:
            self.message(regview.registers_text(self.target, self.view_pid))
            return
        for name in names:
            value = self.target.register(name, self.view_pid)
            bits = regview.named_bits(name, value)
            self.message(f"{name.lstrip('$')} = {value:#x} ({value})" +
                         (f"  {bits}" if bits else ""))

    do_regs = do_registers

    def _info_registers(self, arg: str) -> None:
        self.do_registers(arg)

    def _info_cr(self, arg: str) -> None:
        self.message(regview.control_text(self.target))

    def _info_gdt(self, arg: str) -> None:
        self.message(regview.gdt_text(self.target))

    def _info_tss(self, arg: str) -> None:
        self.message(regview.tss_text(self.target))

    def _info_idt(self, arg: str) -> None:
        self.message(regview.idt_text())

    info_subcommands: dict[str, Callable[[Any, str], None]] = {
        "registers": _info_registers, "cr": _info_cr, "gdt": _info_gdt, "idt": _info_idt,
        "tss": _info_tss}

    @_guarded
    def do_info(self, arg: str) -> None:
        """info SUBCOMMAND [ARGS]
        info registers [NAME...]: as `registers`; info cr: CR0, CR4 and EFER bit by bit;
        info gdt: every GDT descriptor decoded; info idt: the exception vectors and what
        the executive makes of each; info tss: the TSS (RSP0, IST, I/O map). A unique
        prefix is enough (info reg)."""
        word, _, rest = arg.strip().partition(" ")
        table = self.info_subcommands
        if not word:
            self.message("info subcommands: " + ", ".join(sorted(table)))
            return
        matches = sorted(name for name in table if name.startswith(word))
        if word in table:
            matches = [word]
        if len(matches) != 1:
            known = ", ".join(sorted(table))
            raise TargetError(f"info {word}: " + ("ambiguous: " + ", ".join(matches)
                                                   if matches else f"unknown (known: {known})"))
        table[matches[0]](self, rest)

    def complete_info(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return sorted(name for name in self.info_subcommands if name.startswith(text))

    @_guarded
    def do_set(self, arg: str) -> None:
        """set REG = VALUE | set *ADDR = VALUE | set {u8|u16|u32|u64} ADDR = VALUE
        The braces may be left out (set u8 ADDR = VALUE). Change a register of the CPU
        (general registers, their parts, rip, rflags) or memory of the view's process (u64
        for *ADDR); VALUE and ADDR are expressions. A write ignores the page's rights, as a
        debugger's does. Live machines only."""
        if not self.target.live:
            raise TargetError("a crash dump is read-only")
        parts = _ASSIGN.split(arg, maxsplit=1)
        if len(parts) != 2 or not parts[0].strip():
            raise TargetError("usage: set REG = VALUE, set *ADDR = VALUE or "
                              "set {u8|u16|u32|u64} ADDR = VALUE")
        left, value = parts[0].strip(), self._eval(parts[1])
        width = 8
        match = re.match(r"\{\s*(\w+)\s*\}\s*(.*)$", left) or \
            re.match(r"(u8|u16|u32|u64)\s+(.*)$", left)
        if match:
            if match.group(1) not in _WIDTHS:
                raise TargetError(f"bad width '{match.group(1)}': u8, u16, u32 or u64")
            width, left = _WIDTHS[match.group(1)], "*" + match.group(2)
        if left.startswith("*"):
            address = self._eval(left[1:])
            data = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
            self.target.write_virtual(address, data, self.view_pid)
            self.message(f"{address:#x} <- {int.from_bytes(data, 'little'):#x} "
                         f"({width} byte{'s' if width > 1 else ''})")
            return
        if self.view_pid is not None and self.view_pid != self.target.current_pid():
            raise TargetError(f"set {left} changes the CPU's registers; process "
                              f"{self.view_pid} is only being viewed (`process` to go back)")
        self.target.set_register(left, value)
        self.message(f"{left.lstrip('$')} = {self.target.register(left):#x}")

    @_guarded
    def do_print(self, arg: str) -> None:
        """print EXPR | print/FMT EXPR
        The value of an expression (registers, symbols, [ADDR], arithmetic): hex and
        decimal, or in one gdb format: /x hex, /d signed, /u unsigned, /o octal, /t binary,
        /c character, /a address with its symbol. Alias: p."""
        text, letter = arg.strip(), ""
        if text.startswith("/"):
            spec, _, text = text[1:].partition(" ")
            if len(spec) != 1 or spec not in "xduotca":
                raise TargetError(f"bad format '/{spec}' for print: one of x d u o t c a")
            letter = spec
        if not text.strip():
            raise TargetError("print needs an expression, e.g. print $rsp + 8")
        value = evaluate(text, self.target, self.view_pid)
        if not letter:
            shown = f"{value:#x} ({value})"
        else:
            shown = memview.format_value(value, letter, lambda a: self.target.symbolize(
                a, self.view_pid))
        self.message(f"{text.strip()} = {shown}")

    do_p = do_print

    # -- memory, code, stack -----------------------------------------------------------------

    def _examine(self, arg: str, physical: bool) -> None:
        text = arg.strip()
        last = getattr(self, "_x_format", Format())
        fmt = Format(1, last.letter, last.size)       # gdb: the count does not carry over
        if text.startswith("/"):
            spec, _, text = text[1:].partition(" ")
            fmt = memview.parse_format(spec, last)
        pid = self.view_pid
        match = re.match(r"-p\s+(\S+)\s*(.*)$", text)
        if match and not physical:
            pid, text = self._pid(match.group(1)), match.group(2)
        if text.strip():
            address = evaluate(text, self.target, pid)
        elif getattr(self, "_x_next", None) is not None:
            address = self._x_next
        else:
            raise TargetError("an address is needed, e.g. x/4gx $rsp")
        rip = self._rip() if not physical else None
        lines, err, end = memview.examine(Reader(self.target, pid, physical), address, fmt, rip)
        self._x_format, self._x_next = fmt, end
        if lines:
            self.message("\n".join(lines))
        if err:
            self.error(err)

    @_guarded
    def do_x(self, arg: str) -> None:
        """x/FMT [-p PID] ADDR
        Examine virtual memory of the view's process (or of PID): FMT is COUNT, a format
        (x hex, d signed, u unsigned, o octal, t binary, a address with symbol, c char,
        s string, i instruction) and a size (b 1, h 2, w 4, g 8 bytes), as in gdb; what is
        left out is taken from the last x. `x` alone goes on after the last one."""
        self._examine(arg, physical=False)

    @_guarded
    def do_xp(self, arg: str) -> None:
        """xp/FMT PADDR
        Examine physical memory (formats as for x)."""
        self._examine(arg, physical=True)

    @_guarded
    def do_disas(self, arg: str) -> None:
        """disas [ADDR [N]]
        Disassemble N instructions (default 10) from ADDR (default: RIP), with sym+off
        labels; the current instruction is marked =>. ADDR with spaces: put it in
        parentheses. Alias: disassemble."""
        text, count = _split_count(arg.split())
        if count is not None and not 0 < count <= MAX_DISAS:
            raise TargetError(f"bad count {count}: between 1 and {MAX_DISAS}")
        rip = self._rip()
        if text:
            address = self._eval(text)
        elif rip is not None:
            address = rip
        else:
            raise TargetError("an address is needed: this process has no registers")
        self.message("\n".join(memview.disassembly(self.target, address, count or
                                                   DEFAULT_DISAS, self.view_pid, rip)))

    do_disassemble = do_disas

    @_guarded
    def do_bt(self, arg: str) -> None:
        """bt
        The call stack of the view's process, each return address with its symbol: through
        PE drivers (and the kernel exports they call) by their .pdata/.xdata unwind data,
        elsewhere by frame pointers. Alias: backtrace."""
        no_argument("bt", arg)
        self.message("\n".join(memview.backtrace_lines(self.target, self.view_pid)))

    do_backtrace = do_bt

    # -- the page walk and the memory manager -------------------------------------------------

    @_guarded
    def do_walk(self, arg: str) -> None:
        """walk VA [PID] [read|write|fetch] [user|kernel]
        The 4-level page walk of VA explained: the index bits, each entry's address,
        value and flags, the rights so far, the physical address; for a fault, the entry
        and bit that deny this access at this ring and the #PF error code; for a page not
        present, what its PTE's software bits and the VADs say. Each entry's address is
        shown as the table's base plus index x 8, and the end says what the access does to
        the A and D bits. Default: a read (a fetch when VA is RIP) at the CPL of the view's
        process."""
        words, access, ring = [], None, None
        for word in arg.split():
            if word.lower() in _ACCESS_WORDS:
                access = _ACCESS_WORDS[word.lower()]
            elif word.lower() in _RING_WORDS:
                ring = _RING_WORDS[word.lower()]
            else:
                words.append(word)
        text, pid = _split_count(words)
        pid = self._pid(str(pid)) if pid is not None else self.view_pid
        va = evaluate(text, self.target, pid) if text else None
        if va is None:
            raise TargetError("usage: walk VA [PID] [read|write|fetch] [user|kernel]")
        if access is None:
            try:
                rip = self.target.registers(pid)["rip"]
            except TargetError:
                rip = None
            access = "fetch" if va == rip else "read"
        self.message(walkview.walk_text(self.target, va, pid, access, ring))

    @_guarded
    def do_vtop(self, arg: str) -> None:
        """vtop VA
        The physical address VA translates to in the view's process (or why none)."""
        self.message(mapview.vtop_text(self.target, self._eval(arg), self.view_pid))

    @_guarded
    def do_ptov(self, arg: str) -> None:
        """ptov PA
        Every process and virtual address whose page tables map the frame of PA (and
        the PTEs that hold it in transition)."""
        self.message(mapview.ptov_text(self.target, self._eval(arg)))

    @_guarded
    def do_vmmap(self, arg: str) -> None:
        """vmmap [PID] [user|kernel]
        The address space as regions: the user half from the VADs (range, size, state,
        rights, U/S, protection, type, pages present, the image or region's name), then
        the shared kernel half from the page tables."""
        words = arg.split()
        part = next((w for w in words if w in ("user", "kernel")), "all")
        rest = [w for w in words if w not in ("user", "kernel")]
        pid = self._pid(rest[0]) if rest else self.view_pid
        self.message(mapview.vmmap_text(self.target, pid, part))

    @_guarded
    def do_pfn(self, arg: str) -> None:
        """pfn PA
        The PFN database's record of the frame holding physical address PA: its use,
        owner, virtual address, PTE (read back and decoded), pagefile slot, list."""
        self.message(mapview.pfn_text(self.target, self._eval(arg)))

    @_guarded
    def do_tlb(self, arg: str) -> None:
        """tlb [VA | all]
        The translations the second-level TLB holds now (QEMU's own TLB cannot be read
        through Unicorn), by mode and page; with VA, that page's entries checked against
        a fresh walk. The first 100 unless `all`."""
        text = arg.strip()
        if text == "all":
            self.message(mapview.tlb_text(self.target, show_all=True))
        else:
            self.message(mapview.tlb_text(self.target, self._eval(text) if text else None))

    # -- the executive ---------------------------------------------------------------------

    @_guarded
    def do_ps(self, arg: str) -> None:
        """ps
        Every process: pid, name, state, bits, CR3, live threads, how it ended."""
        no_argument("ps", arg)
        self.message(views.ps_text(self.target, self.view_pid))

    @_guarded
    def do_process(self, arg: str) -> None:
        """process [PID]
        View PID's address space (like WinDbg's .process): x, walk, disas, vtop, bt...
        read it from now on. Without PID: back to the current process."""
        if not arg.strip():
            self.view_pid = None
            pid = self.target.current_pid()
            now = "the system address space" if pid is None else \
                f'process {pid} "{self.target.process(pid).name}"'
            self.message(f"view: back to the current process ({now})")
            return
        pid = self._pid(arg.strip())
        proc = self.target.process(pid)
        if not proc.has_space:
            raise TargetError(f'process {pid} "{proc.name}" has ended: its address space '
                              "is gone")
        self.view_pid = pid
        self.message(f'view: process {pid} "{proc.name}" (CR3 {proc.cr3:#x}); x, walk, '
                     "disas, vtop, bt... read its address space")

    @_guarded
    def do_threads(self, arg: str) -> None:
        """threads [PID]
        Every thread (or PID's): tid, process, state, and where it is."""
        pid = self._pid(arg.strip()) if arg.strip() else None
        self.message(views.threads_text(self.target, pid))

    @_guarded
    def do_handles(self, arg: str) -> None:
        """handles [PID]
        The handle table of PID (default: the view's process): value, type, object."""
        pid = self._pid(arg.strip()) if arg.strip() else \
            (self.view_pid if self.view_pid is not None else self.target.current_pid())
        if pid is None:
            raise TargetError("no current process: give a PID (see ps)")
        self.message(views.handles_text(self.target, pid))

    @_guarded
    def do_lm(self, arg: str) -> None:
        """lm
        Loaded images: each process's app and the drivers, with their address ranges; under
        a PE driver its sections (name, address, size, rights, discardable)."""
        no_argument("lm", arg)
        self.message(views.lm_text(self.target))

    @_guarded
    def do_irp(self, arg: str) -> None:
        """irp [ADDR]
        The IRP at ADDR decoded (type, MDL, system buffer, status, user buffer, the
        stack location with its major function and device); without ADDR, the IRPs in
        flight."""
        if not arg.strip():
            self.message(views.irps_text(self.target))
            return
        self.message(views.irp_text(self.target, self._eval(arg), self.view_pid))

    @_guarded
    def do_irql(self, arg: str) -> None:
        """irql
        The processor's IRQL and what it allows."""
        no_argument("irql", arg)
        self.message(views.irql_text(self.target))

    @_guarded
    def do_analyze(self, arg: str) -> None:
        """analyze [-v | --why [ADDR [LEN] [pid N]] [--json]]
        What happened, in words: the CPU exception of this stop, else the bug check (the
        stop code with each parameter explained), else the exception that ended the view's
        process: the instruction, ring, access, the failing page walk, the responsible
        image and the stack. --why walks back through the data (who wrote the faulting
        pointer or the value at ADDR, and when); -v is analyze, then --why."""
        if arg.split():
            analyze.analyze_command(self, arg)
            return
        self.message(analyze.analyze_text(self.target, getattr(self, "stop_info", None),
                                          self.view_pid))

    @_guarded
    def do_check(self, arg: str) -> None:
        """check
        The accounting checks: frames, lists, PTEs, working sets and the shared kernel
        half must agree, and so must the handle tables and the objects (every handle
        names a live object, handle counts match, no object alive that nothing keeps;
        live machines only)."""
        no_argument("check", arg)
        self.message(views.check_text(self.target))

    # -- completion --------------------------------------------------------------------------

    def _complete_expression(self, text: str, *args: Any) -> list[str]:
        try:
            names = [*self.target.register_names(), *self.target.symbol_names()]
        except TargetError:
            return []
        prefix = "$" if text.startswith("$") else ""
        bare = text.lstrip("$")
        return sorted({prefix + n for n in names if n.startswith(bare)})

    complete_x = complete_xp = complete_disas = complete_walk = complete_vtop = complete_p = \
        complete_print = \
        complete_ptov = complete_pfn = complete_irp = complete_set = complete_tlb = \
        _complete_expression

    def _complete_pid(self, text: str, *args: Any) -> list[str]:
        try:
            return [str(p.pid) for p in self.target.processes() if str(p.pid).startswith(text)]
        except TargetError:
            return []

    complete_process = complete_handles = complete_threads = complete_vmmap = _complete_pid
