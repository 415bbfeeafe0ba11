"""Prompt lookup decoding (Saxena 2023; transformers' ``prompt_lookup_num_tokens``): the
simplest training-free drafter.

The last ``n`` tokens of the sequence (``n`` from ``max_ngram`` down to ``min_ngram``) are
looked up in the request's own earlier tokens -- prompt and output -- and the tokens that
followed their most recent earlier occurrence are proposed. Proposals are deterministic,
so each comes with a one-hot ``q`` (the rejection rule then accepts it with probability
``p(token)``: lossless). Per session, an index from every n-gram to the position after its
latest occurrence is updated as tokens are committed: O(max_ngram) per token, O(1) lookups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from aurora_rl.core.draft import ProposesByLookup, ProposesRowByRow, StopRule, stop_drafting_on_counts
from aurora_rl.core.sampling import SamplingParams
from aurora_rl.policies.checkpoint import read_manifest, write_manifest
from aurora_rl.settings import documented


@dataclass
class PromptLookupConfig:
    max_ngram: int = documented("longest n-gram matched (tried first)", 3)
    min_ngram: int = documented("shortest n-gram matched", 1)

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(
                f"drafter.prompt_lookup: need 1 <= min_ngram <= max_ngram, got min_ngram={self.min_ngram}, "
                f"max_ngram={self.max_ngram}"
            )


class PromptLookupSession(ProposesByLookup):
    def __init__(self, config: PromptLookupConfig, vocab_size: int, context_ids: torch.Tensor) -> None:
        self.config = config
        self.vocab_size = vocab_size
        self.tokens: list[int] = []
        self.after: dict[tuple[int, ...], int] = {}  # n-gram -> index right after its latest occurrence
        self._proposed: list[int] = []
        self.extend([int(t) for t in context_ids])

    def extend(self, kept: list[int]) -> None:
        # An n-gram is indexed once a token follows it, so a lookup never finds the tail itself.
        for token in kept:
            end = len(self.tokens)
            for n in range(self.config.min_ngram, self.config.max_ngram + 1):
                if end >= n:
                    self.after[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def lookup(self, k: int, sampling: SamplingParams, generator: torch.Generator | None,
               min_confidence: StopRule) -> tuple[list[int], torch.Tensor]:  # fmt: skip
        tokens = self.tokens
        found: list[int] = []
        for n in range(min(self.config.max_ngram, len(tokens)), self.config.min_ngram - 1, -1):
            start = self.after.get(tuple(tokens[len(tokens) - n :]))
            if start is not None:
                found = tokens[start : start + k]
                break
        # One continuation, so q = 1 at every position: a float rule never stops it; a
        # controller's rule still decides (the bandit's k comes in as `k`).
        for position, token in enumerate(found[:-1]):
            if stop_drafting_on_counts(min_confidence, position, [token], [1], token, self.vocab_size):
                found = found[: position + 1]
                break
        probs = torch.zeros(len(found), self.vocab_size)
        probs[torch.arange(len(found)), torch.tensor(found, dtype=torch.long)] = 1.0
        return found, probs


class PromptLookupDrafter(ProposesRowByRow):
    """N-gram lookup within each request; stateless across requests (nothing to save but
    its config)."""

    kind = "prompt_lookup"
    uses_target_features = False

    def __init__(self, vocab_size: int, config: PromptLookupConfig = PromptLookupConfig(), version: int = 0) -> None:
        self.vocab_size = vocab_size
        self.config = config
        self.version = version

    def start(self, context_ids: torch.Tensor, target_hidden: torch.Tensor | None = None) -> PromptLookupSession:
        return PromptLookupSession(self.config, self.vocab_size, context_ids)

    def clone(self, version: int | None = None) -> "PromptLookupDrafter":
        return PromptLookupDrafter(self.vocab_size, self.config, self.version if version is None else version)

    def save_pretrained(self, directory: str | Path) -> None:
        write_manifest(directory, self.kind, self.version, vocab_size=self.vocab_size,
                       max_ngram=self.config.max_ngram, min_ngram=self.config.min_ngram)  # fmt: skip

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "PromptLookupDrafter":
        m = read_manifest(directory, cls.kind)
        return cls(m["vocab_size"], PromptLookupConfig(m["max_ngram"], m["min_ngram"]), m["version"])
