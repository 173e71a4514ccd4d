"""Mm: the memory manager's exports (MDLs, probes, mappings), as PE drivers import them."""
