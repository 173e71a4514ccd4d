"""Ex: executive support routines (pool), as PE drivers import them."""
