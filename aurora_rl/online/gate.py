"""The publish gate: replay held-out traces and ask whether a candidate draft is better.

Both the candidate and the live draft are scored on the *same* recorded positions: every
judged proposal position (accepted ones and the first rejected one), where the recorded
context is exactly what the draft saw at decode time. The score is the draft's chance to
be accepted there -- ``1[argmax q == argmax p]`` for greedy traces, ``sum_x min(p, q)``
(both shaped by the trace's own sampling rule: temperature, top-k, top-p) for sampled ones
-- averaged over positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aurora_rl.algos.rl_losses import pg_positions
from aurora_rl.core.batch import TraceBatch


@dataclass(frozen=True)
class GateDecision:
    publish: bool
    candidate_score: float
    live_score: float
    positions: int


@torch.no_grad()
def acceptance_score(policy, batch: TraceBatch) -> tuple[float, int]:
    """Mean per-position acceptance chance of ``policy`` on the judged positions of ``batch``."""
    logits = policy.trainable(batch).float()
    judged = pg_positions(batch.accept_mask, batch.valid_mask)
    greedy = torch.tensor([rule.greedy for rule in batch.sampling_rules()])[:, None]
    draft, target = batch.under_sampling_rules(logits)
    score = torch.where(greedy, (logits.argmax(-1) == batch.target_probs.argmax(-1)).float(),  # picks agree
                        torch.minimum(draft.softmax(-1), target).sum(-1))  # sampled: sum_x min(p, q) # fmt: skip
    count = int(judged.sum())
    return (float(score[judged].mean()) if count else 0.0), count


def gate(candidate, live, batch: TraceBatch | None, margin: float) -> GateDecision:
    """Publish when ``candidate`` scores at least ``live - margin`` on ``batch``.

    With no held-out traces yet there is nothing to replay: the candidate is published.
    """
    if batch is None:
        return GateDecision(True, float("nan"), float("nan"), 0)
    candidate_score, positions = acceptance_score(candidate, batch)
    live_score, _ = acceptance_score(live, batch)
    return GateDecision(candidate_score >= live_score - margin, candidate_score, live_score, positions)
