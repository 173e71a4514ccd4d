"""Pictures of the machine's state, built from the live page tables (not from the kernel's
bookkeeping about them).

    addrmap   the address-space map: each process's user pages, their protections and
              frames, as text and as the seed's two-processes-and-physical-memory diagram
"""
