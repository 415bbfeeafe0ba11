"""Gymnasium environments: ``aurora_rl/SpecDecode-v0`` (registered on ``import aurora_rl``)."""
