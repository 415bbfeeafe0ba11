"""aurora_rl.envs."""
