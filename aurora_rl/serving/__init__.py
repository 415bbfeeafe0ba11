"""aurora_rl.serving."""
