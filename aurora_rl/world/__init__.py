"""aurora_rl.world."""
