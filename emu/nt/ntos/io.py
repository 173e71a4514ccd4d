"""Io: the I/O manager's exports, as PE drivers import them."""
