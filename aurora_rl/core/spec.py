"""The one decode primitive: ``speculate_step``.

Invariant of a :class:`DecodeState` between steps: the target's KV cache covers
``tokens[:length - 1]``; the last token is *pending* (emitted but not yet fed to the
target). A step feeds ``[pending] + proposals`` to the target in one forward pass, which
scores every proposal and the bonus position at once, decides the accepted prefix, appends
it plus the target's own token, and rolls the cache back to the kept tokens.

The Gym env, the offline collector and the serving engine all decode through this file;
``speculate_batch`` runs the same step for many sequences with batched forward passes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from aurora_rl.core.acceptance import Verdict, greedy_verdict, rejection_verdict
from aurora_rl.core.control import ControllerSession, DraftController
from aurora_rl.core.draft import BatchProposer, DraftPolicy, DraftSession, Proposal, StopRule
from aurora_rl.core.ragged import run_cached_ragged
from aurora_rl.core.sampling import GREEDY, SamplingParams, probs_from_logits
from aurora_rl.core.target import ModelOutput, Target
from aurora_rl.core.trace import Trace, store_probs


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


def _no_proposal(vocab_size: int) -> Proposal:
    return Proposal(torch.zeros(0, dtype=torch.long), torch.zeros(0, vocab_size))


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
        if self.k < 1:
            raise ValueError(f"k (proposals per step) must be >= 1, got {self.k}")
        if self.explore_temperature is not None and not self.explore_temperature > 0:
            raise ValueError(
                f"explore_temperature must be > 0 or None, got {self.explore_temperature}"
            )
        if self.trace_topk is not None and self.trace_topk < 1:
            raise ValueError(f"trace_topk must be >= 1 or None (full), got {self.trace_topk}")
        if self.draft_confidence is not None and not 0.0 < self.draft_confidence < 1.0:
            raise ValueError(f"draft_confidence must be in (0, 1) or None, got {self.draft_confidence}")
        if self.controller is not None and self.draft_confidence is not None:
            raise ValueError(
                "draft_confidence and a controller both decide when drafting stops: give one "
                "(the 'confidence' controller applies a fixed threshold)"
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


def _verdict(
    proposal: Proposal, logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
) -> Verdict:
    """The verdict (batch of one) on ``proposal`` given the target's logits ``(k + 1, V)``
    at ``[pending] + proposal``."""
    if sampling.greedy:
        return greedy_verdict(proposal.tokens[None], logits[None])
    shaped = probs_from_logits(logits, sampling)
    return rejection_verdict(proposal.tokens[None], proposal.probs[None], shaped[None], generator)


def _check_fits(state: DecodeState, proposal: Proposal) -> None:
    if state.finished:
        raise RuntimeError(f"request {state.request_id!r} already finished ({state.finish_reason})")
    if len(proposal) > state.remaining - 1:
        raise ValueError(
            f"{len(proposal)} proposals do not fit the remaining budget of {state.remaining} tokens "
            f"(at most {state.remaining - 1} proposals plus the target's own token)"
        )


def _feed(state: DecodeState, proposal: Proposal) -> torch.Tensor:
    """What the target scores in a verify step: the pending token, then the proposals."""
    return torch.cat([state.tokens[state.length - 1 : state.length], proposal.tokens])


def _settle(
    state: DecodeState,
    proposal: Proposal,
    scored: ModelOutput,
    config: DecodeConfig,
    generator: torch.Generator | None,
    draft_version: int,
    session: DraftSession | None,
) -> Trace:
    """Decide the verdict from the target's scores of ``_feed(state, proposal)`` (already
    appended to the state's cache), advance the state, and return the step's trace."""
    context_len = state.length
    verdict = _verdict(proposal, scored.logits, config.sampling, generator)
    hidden = scored.hidden
    num_accepted = int(verdict.num_accepted[0])
    next_token = int(verdict.next_token[0])
    emitted = torch.cat([proposal.tokens[:num_accepted], torch.tensor([next_token])])
    accept_mask = verdict.accept_mask[0].clone()

    eos_hits = [i for i, t in enumerate(emitted.tolist()) if t in state.eos_token_ids]
    if eos_hits:
        # Nothing after EOS exists in the target's own output: cut there, and do not
        # count proposals after an accepted EOS as accepted.
        emitted = emitted[: eos_hits[0] + 1]
        num_accepted = min(num_accepted, eos_hits[0] + 1)
        accept_mask[num_accepted:] = False

    # Keep the target's K/V for [pending] + accepted proposals only.
    state.target_cache.rollback(context_len + num_accepted)
    if state.features is not None and hidden is not None:
        state.features[context_len - 1 : context_len + num_accepted] = hidden[: num_accepted + 1]
    state.tokens[context_len : context_len + len(emitted)] = emitted
    state.length += len(emitted)
    state.steps += 1
    if eos_hits:
        state.finish_reason = "eos"
    elif state.remaining <= 0:
        state.finish_reason = "length"
    if state.controller is not None:
        state.controller.observe(len(proposal), num_accepted)
    if session is not None and not state.finished:
        session.commit(
            num_accepted, next_token, None if hidden is None else hidden[: num_accepted + 1]
        )

    return Trace(
        request_id=state.request_id,
        domain=state.domain,
        step=state.steps - 1,
        draft_version=draft_version,
        context_ids=state.tokens[:context_len],
        proposed=proposal.tokens.clone(),
        draft_logprobs=proposal.logprobs if len(proposal) else torch.zeros(0),
        target_probs=(store_probs(scored.logits.softmax(-1), config.trace_topk_for(scored.logits.shape[-1]))
                      if config.record_target_probs else None),
        accept_mask=accept_mask,
        emitted=emitted,
        context_features=None if state.features is None else state.features[:context_len],
        temperature=config.sampling.temperature,
        wall_time=time.time(),
    )


def verify_step(
    target: Target,
    state: DecodeState,
    proposal: Proposal,
    config: DecodeConfig,
    generator: torch.Generator | None = None,
    draft_version: int = 0,
    session: DraftSession | None = None,
) -> Trace:
    """Verify ``proposal`` on ``state``, advance the state, and return the step's trace.

    The proposal must continue the sequence as it stands and hold at most
    ``state.remaining - 1`` tokens, so the target's own token always fits the budget.
    ``session`` (if given) is told the verdict so it stays in sync.
    """
    _check_fits(state, proposal)
    scored = target.forward(state.target_cache, _feed(state, proposal))
    return _settle(state, proposal, scored, config, generator, draft_version, session)


def _draft_for(state: DecodeState, config: DecodeConfig) -> int:
    """How many proposals this step may draw: ``k``, less near the end of the budget, or
    what the request's controller allows."""
    limit = min(config.k, state.remaining - 1)
    if config.controller is None or limit <= 0:
        return limit
    if state.controller is None:
        state.controller = config.controller.start()
    return max(0, min(limit, state.controller.budget(limit, state.length)))


def _stop_rule(state: DecodeState, config: DecodeConfig) -> StopRule:
    """When drafting stops early this step: the controller's call, else ``draft_confidence``."""
    return state.controller.stop if state.controller is not None else config.draft_confidence


def speculate_step(
    policy: DraftPolicy | None,
    target: Target,
    state: DecodeState,
    config: DecodeConfig,
    generator: torch.Generator | None = None,
) -> Trace:
    """One speculative step: the policy proposes up to ``k`` tokens, the target verifies.

    With ``policy=None`` it is one plain target step (no proposals), which makes
    target-only decoding run through exactly the same code.
    """
    if policy is None:
        return verify_step(target, state, _no_proposal(target.vocab_size), config, generator)
    session = sync_session(state, policy)
    k_step = _draft_for(state, config)
    if k_step > 0:
        proposal = session.propose(k_step, config.draft_sampling, generator, _stop_rule(state, config))
    else:
        proposal = _no_proposal(policy.vocab_size)
    return verify_step(target, state, proposal, config, generator, policy.version, session)


def speculate_batch(
    policy: DraftPolicy | None,
    target: Target,
    states: Sequence[DecodeState],
    configs: Sequence[DecodeConfig],
    generators: Sequence[torch.Generator | None],
) -> list[Trace]:
    """One speculative step of every sequence in ``states``, with batched forward passes.

    The draft proposes for all rows together (round by round, when the policy is a
    :class:`BatchProposer`) and the target verifies every row in one ragged forward
    (:func:`~aurora_rl.core.ragged.run_cached_ragged`). Each row keeps its own decoding
    rule, generator and cache, so row ``i`` advances as
    ``speculate_step(policy, target, states[i], configs[i], generators[i])`` would, and
    its trace equals that step's, up to float reassociation in the batched forwards (the
    equivalence tests pin this, greedy and sampled; see ``core/ragged.py``).

    Raises:
        BatchStepError: see :func:`verify_batch`.
    """
    if not len(states) == len(configs) == len(generators):
        raise ValueError(
            f"{len(states)} states, {len(configs)} configs and {len(generators)} generators: give one of each per row"
        )
    if policy is None:
        proposals = [_no_proposal(target.vocab_size) for _ in states]
        return verify_batch(target, states, proposals, configs, generators)
    sessions = [sync_session(state, policy) for state in states]
    proposals = [_no_proposal(policy.vocab_size) for _ in states]
    budgets = [_draft_for(state, config) for state, config in zip(states, configs)]  # once: controllers decide here
    drafting = [row for row, budget in enumerate(budgets) if budget > 0]
    if drafting:
        ks = [budgets[row] for row in drafting]
        samplings = [configs[row].draft_sampling for row in drafting]
        picked_generators = [generators[row] for row in drafting]
        confidences = [_stop_rule(states[row], configs[row]) for row in drafting]
        if isinstance(policy, BatchProposer) and len(drafting) > 1:
            drafted = policy.propose_batch(
                [sessions[row] for row in drafting], ks, samplings, picked_generators, confidences
            )
        else:
            drafted = [
                sessions[row].propose(k, sampling, generator, confidence)
                for row, k, sampling, generator, confidence in zip(
                    drafting, ks, samplings, picked_generators, confidences
                )
            ]
        for row, proposal in zip(drafting, drafted):
            proposals[row] = proposal
    return verify_batch(target, states, proposals, configs, generators, policy.version, sessions)


class BatchStepError(RuntimeError):
    """Some rows of a batched step failed while being settled; the others advanced.

    ``results[i]`` is row ``i``'s trace, or the exception that row raised (its state is
    as it was before the step, or half-advanced if the failure came late in settling).
    """

    def __init__(self, results: list["Trace | Exception"]) -> None:
        failed = [r for r in results if isinstance(r, Exception)]
        super().__init__(f"{len(failed)} of {len(results)} rows failed: {failed[0]!r}")
        self.results = results


def verify_batch(
    target: Target,
    states: Sequence[DecodeState],
    proposals: Sequence[Proposal],
    configs: Sequence[DecodeConfig],
    generators: Sequence[torch.Generator | None],
    draft_version: int = 0,
    sessions: Sequence[DraftSession | None] | None = None,
) -> list[Trace]:
    """:func:`verify_step` for every row, with one target forward pass for all of them.

    Raises:
        BatchStepError: a row failed after the forward pass; the rows that did not fail
            have advanced and their traces are in the error.
    """
    sessions = sessions if sessions is not None else [None] * len(states)
    if not len(states) == len(proposals) == len(configs) == len(generators) == len(sessions):
        raise ValueError(
            f"{len(states)} states, {len(proposals)} proposals, {len(configs)} configs, {len(generators)} "
            f"generators and {len(sessions)} sessions: give one of each per row"
        )
    for state, proposal in zip(states, proposals):
        _check_fits(state, proposal)
    caches = [state.target_cache for state in states]
    feeds = [_feed(state, proposal) for state, proposal in zip(states, proposals)]
    scored = run_cached_ragged(target.model, caches, feeds, target.hidden_layers)
    results: list[Trace | Exception] = []
    for state, proposal, out, config, generator, session in zip(
        states, proposals, scored, configs, generators, sessions
    ):
        try:  # one row's failure (a drafter's commit, a malformed distribution) is that row's
            results.append(_settle(state, proposal, out, config, generator, draft_version, session))
        except Exception as error:
            results.append(error)
    if any(isinstance(result, Exception) for result in results):
        raise BatchStepError(results)
    return results
