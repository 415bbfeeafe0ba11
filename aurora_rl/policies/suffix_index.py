"""A counted suffix trie of bounded depth over token sequences: what suffix decoding matches in.

Every substring of length <= ``max_depth`` of every stored sequence is a path from the
root; a node's ``count`` is how many times its path occurs. Continuation frequencies are
therefore the children's counts, and "the longest suffix of the context seen before" is
the deepest path the context's tail walks down (a suffix of a stored substring is stored
too, so match length is monotone and found by binary search).

Appending a token to a sequence extends each of its open suffixes (at most
``max_depth``) by one node: O(max_depth) dictionary updates, no rebuild. Memory is
bounded by ``max_tokens``: when the stored tokens would exceed it, whole sequences are
evicted oldest first (FIFO) by replaying them with decremented counts, so nodes never
exceed ``max_tokens * max_depth``. Not thread-safe by itself; the drafter holds a lock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence


class Node:
    __slots__ = ("count", "children")

    def __init__(self) -> None:
        self.count = 0
        self.children: dict[int, Node] = {}


@dataclass
class _Stored:
    tokens: list[int] = field(default_factory=list)
    open: list[Node] = field(default_factory=list)  # nodes of the suffixes ending at the end, by depth


@dataclass(frozen=True)
class Match:
    """Where a context's tail sits in the trie: the node of its last ``length`` tokens."""

    node: Node
    length: int


class SuffixIndex:
    """Sequences by id, their counted suffix trie, and FIFO eviction.

    Args:
        max_depth: longest substring stored (match length + speculation length).
        max_tokens: most tokens held over all sequences (None = unbounded, for a single
            request's own tokens).
    """

    def __init__(self, max_depth: int, max_tokens: int | None = None) -> None:
        if max_depth < 2:
            raise ValueError(f"max_depth must be >= 2 (one token to match, one to propose), got {max_depth}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
        self.max_depth = max_depth
        self.max_tokens = max_tokens
        self.root = Node()
        self._sequences: OrderedDict[int, _Stored] = OrderedDict()  # oldest first
        self.num_tokens = 0
        self.num_nodes = 0
        self.evicted = 0

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self._sequences

    @property
    def num_sequences(self) -> int:
        return len(self._sequences)

    def sequences(self) -> list[tuple[int, list[int]]]:
        """``(id, tokens)`` of every stored sequence, oldest first (what a snapshot keeps)."""
        return [(seq_id, list(stored.tokens)) for seq_id, stored in self._sequences.items()]

    def extend(self, seq_id: int, tokens: Sequence[int]) -> None:
        """Append ``tokens`` to sequence ``seq_id`` (created if new), evicting the oldest
        other sequences while the budget is exceeded. Tokens that would not fit even with
        every other sequence evicted are not stored."""
        stored = self._sequences.get(seq_id)
        if stored is None:
            stored = self._sequences[seq_id] = _Stored()
        keep = self.max_depth - 1  # an open suffix at full depth cannot grow
        for token in tokens:
            if self.max_tokens is not None and self.num_tokens >= self.max_tokens:
                self._evict_oldest(but=seq_id)
                if self.num_tokens >= self.max_tokens:
                    return
            token = int(token)
            grown = []
            for parent in [self.root, *stored.open]:
                child = parent.children.get(token)
                if child is None:
                    child = parent.children[token] = Node()
                    self.num_nodes += 1
                child.count += 1
                grown.append(child)
            stored.open = grown[:keep]
            stored.tokens.append(token)
            self.num_tokens += 1

    def remove(self, seq_id: int) -> None:
        """Forget sequence ``seq_id``: every suffix path it added loses one count; nodes
        left at zero are deleted."""
        stored = self._sequences.pop(seq_id)
        tokens = stored.tokens
        for start in range(len(tokens)):
            node = self.root
            for token in tokens[start : start + self.max_depth]:
                child = node.children[token]
                child.count -= 1
                if child.count == 0:
                    del node.children[token]
                    self.num_nodes -= 1
                node = child
        self.num_tokens -= len(tokens)
        self.evicted += 1

    def _evict_oldest(self, but: int) -> None:
        for seq_id in self._sequences:
            if seq_id != but:
                self.remove(seq_id)
                return

    def walk(self, pattern: Sequence[int]) -> Node | None:
        """The node of ``pattern`` (a path from the root), or None if it never occurred."""
        node = self.root
        for token in pattern:
            node = node.children.get(token)
            if node is None:
                return None
        return node

    def longest_match(self, context: Sequence[int], max_length: int) -> Match | None:
        """The deepest node reached by a suffix of ``context`` of at most ``max_length``
        tokens that has a continuation; None when not even its last token has one."""
        low, high = 0, min(len(context), max_length, self.max_depth - 1)
        best = None
        while low < high:  # invariant: a suffix of length `low` matches (0 trivially)
            middle = (low + high + 1) // 2
            node = self.walk(context[len(context) - middle :])
            if node is not None and node.children:
                low, best = middle, node
            else:
                high = middle - 1
        return None if best is None else Match(best, low)
