"""The EAGLE-style drafter: one decoder layer on top of the target's own hidden states.

The head's math and its training pass are in :mod:`aurora_rl.policies.eagle_model`. Here:
a session per sequence (the head's KV cache, the true features not fed yet), the batched
draft loop, and the drafter a learner trains and a server publishes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from aurora_rl.core.batch import TraceBatch
from aurora_rl.core.draft import BatchesThroughSessions, DraftAsk, Proposal, ProposesAsOneRow, propose_autoregressively_batched
from aurora_rl.core.fp16_weights import Fp16Linear, use_fp16_weights
from aurora_rl.core.target import Target
from aurora_rl.policies.draft_vocab import check_draft_vocab
from aurora_rl.policies.checkpoint import load_weights_strict, read_manifest, save_weights, write_manifest
from aurora_rl.policies.eagle_layer import EagleConfig, EagleHead, KVCache, step_ragged
from aurora_rl.policies.eagle_model import EagleModel


def _normalised_layers(layers: Sequence[int], num_states: int) -> tuple[int, ...]:
    return tuple(layer % num_states for layer in layers)


def check_target_layers(head_layers: Sequence[int], target: Target) -> None:
    """Refuse a Target that records other hidden states than the head reads."""
    num_states = target.model.config.num_hidden_layers + 1
    if _normalised_layers(head_layers, num_states) != _normalised_layers(target.hidden_layers, num_states):
        raise ValueError(
            f"the EAGLE head reads target hidden_layers {tuple(head_layers)} but the Target records "
            f"hidden_layers {tuple(target.hidden_layers)}; build it with "
            f"Target(model, hidden_layers={tuple(head_layers)})"
        )


class EagleSession(ProposesAsOneRow):
    """Draft state of one sequence: committed tokens, the head's cache, unfed true features.

    Cache entry ``t`` is the pair at position ``t``. The first ``fed`` entries are built
    from the target's true features; proposing appends entries built from the head's own
    outputs, which are dropped at the next verdict: accepted tokens are re-fed with the
    target's true features, the input the head is trained to read.
    """

    def __init__(self, model: EagleModel, context_ids: torch.Tensor, target_hidden: torch.Tensor) -> None:
        self.model = model
        self.cache = KVCache()
        self.tokens: list[int] = [int(t) for t in context_ids]
        self.fed = 0
        # The true feature preceding each unfed token; the zero row stands for g_{-1} = 0
        # (proj has no bias, so it maps to a zero input).
        start = torch.zeros(1, target_hidden.shape[-1], dtype=model.dtype)
        self._pending = torch.cat([start, target_hidden.to(model.dtype)])
        self._last: torch.Tensor | None = None  # (d,) output at the last fed true position
        self._proposed: list[int] = []

    def _feed_true(self) -> None:
        """Append the pending true pairs to the cache in one pass."""
        head = self.model.head
        ids = torch.tensor(self.tokens[self.fed :], dtype=torch.long)
        positions = torch.arange(self.fed, len(self.tokens))
        previous = head.project(self._pending)
        out = head(self.model.embed(ids)[None], previous[None], positions[None], self.cache)
        self._last = out[0, -1]
        self.fed = len(self.tokens)
        self._pending = self._pending[:0]

    def ready_to_draft(self) -> tuple[torch.Tensor, int]:
        """Drop the last draft's entries, feed the pending true pairs, and return the output
        to draft from and the position of the first proposal."""
        self.cache.rollback(self.fed)  # proposing twice without a verdict redrafts
        if len(self._pending):
            self._feed_true()
        assert self._last is not None, "a session always has a fed token to draft from"
        return self._last, len(self.tokens)

    def propose_rows(self, sessions, asks) -> list[Proposal]:
        return propose_for_sessions(self.model, sessions, asks)

    def expect_verdict_on(self, proposal: Proposal) -> None:
        """Remember the proposal the next ``commit`` judges."""
        self._proposed = proposal.tokens.tolist()

    def commit(self, num_accepted: int, next_token: int, target_hidden: torch.Tensor | None) -> None:
        if target_hidden is None or target_hidden.shape != (num_accepted + 1, self._pending.shape[-1]):
            got = None if target_hidden is None else tuple(target_hidden.shape)
            raise ValueError(
                f"an EAGLE session needs the target's features at the kept positions, shape "
                f"({num_accepted + 1}, {self._pending.shape[-1]}); got {got}"
            )
        if num_accepted > len(self._proposed):
            raise ValueError(
                f"{num_accepted} proposals accepted but only {len(self._proposed)} were proposed"
            )
        self.cache.rollback(self.fed)
        self.tokens += self._proposed[:num_accepted] + [int(next_token)]
        self._pending = torch.cat([self._pending, target_hidden.to(self.model.dtype)])
        self._proposed = []


def propose_for_sessions(model: EagleModel, sessions: Sequence[EagleSession], asks: Sequence[DraftAsk]) -> list[Proposal]:
    """The draft loop of one or many sessions: each feeds its pending true pairs alone
    (ragged lengths), then every round runs the head once for all rows still drafting, each
    reading its own previous output and the token it drew (:func:`step_ragged`)."""
    with torch.inference_mode():
        outs, positions = map(list, zip(*(session.ready_to_draft() for session in sessions)))

        def next_logits(rows: list[int], fed: list[int] | None) -> list[torch.Tensor]:
            if fed is not None:
                ids = torch.tensor(fed)[:, None]
                at = torch.tensor([[positions[row]] for row in rows])
                previous = torch.stack([outs[row] for row in rows])[:, None]
                caches = [sessions[row].cache for row in rows]
                new = step_ragged(model.head, model.embed(ids), previous, at, caches)[:, 0]
                for index, row in enumerate(rows):
                    outs[row], positions[row] = new[index], positions[row] + 1
            return list(model.logits(torch.stack([outs[row] for row in rows])))

        proposals = propose_autoregressively_batched(next_logits, asks)
    for session, proposal in zip(sessions, proposals):
        session.expect_verdict_on(proposal)
    return proposals


class EagleDrafter(BatchesThroughSessions):
    """An EAGLE-style head drafting from the target's hidden states.

    Args:
        head: the trainable head (its config fixes which target layers it reads).
        target_model: the target whose input embedding and LM head the head shares, frozen.
        version: the published weight version.
    """

    kind = "eagle"
    uses_target_features = True

    def __init__(self, head: EagleHead, target_model: PreTrainedModel, version: int = 0) -> None:
        self.model = EagleModel(head, target_model)
        self.target_model = target_model
        self.version = version
        # (the head's parameter versions it was built from, the frozen fp16-kernel copy)
        self._fp16_copy: tuple[tuple[int, ...], EagleModel] | None = None

    @classmethod
    def from_target(
        cls,
        target: PreTrainedModel | Target,
        hidden_layers: Sequence[int] | None = None,
        num_heads: int | None = None,
        intermediate_size: int | None = None,
        seed: int = 0,
        draft_vocab: torch.Tensor | None = None,
    ) -> "EagleDrafter":
        """A fresh head for ``target`` (deterministic under ``seed``).

        ``hidden_layers`` defaults to the Target's own (or ``(-1,)`` for a bare model);
        ``num_heads`` and ``intermediate_size`` default to the target's layer shape.
        ``draft_vocab`` (increasing distinct target token ids, see
        :func:`~aurora_rl.policies.draft_vocab.choose_draft_vocab`) gives the head a reduced
        draft vocabulary, its LM head starting as those rows of the target's.
        """
        if isinstance(target, Target):
            layers = tuple(target.hidden_layers if hidden_layers is None else hidden_layers)
            check_target_layers(layers, target)
        else:
            layers = (-1,) if hidden_layers is None else tuple(hidden_layers)
            target = Target(target, layers)  # validates the layer indices
        model_config = target.model.config
        config = EagleConfig(
            hidden_layers=layers,
            hidden_size=model_config.hidden_size,
            vocab_size=target.vocab_size,
            num_heads=num_heads or model_config.num_attention_heads,
            intermediate_size=intermediate_size or model_config.intermediate_size,
            rms_norm_eps=getattr(model_config, "rms_norm_eps", 1e-6),
            draft_vocab_size=0 if draft_vocab is None else len(draft_vocab),
            # EAGLE-3's fusion: raw residual streams of low/mid/high layers differ in scale by
            # 10x and dwarf the token embedding (SmolLM2: rms 3, 17, 35 vs 0.13), so each is
            # normalised before they are fused and paired.
            fused_norms=draft_vocab is not None,
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            head = EagleHead(config)
            head.reset_parameters()
        if draft_vocab is not None:
            d2t = check_draft_vocab(draft_vocab, target.vocab_size)
            with torch.no_grad():
                head.d2t.copy_(d2t)
                head.lm_head.weight.copy_(target.model.get_output_embeddings().weight[d2t])
        return cls(head.to(target.model.dtype), target.model)

    @property
    def head(self) -> EagleHead:
        return self.model.head

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        return self.head.config.hidden_layers

    @property
    def vocab_size(self) -> int:
        return self.head.config.vocab_size

    @property
    def trainable(self) -> EagleModel:
        """The module a learner optimises: ``forward(batch)`` gives proposal logits, and its
        parameters are the head's only."""
        return self.model

    def start(self, context_ids: torch.Tensor, target_hidden: torch.Tensor | None) -> EagleSession:
        expected = (len(context_ids) - 1, self.head.config.feature_size)
        if target_hidden is None or tuple(target_hidden.shape) != expected:
            got = None if target_hidden is None else tuple(target_hidden.shape)
            raise ValueError(
                f"the EAGLE head needs the target's hidden_layers {self.hidden_layers} features at "
                f"the {expected[0]} processed context positions, shape {expected}; got {got}"
            )
        return EagleSession(self.drafting_model(), context_ids, target_hidden)

    def drafting_model(self) -> EagleModel:
        """The model sessions draft with: the head itself, or, when the target's linears run on
        fbgemm's fp16 kernel (``target_weights: fp16``), a frozen copy of the head whose linears
        run on that kernel too, so a draft's matmuls cost what the target's do (SmolLM2: 29 ->
        16 ms per 4-token draft). The head stays fp32 and trainable for learners, gates and
        checkpoints. The copy is rebuilt when the head's weights have changed in place since
        (an optimizer step, ``load_state_dict``: both bump the tensors' version counters), so
        no session drafts with stale weights."""
        drafts_fp16 = isinstance(self.target_model.get_output_embeddings(), Fp16Linear) and any(
            isinstance(module, nn.Linear) for module in self.head.modules()
        )  # a head whose linears were converted in place (use_fp16_weights) already runs the kernel
        if not drafts_fp16:
            return self.model
        # Inference tensors (made under inference_mode) keep no version counter; they are frozen.
        versions = tuple(-1 if p.is_inference() else p._version for p in self.head.parameters())
        if self._fp16_copy is None or self._fp16_copy[0] != versions:
            frozen = copy.deepcopy(self.head)
            use_fp16_weights(frozen)
            self._fp16_copy = (versions, EagleModel(frozen, self.target_model))
        return self._fp16_copy[1]

    def proposal_logits(self, batch: TraceBatch) -> torch.Tensor:
        """``(B, k, V)`` draft logits at every proposal position, with gradients (see
        ``EagleModel.forward``)."""
        return self.model(batch)

    def clone(self, version: int | None = None) -> "EagleDrafter":
        """An independent copy of the head sharing the same frozen target parts."""
        version = self.version if version is None else version
        return EagleDrafter(copy.deepcopy(self.head), self.target_model, version)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json``, ``model.safetensors`` (the head only) and ``policy.json``."""
        self.head.config.save(directory)
        save_weights(self.head, directory)
        write_manifest(directory, self.kind, self.version)

    @classmethod
    def from_pretrained(cls, directory: str | Path, target: Target) -> "EagleDrafter":
        """Load a saved head onto ``target`` (which must record the head's hidden layers)."""
        manifest = read_manifest(directory, cls.kind)
        config = EagleConfig.load(directory)
        check_target_layers(config.hidden_layers, target)
        drafter = cls(EagleHead(config).to(target.model.dtype), target.model, manifest["version"])
        load_weights_strict(drafter.head, directory)
        return drafter
