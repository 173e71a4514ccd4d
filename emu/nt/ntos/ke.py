"""Ke: the kernel's exports (DPCs, events and waits, attaching, time), as PE drivers
import them."""
