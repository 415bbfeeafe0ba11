"""The draft-policy seam: what speculative decoding needs from any drafter.

A :class:`DraftPolicy` is the learnable thing (weights + a version number). For each
sequence it opens a :class:`DraftSession`, which owns that sequence's draft-side state
(usually a KV cache) and is kept in sync with what the target accepted via ``commit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, Sequence, Union, runtime_checkable

import torch

from aurora_rl.core.sampling import SamplingParams, probs_from_logits


@dataclass
class Proposal:
    """``k`` draft tokens for one sequence.

    Attributes:
        tokens: ``(k,)`` long proposed token ids.
        probs: ``(k, V)`` the distribution each token was drawn from (after the sampling
            transform; one-hot rows for argmax proposals). The rejection rule is lossless
            only if ``tokens[i] ~ probs[i]``.
        logits: ``(k, V)`` the draft's raw logits before the sampling transform, when the
            drafter has them (``probs == probs_from_logits(logits, sampling)``).
    """

    tokens: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.tokens.ndim != 1 or self.probs.ndim != 2 or len(self.tokens) != len(self.probs):
            raise ValueError(
                f"a proposal needs tokens (k,) and probs (k, V); got {tuple(self.tokens.shape)} "
                f"and {tuple(self.probs.shape)}"
            )

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def logprobs(self) -> torch.Tensor:
        """``(k,)`` log-probability of each proposed token under its own distribution."""
        picked = self.probs.gather(-1, self.tokens[:, None]).squeeze(-1)
        return picked.clamp_min(1e-30).log()


# When to stop drafting early, consulted after every proposal but the last allowed one:
# None (never), a float (the draft's own probability of the token is below it, see
# :func:`unconfident`), or a callable ``(position, raw_logits, token) -> stop?`` where
# ``position`` counts the proposals drawn so far, this one included (a draft-length
# controller's session, see ``core/control.py``). ``raw_logits`` may be None for drafters
# that have no logits (lookup drafters).
StopRule = Union[float, Callable[[int, "torch.Tensor | None", int], bool], None]


class DraftAsk(NamedTuple):
    """What one row asks of a drafter in a step: ``DraftSession.propose``'s arguments in its
    order (``stop`` is its ``min_confidence``, a :data:`StopRule`), so ``session.propose(*ask)``
    proposes for that row alone. A batch of rows is a list of asks: one record per row, never
    parallel lists that could fall out of step."""

    k: int
    sampling: SamplingParams
    generator: torch.Generator | None = None
    stop: StopRule = None


@runtime_checkable
class DraftSession(Protocol):
    """Draft-side state of one sequence.

    Optional: ``expect_verdict_on(proposal)`` (a combining drafter shows a session the
    proposal another drafter made, so its ``commit`` keeps the whole sequence) and
    ``proposes_by_lookup(limit) -> bool`` (this step's proposal is a free lookup that the
    draft-length controller neither budgets nor observes; ``core/spec.py::_draft_for``).
    """

    def propose(
        self,
        k: int,
        sampling: SamplingParams,
        generator: torch.Generator | None,
        min_confidence: StopRule = None,
    ) -> Proposal:
        """Propose up to ``k`` tokens continuing the sequence as committed so far.

        ``min_confidence`` is the stop rule (see :data:`StopRule`): with a float, stop early
        after a proposal the draft itself gives less than that probability (it would likely
        be rejected, and every further draft forward would be wasted); with a callable, stop
        when it says so. Stopping early is lossless: it only changes when verification happens.
        """
        ...

    def commit(self, num_accepted: int, next_token: int, target_hidden: torch.Tensor | None) -> None:
        """Record the verdict on the last proposal.

        The sequence grows by the first ``num_accepted`` proposed tokens and then
        ``next_token``. ``target_hidden`` holds the target's features ``(num_accepted + 1, D)``
        at the positions it just verified and kept (or None when the target records none).
        """
        ...


class ProposesAsOneRow:
    """Mixin for a session whose drafter proposes in batches: its ``propose`` is one row of
    ``propose_rows`` (the batched function), so single and batched drafting share one code
    path and the :class:`BatchProposer` equivalence holds by construction."""

    # The batched proposal, with BatchProposer.propose_batch's arguments; each session defines it.
    propose_rows: Callable[[Sequence["DraftSession"], Sequence[DraftAsk]], list[Proposal]]

    def propose(
        self, k: int, sampling: SamplingParams, generator: torch.Generator | None, min_confidence: StopRule = None
    ) -> Proposal:
        (proposal,) = self.propose_rows([self], [DraftAsk(k, sampling, generator, min_confidence)])
        return proposal


class ProposesByLookup:
    """Mixin for a lookup drafter's session (no model: suffix, prompt lookup): ``lookup``
    picks the proposal from the tokens seen so far; ``propose`` remembers it, so that
    ``commit`` hands ``extend`` what the sequence kept (the accepted proposals and the
    target's next token). Each session sets ``self._proposed = []`` when it starts."""

    _proposed: list[int]

    def lookup(self, k: int, sampling: SamplingParams, generator: torch.Generator | None,
               min_confidence: StopRule) -> tuple[list[int], torch.Tensor]:  # fmt: skip
        """Up to ``k`` tokens continuing the sequence and their ``(n, V)`` draft probabilities."""
        raise NotImplementedError

    def extend(self, kept: list[int]) -> None:
        """The sequence grew by ``kept``."""
        raise NotImplementedError

    def propose(
        self, k: int, sampling: SamplingParams, generator: torch.Generator | None, min_confidence: StopRule = None
    ) -> Proposal:
        tokens, probs = self.lookup(k, sampling, generator, min_confidence)
        self._proposed = tokens
        return Proposal(torch.tensor(tokens, dtype=torch.long), probs)

    def expect_verdict_on(self, proposal: Proposal) -> None:
        """Remember a proposal another drafter made, which the next ``commit`` judges."""
        self._proposed = proposal.tokens.tolist()

    def commit(self, num_accepted: int, next_token: int, target_hidden: torch.Tensor | None) -> None:
        self.extend(self._proposed[:num_accepted] + [int(next_token)])
        self._proposed = []


@runtime_checkable
class DraftPolicy(Protocol):
    """A drafter: proposes tokens for speculative decoding.

    Attributes:
        version: the published weight version; every trace names the version that made it.
        vocab_size: the size of the distributions it proposes from (must equal the target's).
        uses_target_features: True if sessions need the target's hidden states.
    """

    version: int
    vocab_size: int
    uses_target_features: bool

    def start(self, context_ids: torch.Tensor, target_hidden: torch.Tensor | None) -> DraftSession:
        """Open a session on ``context_ids`` ``(L,)``.

        The target has already processed ``context_ids[:-1]``; ``target_hidden`` holds its
        features for those ``L - 1`` positions (None unless ``uses_target_features``).
        """
        ...


@runtime_checkable
class BatchProposer(Protocol):
    """Optional: a drafter that proposes for many sequences in batched forwards.

    Decoding several sequences at once (:func:`aurora_rl.core.spec.speculate_batch`) uses
    it when the policy has it, and each session's ``propose`` otherwise. The contract is
    equivalence: under a seed, row ``i`` gets exactly ``sessions[i].propose(*asks[i])``.
    """

    def propose_batch(self, sessions: Sequence[DraftSession], asks: Sequence[DraftAsk]) -> list[Proposal]: ...


class BatchesThroughSessions:
    """Mixin for a drafter whose sessions are :class:`ProposesAsOneRow`: its
    :meth:`BatchProposer.propose_batch` is their batched ``propose_rows`` (one draft forward
    per round for the rows still drafting; under a seed each row's proposal equals
    ``sessions[row].propose(*asks[row])`` alone)."""

    def propose_batch(self, sessions, asks) -> list[Proposal]:
        check_one_ask_per_session(sessions, asks)
        if not sessions:
            return []
        return sessions[0].propose_rows(sessions, asks)


class ProposesRowByRow:
    """Mixin for a drafter with no forward pass to batch (the lookup drafters): its
    :meth:`BatchProposer.propose_batch` runs each row's ``propose`` alone, in row order, so
    the equivalence contract holds by construction."""

    def propose_batch(self, sessions, asks) -> list[Proposal]:
        check_one_ask_per_session(sessions, asks)
        return [session.propose(*ask) for session, ask in zip(sessions, asks)]


def check_one_ask_per_session(sessions: Sequence[DraftSession], asks: Sequence[DraftAsk]) -> None:
    """Refuse a batch whose rows and asks do not pair up (``zip`` would drop rows silently)."""
    if len(sessions) != len(asks):
        raise ValueError(f"{len(sessions)} sessions and {len(asks)} asks: give one DraftAsk per session")


def unconfident(raw_logits: torch.Tensor, token: int, min_confidence: float | None) -> bool:
    """True if the draft's own temperature-1 probability of ``token`` is below the bar."""
    if min_confidence is None:
        return False
    return float(raw_logits.float().softmax(-1)[token]) < min_confidence


def stop_drafting(rule: StopRule, position: int, raw_logits: torch.Tensor | None, token: int) -> bool:
    """Apply a :data:`StopRule` after the ``position``-th proposal ``token``."""
    if rule is None:
        return False
    if callable(rule):
        return bool(rule(position, raw_logits, token))
    return raw_logits is not None and unconfident(raw_logits, token, rule)


def frequency_logits(ids: Sequence[int], counts: Sequence[int], vocab_size: int) -> torch.Tensor:
    """``(V,)`` logits of a model-free drafter's empirical distribution (``counts`` of the
    tokens ``ids``): what a controller's stop rule reads where an LM would give its logits."""
    row = torch.full((vocab_size,), -1e4)
    counts_t = torch.tensor(counts, dtype=torch.float32)
    row[torch.tensor(ids, dtype=torch.long)] = (counts_t / counts_t.sum()).log()
    return row


def stop_drafting_on_counts(
    rule: StopRule, position: int, ids: Sequence[int], counts: Sequence[int], token: int, vocab_size: int
) -> bool:
    """:func:`stop_drafting` for a model-free drafter that picked ``token`` among ``ids``
    seen ``counts`` times: a float rule compares the token's frequency, a controller's
    callable gets :func:`frequency_logits`."""
    if rule is None:
        return False
    if callable(rule):
        return bool(rule(position, frequency_logits(ids, counts, vocab_size), token))
    return counts[list(ids).index(token)] / sum(counts) < rule


def draw(dist: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick a token from ``dist`` ``(V,)``: its argmax when greedy, else a sample."""
    if sampling.greedy:
        return int(dist.argmax())
    return int(torch.multinomial(dist, 1, generator=generator))


def draw_from_logits(
    logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
) -> tuple[int, torch.Tensor]:
    """``draw(probs_from_logits(logits, sampling), sampling, generator)`` and that
    distribution. Greedy takes the argmax once (the one-hot's argmax is the logits'): a
    draft token would otherwise pay three passes over a 49k vocabulary."""
    if sampling.greedy:
        token = int(logits.argmax())
        dist = torch.zeros_like(logits, dtype=torch.float32)
        dist[token] = 1.0
        return token, dist
    dist = probs_from_logits(logits, sampling)
    return draw(dist, sampling, generator), dist


def propose_autoregressively_batched(
    next_logits: Callable[[list[int], list[int] | None], list[torch.Tensor]], asks: Sequence[DraftAsk]
) -> list[Proposal]:
    """Draw up to ``asks[row].k`` tokens per row, one at a time: the loop every autoregressive
    drafter shares, for one sequence or many (one draft forward per round).

    ``next_logits(rows, None)`` gives the raw first-position logits of each listed row;
    ``next_logits(rows, tokens)`` feeds each listed row its proposal just drawn and gives
    the next position's. A row leaves the rounds when it has ``asks[row].k`` proposals (its last
    proposal is never fed: nothing would read its output) or its stop rule says stop (see
    :data:`StopRule`). Each row draws with its own generator in its own order, so under a
    seed a row's proposal does not depend on the other rows. Every ``k`` must be >= 1.
    """
    if any(ask.k < 1 for ask in asks):
        raise ValueError(f"every row needs k >= 1 proposals, got {[ask.k for ask in asks]}")
    tokens: list[list[int]] = [[] for _ in asks]
    dists: list[list[torch.Tensor]] = [[] for _ in asks]
    raw: list[list[torch.Tensor]] = [[] for _ in asks]
    rows = list(range(len(asks)))
    logits = next_logits(rows, None)
    while rows:
        drafting, fed = [], []
        for row, row_logits in zip(rows, logits):
            ask = asks[row]
            token, dist = draw_from_logits(row_logits, ask.sampling, ask.generator)
            tokens[row].append(token)
            dists[row].append(dist)
            raw[row].append(row_logits)
            drawn = len(tokens[row])
            if drawn < ask.k and not stop_drafting(ask.stop, drawn, row_logits, token):
                drafting.append(row)
                fed.append(token)
        rows = drafting
        if rows:
            logits = next_logits(rows, fed)
    return [
        Proposal(torch.tensor(t, dtype=torch.long), torch.stack(d), torch.stack(r))
        for t, d, r in zip(tokens, dists, raw)
    ]


def check_vocab_compatible(draft_vocab: int, target_vocab: int) -> None:
    """Refuse a drafter whose distributions cannot be compared with the target's."""
    if draft_vocab != target_vocab:
        raise ValueError(
            f"draft vocabulary size {draft_vocab} does not match target vocabulary size "
            f"{target_vocab}: the draft must share the target's tokenizer and output "
            "embedding size (build the drafter from the target's tokenizer/config)"
        )
