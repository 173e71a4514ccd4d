"""The tour: every claim of the seed (user-mode-and-kernel-mode.md) as a narrated scenario.

    emu scenario list                 the scenarios, one line each
    emu scenario run NAME [--out DIR] boot a machine, run guests, narrate, check the claim
    emu scenario run --all            the whole tour (what `make run` shows)

A scenario is one or more *acts*; an act is one machine with its drivers and apps. While
it runs, a witness (emu.scenarios.witness) listens to the executive's events and tells
what happens: which process runs, at which ring, which instruction crossed a boundary and
what the MMU or the executive did about it. Then the scenario asks the machine (page
tables, the PFN database, exit statuses, bug check parameters, bytes in guest memory)
whether the seed's claim held, and says so; a claim that did not hold fails the run.

Modules: registry (the list), stage (acts, checks, results), witness (narration and the
timeline's marks), watch (memory writes and page contents), describe and args (wording),
pictures (the address-space map in text, the shared kernel half), timeline and html
(the picture page), cli, and the scenarios themselves: spaces, isolation, drivers,
context. Importing this package or its cli
module is cheap: the scenarios and the machine load only when a scenario is asked for.
"""
