"""aurora_rl: online speculative decoding as reinforcement learning."""

__version__ = "0.1.0"
