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
from typing import Sequence

import torch

from aurora_rl.core.acceptance import Verdict, greedy_verdict, rejection_verdict
from aurora_rl.core.draft import BatchProposer, DraftAsk, DraftPolicy, DraftSession, Proposal, StopRule
from aurora_rl.core.ragged import run_cached_ragged
from aurora_rl.core.sampling import SamplingParams, probs_from_logits
from aurora_rl.core.state import DecodeConfig, DecodeState, start_decode, sync_session  # noqa: F401  (re-exported)
from aurora_rl.core.target import ModelOutput, Target
from aurora_rl.core.trace import Trace, store_probs


def _no_proposal(vocab_size: int) -> Proposal:
    return Proposal(torch.zeros(0, dtype=torch.long), torch.zeros(0, vocab_size))


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
    if state.controller is not None and not state.lookup_step:
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
        top_k=config.sampling.top_k,
        top_p=config.sampling.top_p,
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


def _draft_for(state: DecodeState, config: DecodeConfig, session: DraftSession) -> int:
    """How many proposals this step may draw: ``k``, less near the end of the budget, or
    what the request's controller allows.

    A step whose proposal is a free lookup (``session.proposes_by_lookup(limit)``, e.g. the
    hybrid's suffix steps) is not the controller's: it gets the whole ``limit`` (the lookup
    cuts its own length) and the controller does not see its verdict, so the controller's
    statistics describe the drafter whose forwards cost time.
    """
    limit = min(config.k, state.remaining - 1)
    state.lookup_step = limit > 0 and bool(getattr(session, "proposes_by_lookup", _never)(limit))
    if config.controller is None or limit <= 0 or state.lookup_step:
        return limit
    if state.controller is None:
        state.controller = config.controller.start()
    return max(0, min(limit, state.controller.budget(limit, state.length)))


def _never(limit: int) -> bool:
    return False


def _stop_rule(state: DecodeState, config: DecodeConfig) -> StopRule:
    """When drafting stops early this step: the controller's call, else ``draft_confidence``."""
    if state.controller is not None and not state.lookup_step:
        return state.controller.stop
    return config.draft_confidence


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
    k_step = _draft_for(state, config, session)
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
    budgets = [_draft_for(state, config, session)  # once: controllers decide here
               for state, config, session in zip(states, configs, sessions)]
    drafting = [row for row, budget in enumerate(budgets) if budget > 0]
    if drafting:
        asks = [DraftAsk(budgets[row], configs[row].draft_sampling, generators[row], _stop_rule(states[row], configs[row]))
                for row in drafting]  # fmt: skip
        if isinstance(policy, BatchProposer) and len(drafting) > 1:
            drafted = policy.propose_batch([sessions[row] for row in drafting], asks)
        else:
            drafted = [sessions[row].propose(*ask) for row, ask in zip(drafting, asks)]
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
