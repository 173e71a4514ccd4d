#!/usr/bin/env bash
# The demo `make demo` shows: each command printed, then run, then its exit status
# (`make run` plays the tour instead: docs/tour.md).
# A = the guest apps, D = the guest drivers (built by make).
set -u
EMU=${EMU:-.venv/bin/emu}
A=guest/build/apps
D=guest/build/drivers

show() {
    echo
    [ -n "$1" ] && echo "# $1"
    shift
    echo "\$ emu $*" | sed "s|$A/||g; s|$D/||g"
    "$EMU" "$@"
    echo "(exit status $?)"
}

show "A program at ring 3, in its own address space" run $A/hello one two
show "User code reading kernel memory: the U/S bit stops it" run $A/badread
show "Writing address 0, a read-only page, executing data" run $A/nullwrite
show "" run $A/rowrite
show "" run $A/execdata
show "Privileged instructions at ring 3" run $A/privileged hlt
show "Other faults: invalid opcode, divide by zero, breakpoint, a non-canonical address" \
    run $A/illegal
show "" run $A/divzero
show "" run $A/breakpoint
show "" run $A/noncanon
show "A stack overflow into the guard page" run $A/stackoverflow
show "Bad pointers passed to the kernel come back as a status" run $A/badptr
show "Two processes share the CPU; a third crashes alone" \
    run $A/counter a 3 -- $A/crasher div -- $A/counter b 3
show "notepad and myapp: the same virtual address, different frames (the seed's picture)" \
    run --map $A/notepad -- $A/myapp
show "A 32-bit process: compatibility mode, below 2 GB" run $A/hello32
show "A driver's crash stops everything" run --driver $D/crash.sys $A/hello
show "The seed's scenario: a DPC writing the requester's address lands in another process" \
    run --driver $D/slowneither.sys $A/slowread '\Device\SlowNeither' -- $A/victim
show "The same request with buffered I/O: right bytes, right process" \
    run --driver $D/slowbuffered.sys $A/slowread '\Device\SlowBuffered' -- $A/victim
exit 0
