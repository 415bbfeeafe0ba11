"""aurora_rl.core."""
