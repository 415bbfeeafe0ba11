"""Reading proposals off a suffix trie: the most frequent continuation, or a sampled one.

A node's children counts, normalised, are the empirical next-token distribution ``q``
after the matched pattern; a path's probability is the product of its ``q`` steps, and
its *score* -- the sum of the running products -- is the expected number of its tokens
the target would accept if ``q`` were right. Speculation stops before a step whose best
token would push the running product below ``min_token_prob`` (decided before the draw,
so a sampled token is never dropped for being unlikely: that would bias the proposal
away from ``q`` and break the rejection rule's losslessness).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aurora_rl.core.draft import StopRule, stop_drafting_on_counts
from aurora_rl.policies.suffix_index import Node


@dataclass(frozen=True)
class Path:
    """A speculation: ``tokens`` and, per token, the distribution ``q`` it came from as
    ``(ids, counts)`` of the children it was chosen among."""

    tokens: list[int]
    choices: list[tuple[list[int], list[int]]]
    score: float


def _distribution(node: Node) -> tuple[list[int], list[int]]:
    ids = list(node.children)
    return ids, [node.children[t].count for t in ids]


def greedy_path(node: Node, limit: int, min_token_prob: float) -> Path:
    """Follow the most frequent child while the running probability stays above the bar."""
    tokens, choices, p, score = [], [], 1.0, 0.0
    while len(tokens) < limit and node.children:
        ids, counts = _distribution(node)
        best = max(range(len(ids)), key=counts.__getitem__)  # first of equals: deterministic
        q = counts[best] / sum(counts)
        if p * q < min_token_prob:
            break
        p *= q
        score += p
        tokens.append(ids[best])
        choices.append((ids, counts))
        node = node.children[ids[best]]
    return Path(tokens, choices, score)


def sampled_path(
    node: Node, limit: int, min_token_prob: float, stop_rule: StopRule, generator: torch.Generator | None,
    vocab_size: int,
) -> Path:
    """Draw each token from ``q`` at its node; stop before a step that cannot stay above
    ``min_token_prob`` or after a token the stop rule stops at (a float: ``q`` below it)."""
    tokens, choices, p, score = [], [], 1.0, 0.0
    while len(tokens) < limit and node.children:
        ids, counts = _distribution(node)
        total = sum(counts)
        if p * max(counts) / total < min_token_prob:
            break
        pick = int(torch.multinomial(torch.tensor(counts, dtype=torch.float64), 1, generator=generator))
        q = counts[pick] / total
        p *= q
        score += p
        tokens.append(ids[pick])
        choices.append((ids, counts))
        node = node.children[ids[pick]]
        if len(tokens) < limit and stop_drafting_on_counts(stop_rule, len(tokens) - 1, ids, counts, ids[pick], vocab_size):
            break
    return Path(tokens, choices, score)


def truncate_unconfident(path: Path, stop_rule: StopRule, vocab_size: int) -> Path:
    """Cut a greedy path after the first token the stop rule stops at (that token kept).
    The rule sees every token but the path's last, in order, as a drafting loop would show it."""
    if stop_rule is None:
        return path
    for i, (ids, counts) in enumerate(path.choices[:-1]):
        if stop_drafting_on_counts(stop_rule, i, ids, counts, path.tokens[i], vocab_size):
            return Path(path.tokens[: i + 1], path.choices[: i + 1], path.score)
    return path


def proposal_probs(path: Path, vocab_size: int, one_hot: bool) -> torch.Tensor:
    """``(n, V)`` rows: one-hot on the chosen token (greedy), or the ``q`` it was drawn from."""
    probs = torch.zeros(len(path.tokens), vocab_size)
    for row, (token, (ids, counts)) in enumerate(zip(path.tokens, path.choices)):
        if one_hot:
            probs[row, token] = 1.0
        else:
            probs[row, ids] = torch.tensor(counts, dtype=torch.float32) / sum(counts)
    return probs
