"""Ps: the process manager's exports, as PE drivers import them."""
