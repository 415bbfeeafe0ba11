"""aurora_rl.policies."""
