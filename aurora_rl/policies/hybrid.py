"""The hybrid drafter: per step, the suffix drafter's proposal or the learned drafter's.

Each step first scores the suffix proposal (its expected accepted tokens under the
empirical continuation frequencies, computed without drawing anything). If it reaches
``min_suffix_score`` the suffix proposal is used -- it costs no forward pass -- otherwise
the learned drafter (small LM or EAGLE head) drafts. The choice depends only on the
committed sequence, never on a draw, so each proposal is exactly one drafter's and the
rejection rule stays lossless. Both sessions see every verdict, so each stays in sync.

Learning. The learner trains the learned drafter (``trainable`` is its module) and
publishes new hybrid versions sharing the same global suffix trie. Traces of steps the
suffix drafter proposed are not the learned drafter's behaviour: ``learning_view``
rewrites each of them onto the target's own path (the accepted tokens, all accepted,
the target's distributions there, with the row at the first refusal as the bonus row),
so distillation learns the target's tokens and no importance weight or reward is ever
computed from another policy's proposals. Algorithms that need the draft's own sampled
proposals (policy gradient) get only the learned drafter's steps.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch

from aurora_rl.core.draft import BatchProposer, DraftAsk, DraftSession, Proposal, ProposesAsOneRow, check_one_ask_per_session
from aurora_rl.core.trace import Trace, TopKProbs
from aurora_rl.policies.checkpoint import read_manifest, write_manifest
from aurora_rl.policies.suffix import SuffixDrafter

SUFFIX_DIR, LEARNED_DIR = "suffix", "learned"
REMEMBERED_STEPS = 4096  # suffix-proposed steps remembered until their trace is seen


def _step_key(context: Sequence[int] | torch.Tensor, proposed: Sequence[int] | torch.Tensor) -> tuple:
    """Identifies a step from its trace: context length, its last tokens, the proposal."""
    context = context.tolist() if torch.is_tensor(context) else list(context)
    proposed = proposed.tolist() if torch.is_tensor(proposed) else list(proposed)
    return len(context), tuple(context[-8:]), tuple(proposed)


class HybridSession(ProposesAsOneRow):
    def __init__(self, drafter: "HybridDrafter", learned: DraftSession, suffix: DraftSession) -> None:
        self.drafter = drafter
        self.learned = learned
        self.suffix = suffix
        self._choice: tuple[int, int, bool] | None = None  # (tokens seen, k, use the suffix?)
        self._last: tuple[DraftSession, Proposal] | None = None  # who proposed this step, and what

    def use_suffix(self, k: int) -> bool:
        """Whether the suffix proposal is expected to reach ``min_suffix_score``; asked twice
        a step (by the step, then by ``propose``), scored once."""
        seen = len(self.suffix.tokens)
        if self._choice is None or self._choice[:2] != (seen, k):
            self._choice = (seen, k, self.suffix.score(k) >= self.drafter.min_suffix_score)
        return self._choice[2]

    def proposes_by_lookup(self, limit: int) -> bool:
        """A suffix step costs no forward pass: the draft-length controller leaves it alone
        (it budgets and learns from the learned drafter's steps only)."""
        return self.use_suffix(limit)

    def propose_rows(self, sessions, asks) -> list[Proposal]:
        return self.drafter.propose_batch(sessions, asks)

    def commit(self, num_accepted: int, next_token: int, target_hidden: torch.Tensor | None) -> None:
        # A session grows by the accepted part of *its own* proposal, so the one that did not
        # propose this step is first shown the other's: both then keep the same sequence.
        if self._last is not None:
            proposer, proposal = self._last
            for session in (self.learned, self.suffix):
                if session is not proposer:
                    session.expect_verdict_on(proposal)
        self._last = None
        self.learned.commit(num_accepted, next_token, target_hidden)
        self.suffix.commit(num_accepted, next_token, target_hidden)


class HybridDrafter:
    """A learned drafter and a suffix drafter, chosen per step (see the module doc).

    Args:
        learned: the trainable drafter (its ``trainable`` is what the learner optimises).
        suffix: the suffix drafter (its global trie is shared by every version).
        min_suffix_score: use the suffix proposal when its expected accepted tokens reach this.
        version: the published version (the learned drafter carries the same number).
    """

    kind = "hybrid"

    def __init__(self, learned, suffix: SuffixDrafter, min_suffix_score: float = 1.0,
                 version: int | None = None, suffix_steps: OrderedDict | None = None,
                 counts: dict[str, int] | None = None) -> None:  # fmt: skip
        self.learned = learned
        self.suffix = suffix
        self.min_suffix_score = min_suffix_score
        self.version = learned.version if version is None else version
        self.learned.version = self.version
        self._suffix_steps = suffix_steps if suffix_steps is not None else OrderedDict()
        self.counts = counts if counts is not None else {"suffix": 0, "learned": 0}  # proposals by source, all versions

    @property
    def suffix_share(self) -> float:
        """Share of the proposals so far that came from the suffix drafter."""
        return self.counts["suffix"] / max(self.counts["suffix"] + self.counts["learned"], 1)

    @property
    def vocab_size(self) -> int:
        return self.learned.vocab_size

    @property
    def uses_target_features(self) -> bool:
        return self.learned.uses_target_features

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        return tuple(getattr(self.learned, "hidden_layers", ()))

    @property
    def trainable(self) -> torch.nn.Module:
        return self.learned.trainable

    def proposal_logits(self, batch) -> torch.Tensor:
        return self.learned.proposal_logits(batch)

    def start(self, context_ids: torch.Tensor, target_hidden: torch.Tensor | None = None) -> HybridSession:
        return HybridSession(self, self.learned.start(context_ids, target_hidden), self.suffix.start(context_ids))

    def propose_batch(self, sessions: Sequence[HybridSession], asks: Sequence[DraftAsk]) -> list[Proposal]:
        """Suffix rows propose alone; the learned rows together in the learned drafter's
        batched forwards (each row as it would alone, so the equivalence contract holds)."""
        check_one_ask_per_session(sessions, asks)
        by_suffix = [session.use_suffix(ask.k) for session, ask in zip(sessions, asks)]
        proposals: list[Proposal | None] = [None] * len(sessions)
        learned_rows = [i for i, suffix in enumerate(by_suffix) if not suffix]
        self.counts["suffix"] += len(sessions) - len(learned_rows)
        self.counts["learned"] += len(learned_rows)
        for i, suffix in enumerate(by_suffix):
            if suffix:
                session = sessions[i]
                proposals[i] = session.suffix.propose(*asks[i])
                session._last = (session.suffix, proposals[i])
                self._remember(session.suffix.tokens, proposals[i].tokens)
        if len(learned_rows) > 1 and isinstance(self.learned, BatchProposer):
            drafted = self.learned.propose_batch([sessions[i].learned for i in learned_rows], [asks[i] for i in learned_rows])
        else:
            drafted = [sessions[i].learned.propose(*asks[i]) for i in learned_rows]
        for i, proposal in zip(learned_rows, drafted):
            proposals[i] = proposal
            sessions[i]._last = (sessions[i].learned, proposal)
        return proposals

    def _remember(self, context: list[int], proposed: torch.Tensor) -> None:
        self._suffix_steps[_step_key(context, proposed)] = True
        while len(self._suffix_steps) > REMEMBERED_STEPS:
            self._suffix_steps.popitem(last=False)

    def learning_view(self, trace: Trace, on_policy_only: bool = False) -> Trace | None:
        """The trace the learner should see (see the module doc); None to skip it."""
        if self._suffix_steps.pop(_step_key(trace.context_ids, trace.proposed), None) is None:
            return trace
        n = trace.num_accepted
        if on_policy_only or n == 0:
            return None
        rows = trace.target_probs
        kept = rows[: n + 1] if torch.is_tensor(rows) else TopKProbs(rows.values[: n + 1], rows.indices[: n + 1], rows.vocab_size)
        return dataclasses.replace(
            trace, proposed=trace.proposed[:n].clone(), draft_logprobs=trace.draft_logprobs[:n].clone(),
            target_probs=kept, accept_mask=torch.ones(n, dtype=torch.bool),
        )  # fmt: skip

    def clone(self, version: int | None = None) -> "HybridDrafter":
        """A copy with its own learned weights; the suffix trie and the step memory are shared."""
        version = self.version if version is None else version
        return HybridDrafter(self.learned.clone(version), self.suffix, self.min_suffix_score, version,
                             self._suffix_steps, self.counts)  # fmt: skip

    def save_pretrained(self, directory: str | Path) -> None:
        write_manifest(directory, self.kind, self.version, min_suffix_score=self.min_suffix_score)
        self.learned.save_pretrained(Path(directory) / LEARNED_DIR)
        self.suffix.save_pretrained(Path(directory) / SUFFIX_DIR)

    @classmethod
    def from_pretrained(cls, directory: str | Path, load_learned) -> "HybridDrafter":
        """``load_learned(path)`` loads the learned part (it knows the target an EAGLE head needs)."""
        manifest = read_manifest(directory, cls.kind)
        learned = load_learned(Path(directory) / LEARNED_DIR)
        suffix = SuffixDrafter.from_pretrained(Path(directory) / SUFFIX_DIR)
        return cls(learned, suffix, manifest["min_suffix_score"], manifest["version"])
