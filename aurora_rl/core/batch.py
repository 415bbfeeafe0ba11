"""``TraceBatch``: traces padded into tensors, the only input algorithms see."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch

from aurora_rl.core.sampling import SamplingParams, logits_under, probs_from_logits
from aurora_rl.core.trace import Trace, dense_probs


@dataclass
class TraceBatch:
    """``B`` traces padded to ``k`` proposal positions and a ``W``-token context window.

    The context window holds the *last* ``W`` context tokens of each trace, left-padded;
    drafters are trained on it teacher-forced along the proposals, which is exactly the
    path the draft itself took at decode time (on-policy data).

    Attributes:
        context_ids: ``(B, W)`` long, left-padded with ``pad_id``.
        context_mask: ``(B, W)`` bool, True on real tokens.
        context_features: ``(B, W, D)`` target hidden states at those positions, or None.
        proposed: ``(B, k)`` long proposals (0 on padding).
        valid_mask: ``(B, k)`` bool, True where a proposal exists.
        accept_mask: ``(B, k)`` bool, prefix-closed, within ``valid_mask``.
        behavior_logprobs: ``(B, k)`` log q_old(proposed) of the version that proposed.
        target_probs: ``(B, k, V)`` target distribution (temperature 1) at each position.
        temperature: ``(B,)`` the decoding temperature each verdict used (0 = greedy);
            ``samplings`` each verdict's whole rule (``sampling_rules()``).
        draft_version: ``(B,)`` long. ``weights``: ``(B,)`` per-trace loss weight (the
            buffer down-weights stale traces). ``domains``: the traces' domain tags.
    """

    context_ids: torch.Tensor
    context_mask: torch.Tensor
    context_features: torch.Tensor | None
    proposed: torch.Tensor
    valid_mask: torch.Tensor
    accept_mask: torch.Tensor
    behavior_logprobs: torch.Tensor
    target_probs: torch.Tensor
    temperature: torch.Tensor
    draft_version: torch.Tensor
    weights: torch.Tensor
    domains: list[str]
    samplings: tuple[SamplingParams, ...] = ()  # each verdict's whole rule, exactly as it ran

    def sampling_rules(self) -> list[SamplingParams]:
        """Each row's sampling rule (temperature, top-k, top-p) as its verdict used it
        (temperature alone for a batch built without the rules)."""
        if self.samplings:
            return list(self.samplings)
        return [SamplingParams(t) for t in self.temperature.tolist()]

    def under_sampling_rules(self, draft_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(draft_logits, target_probs)`` ``(B, k, V)`` as each row's verdict compared them:
        rows decoded with a sampled rule get both through it (the draft's logits as
        ``logits_under`` them, the target's distribution as ``probs_from_logits``); greedy rows
        keep the stored ones (raw draft logits, the temperature-1 target). Gradients flow to
        ``draft_logits`` through every token the rule keeps."""
        rules = self.sampling_rules()
        sampled = {rule for rule in rules if not rule.greedy}
        if not sampled or all(rule == SamplingParams(1.0) for rule in sampled):  # nothing to change
            return draft_logits, self.target_probs
        draft, target = draft_logits.float().clone(), self.target_probs.clone()
        target_logits = self.target_probs.clamp_min(1e-30).log()
        for rule in sampled:  # rows decoded under the same rule together
            rows = torch.tensor([r == rule for r in rules], device=draft.device)
            draft[rows] = logits_under(draft_logits[rows], rule)
            target[rows] = probs_from_logits(target_logits[rows], rule)
        return draft, target

    def __len__(self) -> int:
        return self.proposed.shape[0]

    @property
    def k(self) -> int:
        return self.proposed.shape[1]

    def to(self, device: torch.device | str) -> "TraceBatch":
        moved = {
            f.name: (v.to(device) if torch.is_tensor(v) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return TraceBatch(**moved)

    @classmethod
    def from_traces(
        cls,
        traces: Sequence[Trace],
        max_context: int = 128,
        pad_id: int = 0,
        weights: Sequence[float] | None = None,
        with_features: bool = False,
    ) -> "TraceBatch":
        """Pad ``traces`` into a batch.

        Traces without proposals (a budget's last step) carry no signal; callers should
        drop them (``Trace.num_proposed == 0``) -- they are refused here.
        """
        if not traces:
            raise ValueError("cannot build a TraceBatch from zero traces")
        if any(t.num_proposed == 0 for t in traces):
            raise ValueError("traces without proposals carry no learning signal; filter them out first")
        batch = len(traces)
        k = max(t.num_proposed for t in traces)
        window = min(max_context, max(t.context_len for t in traces))
        vocab = traces[0].target_probs.shape[-1] if torch.is_tensor(traces[0].target_probs) else traces[0].target_probs.vocab_size

        context_ids = torch.full((batch, window), pad_id, dtype=torch.long)
        context_mask = torch.zeros(batch, window, dtype=torch.bool)
        proposed = torch.zeros(batch, k, dtype=torch.long)
        valid_mask = torch.zeros(batch, k, dtype=torch.bool)
        accept_mask = torch.zeros(batch, k, dtype=torch.bool)
        behavior = torch.zeros(batch, k)
        target_probs = torch.zeros(batch, k, vocab)
        features = None
        if with_features:
            if any(t.context_features is None for t in traces):
                raise ValueError(
                    "with_features=True needs traces recorded with target features "
                    "(decode with a Target built with hidden_layers=...)"
                )
            dim = traces[0].context_features.shape[-1]
            features = torch.zeros(batch, window, dim)

        for row, trace in enumerate(traces):
            n, m = min(trace.context_len, window), trace.num_proposed
            context_ids[row, window - n :] = trace.context_ids[-n:]
            context_mask[row, window - n :] = True
            if features is not None:
                features[row, window - n :] = trace.context_features[-n:].float()
            proposed[row, :m] = trace.proposed
            valid_mask[row, :m] = True
            accept_mask[row, :m] = trace.accept_mask
            behavior[row, :m] = trace.draft_logprobs
            target_probs[row, :m] = dense_probs(trace.target_probs)[:m]

        return cls(
            context_ids=context_ids,
            context_mask=context_mask,
            context_features=features,
            proposed=proposed,
            valid_mask=valid_mask,
            accept_mask=accept_mask,
            behavior_logprobs=behavior,
            target_probs=target_probs,
            temperature=torch.tensor([t.temperature for t in traces], dtype=torch.float32),
            samplings=tuple(t.sampling for t in traces),
            draft_version=torch.tensor([t.draft_version for t in traces], dtype=torch.long),
            weights=torch.ones(batch) if weights is None else torch.as_tensor(weights, dtype=torch.float32),
            domains=[t.domain for t in traces],
        )
