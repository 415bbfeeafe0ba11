"""``Trace``: the record of one verify step, the unit every algorithm learns from."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from aurora_rl.core.sampling import SamplingParams


@dataclass
class TopKProbs:
    """A distribution over ``V`` tokens kept as its ``K`` largest entries per row.

    Attributes:
        values: ``(n, K)`` probabilities (not renormalised: their row sums say how much
            mass the truncation kept).
        indices: ``(n, K)`` long token ids.
        vocab_size: ``V``.
    """

    values: torch.Tensor
    indices: torch.Tensor
    vocab_size: int

    @classmethod
    def from_dense(cls, probs: torch.Tensor, k: int) -> "TopKProbs":
        k = min(k, probs.shape[-1])
        top = probs.topk(k, dim=-1)
        return cls(top.values, top.indices, probs.shape[-1])

    def dense(self, renormalize: bool = True) -> torch.Tensor:
        """``(n, V)`` with zeros outside the kept entries (rows sum to 1 if renormalised)."""
        values = self.values.float()
        if renormalize:
            values = values / values.sum(-1, keepdim=True).clamp_min(1e-30)
        out = torch.zeros(values.shape[0], self.vocab_size, dtype=values.dtype)
        return out.scatter_(-1, self.indices, values)

    def __len__(self) -> int:
        return self.values.shape[0]


Probs = torch.Tensor | TopKProbs


def dense_probs(probs: Probs) -> torch.Tensor:
    """``(n, V)`` float32 view of a stored distribution, whichever form it is kept in."""
    return probs.dense() if isinstance(probs, TopKProbs) else probs.float()


def store_probs(probs: torch.Tensor, topk: int | None) -> Probs:
    """Keep ``probs`` ``(n, V)`` in full (``topk=None``) or as its top-``topk`` entries."""
    if topk is None:
        return probs.float().clone()
    return TopKProbs.from_dense(probs.float(), topk)


@dataclass
class Trace:
    """One verify step of one sequence: what was proposed, judged and kept.

    Positions are relative to the step: proposal ``i`` (0-based) sits at absolute
    position ``context_len + i`` of the sequence.

    Attributes:
        request_id: the request / episode this step belongs to.
        domain: the traffic domain tag of that request.
        step: index of this verify step within the request.
        draft_version: the published draft version that made the proposal.
        context_ids: ``(L,)`` long, every token before the first proposal (prompt +
            generated so far). May be a view of the request's token buffer.
        proposed: ``(k,)`` long, the verified proposals (``k`` may be 0 on the last step).
        draft_logprobs: ``(k,)`` log-probability of each proposal under the distribution
            the draft drew it from (the behaviour policy, for off-policy corrections).
        target_probs: ``(k + 1, V)`` (or top-K) target distribution at temperature 1 at
            each proposal position plus the bonus position.
        accept_mask: ``(k,)`` bool, prefix-closed.
        emitted: ``(m,)`` long, tokens this step appended to the sequence: the accepted
            proposals then the target's correction/bonus token (cut at EOS).
        context_features: ``(L, D)`` target hidden states at the context positions, when
            the decode recorded features (EAGLE-style drafters train on them), else None.
        temperature: the decoding temperature the verdict used (0 = greedy).
        top_k, top_p: the rest of the verdict's sampling rule (0 and 1.0 disable them), so
            whoever replays the step (the publish gate) shapes the distributions exactly as
            the verdict did; ``sampling`` gives the whole rule.
        wall_time: ``time.time()`` when the step finished.
    """

    request_id: str
    domain: str
    step: int
    draft_version: int
    context_ids: torch.Tensor
    proposed: torch.Tensor
    draft_logprobs: torch.Tensor
    target_probs: Probs | None  # None when the decode config records none (nothing learns)
    accept_mask: torch.Tensor
    emitted: torch.Tensor
    context_features: torch.Tensor | None = None
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    wall_time: float = field(default=0.0)

    @property
    def sampling(self) -> SamplingParams:
        """The sampling rule of the verdict on this step."""
        return SamplingParams(self.temperature, self.top_k, self.top_p)

    @property
    def context_len(self) -> int:
        return int(self.context_ids.shape[0])

    @property
    def num_proposed(self) -> int:
        return int(self.proposed.shape[0])

    @property
    def num_accepted(self) -> int:
        """The reward of this step: proposals the target kept."""
        return int(self.accept_mask.sum())

    @property
    def rejected_position(self) -> int | None:
        """Index of the first refused proposal, or None if all were accepted."""
        n = self.num_accepted
        return n if n < self.num_proposed else None


def with_target_token(trace: Trace) -> Trace:
    """``trace`` plus one teacher-forced position: the target's own token after the accepted
    proposals, when the draft never proposed at that position.

    A step whose proposals were all accepted (including a step with none, when a controller
    skipped drafting) ends in a bonus token the draft never saw; the target's distribution
    there is already in ``target_probs``. Learning from it keeps online learning fed when
    controllers shorten drafts: the draft still learns from the target's tokens. Its
    behaviour log-probability is recorded as 0 (the target chose it, not the draft) and it
    counts as accepted. The extended ``target_probs`` gets a zero row for the never-scored
    position after it. Traces ending at a rejection (or cut by EOS) come back unchanged.
    """
    n = trace.num_proposed
    if trace.num_accepted != n or len(trace.emitted) != n + 1:
        return trace
    probs = trace.target_probs
    if isinstance(probs, TopKProbs):
        extended = TopKProbs(torch.cat([probs.values, torch.zeros_like(probs.values[:1])]),
                             torch.cat([probs.indices, torch.zeros_like(probs.indices[:1])]), probs.vocab_size)
    else:
        extended = torch.cat([probs, torch.zeros_like(probs[:1])])
    return replace(
        trace,
        proposed=torch.cat([trace.proposed, trace.emitted[-1:]]),
        draft_logprobs=torch.cat([trace.draft_logprobs.float(), torch.zeros(1)]),
        target_probs=extended,
        accept_mask=torch.cat([trace.accept_mask, torch.ones(1, dtype=torch.bool)]),
    )
