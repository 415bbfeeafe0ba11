"""Decoding parameters and the one logits -> probabilities transform.

Speculative sampling is lossless only if the draft distribution ``q`` and the target
distribution ``p`` are shaped by *exactly* the same temperature / top-k / top-p transform.
Both sides therefore call :func:`probs_from_logits` with the same :class:`SamplingParams`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen from the target's distribution.

    Attributes:
        temperature: 0 means greedy (argmax); > 0 divides the logits before softmax.
        top_k: keep only the ``top_k`` most likely tokens (0 disables).
        top_p: keep the smallest set of most likely tokens whose mass reaches ``top_p``
            (1.0 disables).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        # "field=value must ..." so a config section can name its own key: "decode.top_k=-1 must ...".
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = SamplingParams()


def probs_from_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Turn raw logits ``(..., V)`` into the distribution decoding samples from ``(..., V)``.

    Greedy returns the one-hot argmax (the zero-temperature limit), so callers can treat
    both modes uniformly. Computed in float32 whatever the model dtype.
    """
    if params.greedy:
        logits = logits.float()
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    return logits_under(logits, params).softmax(-1)


def logits_under(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Raw logits ``(..., V)`` as a sampled rule sees them, float32: divided by the temperature,
    ``-inf`` outside top-k / top-p. Their softmax is what decoding samples from; unlike its log,
    they carry a finite gradient to every kept token (the losses train through them)."""
    if params.greedy:
        raise ValueError("logits_under is for a sampled rule; greedy decoding keeps only the argmax")
    logits = logits.float()
    # Shift by the maximum before dividing: the softmax is the same, and a tiny temperature
    # (1e-40) sends the others to -inf and the maximum to 0 instead of overflowing to
    # inf - inf = NaN. Below float32's range the division runs in float64.
    shifted = logits - logits.amax(-1, keepdim=True).detach()
    if params.temperature < torch.finfo(torch.float32).tiny:
        logits = (shifted.double() / params.temperature).float()
    else:
        logits = shifted / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth_value = logits.topk(params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_value, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # Drop a token when the mass strictly before it already reaches top_p; the most
        # likely token always survives.
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        drop_sorted = mass_before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits
