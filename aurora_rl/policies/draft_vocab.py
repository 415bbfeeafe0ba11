"""EAGLE-3's reduced draft vocabulary: the target tokens a head may propose, chosen by frequency.

A real target's vocabulary is large (SmolLM2: 49152) and its LM head dominates a one-layer
head's cost; the tokens a serving workload actually emits are a small, skewed subset. So
the head drafts over the ``n`` most frequent target tokens of the training traffic:
``d2t`` maps draft index -> target id (increasing), ``t2d`` is the ``(V,)`` membership mask.
Tokens outside are never proposed, so output stays lossless; they only cost acceptance
when the target emits one (the coverage reported by :func:`coverage`).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


def choose_draft_vocab(
    token_streams: Iterable[Sequence[int] | torch.Tensor],
    size: int,
    vocab_size: int,
    always: Iterable[int] = (),
) -> torch.Tensor:
    """``d2t`` ``(size,)``: the ``size`` most frequent ids of ``token_streams`` plus ``always``
    (special tokens such as EOS, which must stay proposable), increasing.

    Ties break towards the smaller id (deterministic). Ids never seen fill the rest in id order.
    """
    if not 1 <= size <= vocab_size:
        raise ValueError(f"draft vocabulary size must be in [1, {vocab_size}], got {size}")
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for stream in token_streams:
        ids = torch.as_tensor(stream, dtype=torch.long).reshape(-1)
        counts += torch.bincount(ids, minlength=vocab_size).to(torch.float64)[:vocab_size]
    forced = sorted({int(t) for t in always})
    if len(forced) > size:
        raise ValueError(f"{len(forced)} tokens must always be in the draft vocabulary but its size is {size}")
    counts[forced] = float("inf")
    # A stable sort of -counts keeps equal counts in id order.
    order = torch.sort(-counts, stable=True).indices
    return order[:size].sort().values


def check_draft_vocab(d2t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``d2t`` as a long tensor, refused unless 1-D, increasing, distinct and within the vocabulary."""
    d2t = torch.as_tensor(d2t, dtype=torch.long)
    if d2t.ndim != 1 or len(d2t) == 0:
        raise ValueError(f"a draft vocabulary is a non-empty 1-D tensor of target ids, got shape {tuple(d2t.shape)}")
    if int(d2t.min()) < 0 or int(d2t.max()) >= vocab_size or bool((d2t[1:] <= d2t[:-1]).any()):
        raise ValueError(
            f"a draft vocabulary must hold increasing, distinct target ids in [0, {vocab_size}); "
            "build it with choose_draft_vocab"
        )
    return d2t


def t2d(d2t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``(V,)`` bool: which target tokens the draft vocabulary holds."""
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[d2t] = True
    return mask


def coverage(d2t: torch.Tensor, token_streams: Iterable[Sequence[int] | torch.Tensor], vocab_size: int) -> float:
    """The share of the tokens in ``token_streams`` that the draft vocabulary holds."""
    member = t2d(d2t, vocab_size)
    hits = total = 0
    for stream in token_streams:
        ids = torch.as_tensor(stream, dtype=torch.long).reshape(-1)
        hits += int(member[ids].sum())
        total += ids.numel()
    return hits / max(total, 1)
