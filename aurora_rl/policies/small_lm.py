"""The independent small-LM drafter: any small causal LM sharing the target's tokenizer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from aurora_rl.core.batch import TraceBatch
from aurora_rl.core.draft import BatchesThroughSessions, DraftAsk, Proposal, ProposesAsOneRow, propose_autoregressively_batched
from aurora_rl.core.ragged import run_cached_ragged
from aurora_rl.core.target import RollbackCache
from aurora_rl.policies.checkpoint import load_weights_strict, read_manifest, save_weights, write_manifest


class SmallLMSession(ProposesAsOneRow):
    """Draft state of one sequence: the committed tokens and the drafter's KV cache.

    The cache may lag behind the committed tokens (the target's own tokens are never fed
    to the drafter when they are emitted); ``propose`` catches it up first.
    """

    def __init__(self, model: PreTrainedModel, context_ids: torch.Tensor) -> None:
        self.model = model
        self.cache = RollbackCache(model)
        self.tokens: list[int] = [int(t) for t in context_ids]
        self._proposed: list[int] = []

    def propose_rows(self, sessions, asks) -> list[Proposal]:
        return propose_for_sessions(self.model, sessions, asks)

    def ready_to_draft(self) -> list[int]:
        """Drop a previous draft's entries (proposing twice without a verdict redrafts) and
        return the committed tokens the cache has not seen yet (at least the last one)."""
        self.cache.rollback(min(len(self.cache), len(self.tokens) - 1))
        return self.tokens[len(self.cache) :]

    def expect_verdict_on(self, proposal: Proposal) -> None:
        """Remember the proposal the next ``commit`` judges."""
        self._proposed = proposal.tokens.tolist()

    def commit(self, num_accepted: int, next_token: int, target_hidden: torch.Tensor | None) -> None:
        # The cache holds the proposals fed after the first one was drawn: all but the
        # last. Those that were accepted stay valid; the rest are rolled back.
        kept = min(num_accepted, max(len(self._proposed) - 1, 0))
        self.cache.rollback(min(len(self.cache), len(self.tokens) + kept))
        self.tokens += self._proposed[:num_accepted] + [next_token]
        self._proposed = []


def propose_for_sessions(model: PreTrainedModel, sessions: Sequence[SmallLMSession], asks: Sequence[DraftAsk]) -> list[Proposal]:
    """The draft loop of one or many sessions: each round feeds every row still drafting in
    one forward (a lone row runs exactly the one-sequence forward, see ``run_cached_ragged``)."""

    def next_logits(rows: list[int], fed: list[int] | None) -> list[torch.Tensor]:
        picked = [sessions[row] for row in rows]
        # first: the committed tokens each cache has not seen yet; then each row's proposal
        feeds = [s.ready_to_draft() for s in picked] if fed is None else [[t] for t in fed]
        return [out.logits[-1] for out in run_cached_ragged(model, [s.cache for s in picked], feeds)]

    proposals = propose_autoregressively_batched(next_logits, asks)
    for session, proposal in zip(sessions, proposals):
        session.expect_verdict_on(proposal)
    return proposals


class TeacherForcedLM(torch.nn.Module):
    """Scores a ``TraceBatch`` with the drafter, teacher-forced along the proposals.

    Shares parameters with the drafter's model. It is the module a learner hands to
    ``accelerate`` (so data-parallel gradient sync sees the whole forward pass).
    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: TraceBatch, with_context: bool = False):
        """``(B, k, V)`` logits at every proposal position, with gradients.

        ``[context window] + proposed[:-1]`` in one pass; the logits after position
        ``W - 1 + i`` predict proposal ``i``. ``with_context=True`` also returns the
        ``(B, W - 1, V)`` logits at window positions ``0 .. W - 2`` (each predicting the next
        context token), free from the same pass.
        """
        width = batch.context_ids.shape[1]
        ids = torch.cat([batch.context_ids, batch.proposed[:, :-1]], dim=1)
        # Invalid proposals sit at the right end, where causal attention already keeps
        # them from influencing earlier positions; only the left padding is masked.
        mask = torch.cat(
            [batch.context_mask, torch.ones_like(batch.proposed[:, :-1], dtype=torch.bool)], dim=1
        )
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        logits = self.model(input_ids=ids, attention_mask=mask.long(), position_ids=positions).logits
        proposal_logits = logits[:, width - 1 : width - 1 + batch.k].float()
        if with_context:
            return proposal_logits, logits[:, : width - 1].float()
        return proposal_logits


class SmallLMDrafter(BatchesThroughSessions):
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

    @classmethod
    def from_target_layers(cls, target_model: PreTrainedModel, num_layers: int) -> "SmallLMDrafter":
        """A self-draft: a copy of the target's first ``num_layers`` decoder layers with its
        embeddings, final norm and LM head (early exit). It shares the target's tokenizer by
        construction, so HF assisted generation can use it as its assistant too, and it is
        an independent copy a learner may train."""
        total = target_model.config.num_hidden_layers
        if not 1 <= num_layers < total:
            raise ValueError(f"num_layers must be in [1, {total - 1}] for a target of {total} layers, got {num_layers}")
        config = copy.deepcopy(target_model.config)
        config.num_hidden_layers = num_layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:num_layers]
        model = AutoModelForCausalLM.from_config(config).to(target_model.dtype)
        kept = model.state_dict().keys()
        model.load_state_dict({name: value for name, value in target_model.state_dict().items() if name in kept})
        return cls(model)

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def trainable(self) -> "TeacherForcedLM":
        """The module a learner optimises; its ``forward(batch)`` gives proposal logits."""
        return TeacherForcedLM(self.model)

    def start(self, context_ids: torch.Tensor, target_hidden: torch.Tensor | None = None) -> SmallLMSession:
        return SmallLMSession(self.model, context_ids)

    def proposal_logits(self, batch: TraceBatch) -> torch.Tensor:
        return self.trainable(batch)

    def clone(self, version: int | None = None) -> "SmallLMDrafter":
        """An independent copy (the learner trains one while the server decodes with another)."""
        return SmallLMDrafter(copy.deepcopy(self.model), self.version if version is None else version)

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.config.save_pretrained(str(directory))
        save_weights(self.model, directory)
        write_manifest(directory, self.kind, self.version)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "SmallLMDrafter":
        manifest = read_manifest(directory, cls.kind)
        config = AutoConfig.from_pretrained(str(directory))
        model = AutoModelForCausalLM.from_config(config)
        load_weights_strict(model, directory)
        return cls(model, manifest["version"])
