"""The suffix drafter (SuffixDecoding, Oliaro et al. 2024): training-free and online.

Two counted suffix tries (:mod:`aurora_rl.policies.suffix_index`):

- a **global** one over the outputs the target has produced for every request, appended
  as each step is committed (so concurrent and later requests use them at once), bounded
  by ``max_cached_tokens`` with FIFO eviction of the oldest requests;
- a **per-request** one over the request's own prompt and output.

Each step matches the longest tail of the sequence in both (capped so ``k`` tokens of
continuation fit), reads the most frequent continuation off each (``suffix_paths``), and
proposes the better-scoring one, up to ``min(k, max_spec_factor * match_len +
max_spec_offset)`` tokens, stopping where the running probability falls below
``min_token_prob``. When the target samples, the source (global or request) is chosen
by its greedy score -- before any draw -- and every token is drawn from the empirical
``q`` at its node, which the proposal carries for the rejection rule: lossless.

The global trie is the drafter's state: ``clone`` shares it (a version is not a snapshot
of the traffic), ``save_pretrained`` writes its sequences and ``from_pretrained`` replays
them into an identical trie.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from aurora_rl.core.draft import ProposesByLookup, ProposesRowByRow, StopRule
from aurora_rl.core.sampling import SamplingParams
from aurora_rl.policies.checkpoint import read_manifest, write_manifest
from aurora_rl.policies.suffix_index import SuffixIndex
from aurora_rl.policies.suffix_paths import Path as SuffixPath
from aurora_rl.policies.suffix_paths import greedy_path, proposal_probs, sampled_path, truncate_unconfident
from aurora_rl.settings import documented

INDEX_FILE = "suffix_index.json"


@dataclass
class SuffixConfig:
    max_depth: int = documented("longest substring the tries hold: match length + speculation length (must exceed decode.k)", 32)
    max_cached_tokens: int = documented("most output tokens the global trie holds; the oldest requests are evicted first (FIFO)", 200_000)
    max_spec_factor: float = documented("propose at most max_spec_factor * match_len + max_spec_offset tokens (and at most decode.k)", 1.0)
    max_spec_offset: float = documented("see max_spec_factor", 0.0)
    min_token_prob: float = documented("stop speculating where the path's empirical probability would fall below this", 0.1)
    use_request: bool = documented("also match in the request's own prompt + output (the per-request trie)", True)

    def __post_init__(self) -> None:
        if self.max_depth < 2:
            raise ValueError(f"drafter.suffix.max_depth={self.max_depth} must be >= 2 (one token to match, one to propose)")
        if self.max_cached_tokens < 1:
            raise ValueError(f"drafter.suffix.max_cached_tokens={self.max_cached_tokens} must be >= 1")
        if not self.max_spec_factor > 0:
            raise ValueError(f"drafter.suffix.max_spec_factor={self.max_spec_factor} must be > 0")
        if not 0 <= self.min_token_prob < 1:
            raise ValueError(f"drafter.suffix.min_token_prob={self.min_token_prob} must be in [0, 1)")


class SuffixSession(ProposesByLookup):
    """One request: its own trie, and its output's sequence in the global trie."""

    def __init__(self, drafter: "SuffixDrafter", context_ids: torch.Tensor) -> None:
        self.drafter = drafter
        self.tokens: list[int] = [int(t) for t in context_ids]
        self.local = SuffixIndex(drafter.config.max_depth) if drafter.config.use_request else None
        if self.local is not None:
            self.local.extend(0, self.tokens)
        self.seq_id = next(drafter._ids)
        self._proposed: list[int] = []

    def best_path(self, k: int) -> tuple[SuffixIndex | None, object, int, float]:
        """The source to speculate from: ``(trie, matched node, token limit, greedy score)``
        of the better greedy path, or ``(None, None, 0, 0.0)`` when neither matches."""
        config = self.drafter.config
        best = (None, None, 0, 0.0)
        for index in (self.local, self.drafter.index):
            if index is None:
                continue
            match = index.longest_match(self.tokens, config.max_depth - k)
            if match is None:
                continue
            limit = min(k, math.floor(config.max_spec_factor * match.length + config.max_spec_offset))
            path = greedy_path(match.node, limit, config.min_token_prob)
            if path.score > best[3]:
                best = (index, match.node, limit, path.score)
        return best

    def score(self, k: int) -> float:
        """Expected accepted tokens of the greedy proposal (0 without a match): what a
        hybrid compares against its other drafter."""
        with self.drafter.lock:
            return self.best_path(k)[3]

    def lookup(self, k: int, sampling: SamplingParams, generator: torch.Generator | None,
               min_confidence: StopRule) -> tuple[list[int], torch.Tensor]:  # fmt: skip
        min_prob, vocab = self.drafter.config.min_token_prob, self.drafter.vocab_size
        with self.drafter.lock:  # the global trie grows on the decode thread, snapshots read it elsewhere
            index, node, limit, _ = self.best_path(k)
            if index is None:
                path = SuffixPath([], [], 0.0)
            elif sampling.greedy:
                path = truncate_unconfident(greedy_path(node, limit, min_prob), min_confidence, vocab)
            else:
                path = sampled_path(node, limit, min_prob, min_confidence, generator, vocab)
        return path.tokens, proposal_probs(path, self.drafter.vocab_size, one_hot=sampling.greedy)

    def extend(self, kept: list[int]) -> None:
        self.tokens += kept
        if self.local is not None:
            self.local.extend(0, kept)
        self.drafter.add_output(self.seq_id, kept)


class SuffixDrafter(ProposesRowByRow):
    """A training-free drafter over a global trie of served outputs (see the module doc).

    Args:
        vocab_size: the target's vocabulary size (proposal distributions have this width).
        config: trie depth and budget, adaptive length, probability cutoff.
        version: constant unless set (nothing is trained).
    """

    kind = "suffix"
    uses_target_features = False

    def __init__(self, vocab_size: int, config: SuffixConfig = SuffixConfig(), version: int = 0,
                 index: SuffixIndex | None = None, lock: threading.Lock | None = None) -> None:  # fmt: skip
        self.vocab_size = vocab_size
        self.config = config
        self.version = version
        self.index = index if index is not None else SuffixIndex(config.max_depth, config.max_cached_tokens)
        self.lock = lock if lock is not None else threading.Lock()
        self._ids = itertools.count(max((i for i, _ in self.index.sequences()), default=-1) + 1)

    def start(self, context_ids: torch.Tensor, target_hidden: torch.Tensor | None = None) -> SuffixSession:
        return SuffixSession(self, context_ids)

    def add_output(self, seq_id: int, tokens: Sequence[int]) -> None:
        with self.lock:
            self.index.extend(seq_id, tokens)

    def clone(self, version: int | None = None) -> "SuffixDrafter":
        """The same drafter under another version number; the global trie is shared."""
        version = self.version if version is None else version
        twin = SuffixDrafter(self.vocab_size, self.config, version, self.index, self.lock)
        twin._ids = self._ids
        return twin

    def save_pretrained(self, directory: str | Path) -> None:
        """``policy.json`` + ``suffix_index.json`` (the config and the stored sequences,
        oldest first: replaying them rebuilds the same trie)."""
        with self.lock:
            sequences = self.index.sequences()
        write_manifest(directory, self.kind, self.version, vocab_size=self.vocab_size)
        state = {"config": asdict(self.config), "sequences": sequences}
        (Path(directory) / INDEX_FILE).write_text(json.dumps(state))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "SuffixDrafter":
        manifest = read_manifest(directory, cls.kind)
        state = json.loads((Path(directory) / INDEX_FILE).read_text())
        config = SuffixConfig(**state["config"])
        index = SuffixIndex(config.max_depth, config.max_cached_tokens)
        for seq_id, tokens in state["sequences"]:
            index.extend(seq_id, tokens)
        return cls(manifest["vocab_size"], config, manifest["version"], index)
