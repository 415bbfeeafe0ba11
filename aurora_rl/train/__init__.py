"""``python -m aurora_rl.train``: offline vs online draft training on one traffic stream."""
