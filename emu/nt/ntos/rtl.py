"""Rtl: the run-time library's exports (strings, memory), as PE drivers import them."""
