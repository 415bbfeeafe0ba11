"""``Algorithm``: turns a ``TraceBatch`` into one optimiser step on a trainable draft.

Algorithms never see an env, a server or a writer: ``update(batch)`` returns metrics and
the caller logs them. A non-finite loss or gradient is *rejected*: no step is taken, the
weights are untouched, and the metrics say so (invariant 3: a failed update never reaches
serving).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from accelerate import Accelerator

from aurora_rl.algos.config import AlgoConfig
from aurora_rl.algos.divergences import forward_kl, total_variation, weighted_mean  # noqa: F401  (re-exported)
from aurora_rl.core.batch import TraceBatch
from aurora_rl.core.draft import DraftPolicy


class TrainableDraft(DraftPolicy, Protocol):
    """A draft policy a learner can optimise.

    ``trainable`` is an ``nn.Module`` whose ``forward(batch)`` returns the ``(B, k, V)``
    draft logits at every proposal position with gradients, and whose parameters are
    exactly what should be trained (frozen shared parts excluded).
    """

    @property
    def trainable(self) -> torch.nn.Module: ...

    def clone(self, version: int | None = None) -> "TrainableDraft": ...


def context_cross_entropy(context_logits: torch.Tensor, batch: TraceBatch) -> torch.Tensor:
    """Next-token cross-entropy over each trace's context window, trace-weighted.

    ``context_logits`` ``(B, W - 1, V)`` at window positions ``0 .. W - 2`` predict the
    context tokens ``1 .. W - 1``; pairs touching left padding are skipped.
    """
    targets = batch.context_ids[:, 1:]
    mask = batch.context_mask[:, 1:] & batch.context_mask[:, :-1]
    values = torch.nn.functional.cross_entropy(
        context_logits.flatten(0, 1), targets.flatten(), reduction="none"
    ).view_as(targets)
    return weighted_mean(torch.where(mask, values, torch.zeros_like(values)), mask, batch.weights)


class Algorithm:
    """Base class: optimiser, gradient clipping, rejection of bad updates, metrics.

    Args:
        policy: the draft to train in place (a learner trains its own copy).
        config: the algorithm's knobs.
        accelerator: an ``accelerate.Accelerator`` (one CPU process by default; the same
            code runs data-parallel under ``accelerate launch``).
    """

    #: True if proposals should be *sampled* even when decoding is greedy (policy gradient).
    needs_exploration = False

    def __init__(self, policy: TrainableDraft, config: AlgoConfig, accelerator: Accelerator | None = None) -> None:
        self.policy = policy
        self.config = config
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        module = policy.trainable
        self.parameters = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, weight_decay=config.weight_decay)
        self.module, self.optimizer = self.accelerator.prepare(module, optimizer)
        self.updates = 0
        self.rejected = 0
        self.last_rejection: str | None = None  # why the latest rejected update was refused

    def loss(self, logits: torch.Tensor, batch: TraceBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss for ``logits`` ``(B, k, V)`` on ``batch`` and extra metrics."""
        raise NotImplementedError

    def batch(self, traces, weights=None, pad_id: int = 0) -> TraceBatch:
        """Pad traces the way this algorithm's drafter consumes them."""
        return TraceBatch.from_traces(
            traces,
            max_context=self.config.max_context,
            pad_id=pad_id,
            weights=weights,
            with_features=self.policy.uses_target_features,
        )

    def update(self, batch: TraceBatch) -> dict[str, float]:
        """One optimiser step on ``batch``; returns ``losses/*`` and ``update/*`` metrics."""
        self.module.train()
        try:
            batch = batch.to(self.accelerator.device)
            if self.config.context_lm_coef > 0:
                logits, context_logits = self.module(batch, with_context=True)
            else:
                logits, context_logits = self.module(batch), None
            loss, metrics = self.loss(logits, batch)
            if context_logits is not None:
                context_loss = context_cross_entropy(context_logits, batch)
                metrics["losses/context_ce"] = float(context_loss.detach())
                loss = loss + self.config.context_lm_coef * context_loss
            with torch.no_grad():
                target, valid = batch.target_probs.to(logits.device), batch.valid_mask.to(logits.device)
                metrics["losses/forward_kl"] = float(forward_kl(logits, target, valid))
                metrics["losses/tv"] = float(total_variation(logits, target, valid))
            metrics["losses/loss"] = float(loss.detach())
            if not torch.isfinite(loss):
                return self._reject(metrics, "non-finite loss")
            self.accelerator.backward(loss)
            grad_norm = self._grad_norm()
            metrics["update/grad_norm"] = grad_norm
            if not math.isfinite(grad_norm):
                return self._reject(metrics, "non-finite gradient")
            if self.config.max_grad_norm > 0:
                self.accelerator.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
            self.optimizer.step()
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            self.module.eval()
        self.updates += 1
        metrics["update/rejected"] = 0.0
        return metrics

    def _grad_norm(self) -> float:
        norms = [p.grad.detach().norm() for p in self.parameters if p.grad is not None]
        return float(torch.stack(norms).norm()) if norms else 0.0

    def _reject(self, metrics: dict[str, float], reason: str) -> dict[str, float]:
        self.rejected += 1
        self.last_rejection = reason
        metrics["update/rejected"] = 1.0
        metrics["update/rejected_total"] = float(self.rejected)
        return metrics
