"""Gymnasium environments, registered on ``import aurora_rl``: ``aurora_rl/SpecDecode-v0``
(the draft proposes tokens) and ``aurora_rl/DraftLength-v0`` (when to stop drafting)."""
