"""Hal: the hardware abstraction layer's exports (hal.dll), as PE drivers import them."""
