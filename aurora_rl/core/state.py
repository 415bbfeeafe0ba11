"""What one decode is: its rule (:class:`DecodeConfig`) and its state (:class:`DecodeState`,
opened by :func:`start_decode`; :func:`sync_session` keeps its draft session on the live version).

The step that advances a state lives in :mod:`aurora_rl.core.spec`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

import torch

from aurora_rl.core.control import ControllerSession, DraftController
from aurora_rl.core.draft import DraftPolicy, DraftSession
from aurora_rl.core.sampling import GREEDY, SamplingParams
from aurora_rl.core.target import Target


@dataclass
class DecodeState:
    """One sequence being decoded.

    Attributes:
        tokens: ``(capacity,)`` long buffer; ``tokens[:length]`` is prompt + generated.
            Traces hold views of it, so entries below ``length`` are never rewritten.
        length: number of valid tokens.
        prompt_len: number of prompt tokens.
        max_new_tokens: the token budget of this request.
        target_cache: the target's KV cache (covers ``tokens[:length - 1]``).
        features: ``(capacity, D)`` target hidden states for positions ``< length - 1``, or
            None when the target records no features.
        session: the draft session in sync with this sequence, and ``session_version`` the
            policy version that opened it (a new version opens a new session).
        controller: this request's draft-length controller session (opened on the first
            step by ``DecodeConfig.controller``), or None.
        lookup_step: whether the current step's proposal is a free lookup that the
            controller neither budgets nor observes (``core/spec.py::_draft_for``).
    """

    request_id: str
    domain: str
    tokens: torch.Tensor
    length: int
    prompt_len: int
    max_new_tokens: int
    eos_token_ids: frozenset[int]
    target_cache: object
    features: torch.Tensor | None = None
    session: DraftSession | None = None
    session_version: int | None = None
    controller: ControllerSession | None = None
    lookup_step: bool = False
    steps: int = 0
    finish_reason: str | None = None  # "eos" | "length"
    created: float = field(default_factory=time.time)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def num_generated(self) -> int:
        return self.length - self.prompt_len

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - self.num_generated

    @property
    def generated(self) -> torch.Tensor:
        return self.tokens[self.prompt_len : self.length]

    @property
    def sequence(self) -> torch.Tensor:
        return self.tokens[: self.length]


def start_decode(
    target: Target,
    prompt_ids: Iterable[int] | torch.Tensor,
    max_new_tokens: int,
    eos_token_ids: Iterable[int] = (),
    max_k: int = 0,
    request_id: str = "",
    domain: str = "",
) -> DecodeState:
    """Prefill the target with all prompt tokens but the last and return the state."""
    prompt = torch.as_tensor(list(prompt_ids) if not torch.is_tensor(prompt_ids) else prompt_ids)
    prompt = prompt.to(torch.long).reshape(-1).cpu()
    if prompt.numel() == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. the BOS token)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    total = prompt.numel() + max_new_tokens
    if total > target.max_positions:
        raise ValueError(
            f"prompt of {prompt.numel()} tokens + max_new_tokens {max_new_tokens} = {total} "
            f"exceeds the target's context of {target.max_positions} positions; shorten the "
            "prompt or lower max_new_tokens"
        )
    vocab = target.vocab_size
    if int(prompt.min()) < 0 or int(prompt.max()) >= vocab:
        raise ValueError(f"prompt token ids must lie in [0, {vocab}), got {prompt.tolist()}")
    capacity = total + max_k + 1
    tokens = torch.zeros(capacity, dtype=torch.long)
    tokens[: prompt.numel()] = prompt
    cache = target.new_cache()
    features = None
    if target.hidden_layers:
        features = torch.zeros(capacity, target.feature_size, dtype=target.model.dtype)
    if prompt.numel() > 1:
        out = target.forward(cache, prompt[:-1])
        if features is not None:
            features[: prompt.numel() - 1] = out.hidden
    return DecodeState(
        request_id=request_id,
        domain=domain,
        tokens=tokens,
        length=prompt.numel(),
        prompt_len=prompt.numel(),
        max_new_tokens=max_new_tokens,
        eos_token_ids=frozenset(int(t) for t in eos_token_ids),
        target_cache=cache,
        features=features,
    )


def sync_session(state: DecodeState, policy: DraftPolicy) -> DraftSession:
    """Return a draft session for ``state`` opened by ``policy``'s current version.

    This is where a hot-swapped draft takes over an in-flight sequence: between steps,
    a session opened by an older version is replaced by one of the new version, started
    from everything the target has kept so far.
    """
    if state.session is None or state.session_version != policy.version:
        hidden = None
        if policy.uses_target_features:
            if state.features is None:
                raise ValueError(
                    "this drafter reads the target's hidden states, but the target records "
                    "none: build the Target with hidden_layers=... matching the drafter"
                )
            hidden = state.features[: state.length - 1]
        state.session = policy.start(state.sequence, hidden)
        state.session_version = policy.version
    return state.session


# Above this vocabulary size traces keep the target's top-K probabilities unless told otherwise.
FULL_PROBS_MAX_VOCAB = 8192
LARGE_VOCAB_TOPK = 64


@dataclass(frozen=True)
class DecodeConfig:
    """How speculative decoding runs.

    Attributes:
        k: proposals per verify step (the lookahead).
        sampling: the target's decoding rule (greedy or temperature/top-k/top-p).
        explore_temperature: when decoding is greedy, let the draft *sample* its proposals
            at this temperature instead of taking its argmax (still lossless; policy
            gradient needs it). None = argmax.
        trace_topk: keep the target's distributions in traces as their top-K entries
            (None = the full vocabulary up to ``FULL_PROBS_MAX_VOCAB`` tokens, and the top
            ``LARGE_VOCAB_TOPK`` beyond: a full row of a 49k vocabulary is 200 KB per position).
        draft_confidence: stop drafting early, after a proposal the draft gives less than
            this probability (None = always ``k`` proposals). Lossless either way; it saves
            the draft forwards (and verify width) of proposals that would be rejected.
        controller: a draft-length controller (``core/control.py``) that decides each
            request's proposals per step, at most ``k`` (None = always ``k``, or the
            ``draft_confidence`` stop). Lossless: it only moves verification.
        record_target_probs: keep the target's distributions in traces (learners, gates and
            rollback monitors read them). False when nothing learns from the traces (a
            static or target-only arm): ``Trace.target_probs`` is None and each step skips a
            softmax and a copy of ``(k + 1, V)`` floats.
    """

    k: int = 4
    sampling: SamplingParams = GREEDY
    explore_temperature: float | None = None
    trace_topk: int | None = None
    draft_confidence: float | None = None
    controller: DraftController | None = None
    record_target_probs: bool = True

    def __post_init__(self) -> None:
        # "field=value must ..." so a config section can name its own key: "decode.k=0 must ...".
        if self.k < 1:
            raise ValueError(f"k={self.k} must be >= 1 (proposals per verify step)")
        if self.explore_temperature is not None and not self.explore_temperature > 0:
            raise ValueError(f"explore_temperature={self.explore_temperature} must be > 0 or None")
        if self.trace_topk is not None and self.trace_topk < 1:
            raise ValueError(f"trace_topk={self.trace_topk} must be >= 1 or null (full vocabulary)")
        if self.draft_confidence is not None and not 0.0 < self.draft_confidence < 1.0:
            raise ValueError(f"draft_confidence={self.draft_confidence} must be in (0, 1) or null")
        if self.controller is not None and self.draft_confidence is not None:
            raise ValueError(
                f"draft_confidence={self.draft_confidence} and a controller both decide when drafting stops: give "
                "one (the 'confidence' controller applies a fixed threshold)"
            )

    def trace_topk_for(self, vocab_size: int) -> int | None:
        """The top-K traces keep for a target of ``vocab_size`` tokens (None = all of them)."""
        if self.trace_topk is None and vocab_size > FULL_PROBS_MAX_VOCAB:
            return LARGE_VOCAB_TOPK
        return self.trace_topk

    @property
    def draft_sampling(self) -> SamplingParams:
        """How the draft picks its proposals.

        When the target samples, the draft samples from the identically shaped
        distribution (the standard lossless recipe). When the target is greedy any
        proposals are lossless, so the draft takes its argmax, or samples at
        ``explore_temperature`` when a learning algorithm wants exploration.
        """
        if not self.sampling.greedy:
            return self.sampling
        if self.explore_temperature:
            return SamplingParams(temperature=self.explore_temperature)
        return GREEDY
