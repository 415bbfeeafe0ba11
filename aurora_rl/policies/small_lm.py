"""The independent small-LM drafter: any small causal LM sharing the target's tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from aurora_rl.core.draft import Proposal
from aurora_rl.core.sampling import SamplingParams, probs_from_logits
from aurora_rl.core.target import RollbackCache, run_cached


def draw(dist: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick a token from ``dist`` ``(V,)``: its argmax when greedy, else a sample."""
    if sampling.greedy:
        return int(dist.argmax())
    return int(torch.multinomial(dist, 1, generator=generator))


class SmallLMSession:
    """Draft state of one sequence: the committed tokens and the drafter's KV cache.

    The cache may lag behind the committed tokens (the target's own tokens are never fed
    to the drafter when they are emitted); ``propose`` catches it up first.
    """

    def __init__(self, model: PreTrainedModel, context_ids: torch.Tensor) -> None:
        self.model = model
        self.cache = RollbackCache(model)
        self.tokens: list[int] = [int(t) for t in context_ids]
        self._proposed: list[int] = []

    def propose(
        self, k: int, sampling: SamplingParams, generator: torch.Generator | None
    ) -> Proposal:
        feed = self.tokens[len(self.cache) :]
        tokens, dists = [], []
        for _ in range(k):
            logits = run_cached(self.model, self.cache, feed).logits[-1]
            dist = probs_from_logits(logits, sampling)
            token = draw(dist, sampling, generator)
            tokens.append(token)
            dists.append(dist)
            feed = [token]
        self._proposed = tokens
        return Proposal(torch.tensor(tokens, dtype=torch.long), torch.stack(dists))

    def commit(self, num_accepted: int, next_token: int, target_hidden: torch.Tensor | None) -> None:
        # The cache holds the proposals fed after the first one was drawn: all but the
        # last. Those that were accepted stay valid; the rest are rolled back.
        kept = min(num_accepted, max(len(self._proposed) - 1, 0))
        self.cache.rollback(min(len(self.cache), len(self.tokens) + kept))
        self.tokens += self._proposed[:num_accepted] + [next_token]
        self._proposed = []


class SmallLMDrafter:
    """A small causal LM proposing ``k`` tokens autoregressively.

    Args:
        model: any HF causal LM whose output vocabulary equals the target's.
        version: the published weight version (bumped by the learner on every publish).
    """

    uses_target_features = False
    kind = "small_lm"

    def __init__(self, model: PreTrainedModel, version: int = 0) -> None:
        self.model = model.eval()
        self.version = version

    @classmethod
    def from_config(cls, config: PretrainedConfig, seed: int = 0) -> "SmallLMDrafter":
        """A freshly initialised drafter (deterministic under ``seed``)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config)
        return cls(model)

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    def start(self, context_ids: torch.Tensor, target_hidden: torch.Tensor | None = None) -> SmallLMSession:
        return SmallLMSession(self.model, context_ids)

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(str(directory))

    @classmethod
    def from_pretrained(cls, directory: str | Path, version: int = 0) -> "SmallLMDrafter":
        return cls(AutoModelForCausalLM.from_pretrained(str(directory)), version)
