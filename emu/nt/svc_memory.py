"""System services for virtual memory: NtAllocateVirtualMemory and friends (being written)."""
