"""The debugger: a shell that explains the machine (``emu debug``), the run control under it
(session), the state it shows (target, views), and a gdb remote stub."""
