"""aurora_rl: online speculative decoding as reinforcement learning."""

import gymnasium

__version__ = "0.1.0"

# The entry point is a string, so registering does not import torch-heavy env code.
if "aurora_rl/SpecDecode-v0" not in gymnasium.registry:
    gymnasium.register(
        id="aurora_rl/SpecDecode-v0",
        entry_point="aurora_rl.envs.spec_decode:SpecDecodeEnv",
    )
if "aurora_rl/DraftLength-v0" not in gymnasium.registry:
    gymnasium.register(
        id="aurora_rl/DraftLength-v0",
        entry_point="aurora_rl.envs.draft_length:DraftLengthEnv",
    )
