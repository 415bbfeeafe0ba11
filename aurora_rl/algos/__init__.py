"""aurora_rl.algos."""
