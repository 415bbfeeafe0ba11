"""``aurora_rl/DraftLength-v0``: when to stop drafting and verify, as an RL episode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.error import InvalidAction, ResetNeeded
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from aurora_rl.core.control import FEATURES, StepFeatures
from aurora_rl.core.cost import CostModel
from aurora_rl.core.cost_profile import cached_cost_model
from aurora_rl.core.draft import DraftPolicy, DraftSession, Proposal
from aurora_rl.core.sampling import SamplingParams
from aurora_rl.core.spec import DecodeConfig, DecodeState, start_decode, sync_session, verify_step
from aurora_rl.core.target import Target
from aurora_rl.envs.sources import episode_prompt, load_env_sources
from aurora_rl.policies.pretrained import DrafterRecipe, pretrained_drafter
from aurora_rl.world import get_world
from aurora_rl.world.traffic import load_prompts

VERIFY, CONTINUE = 0, 1


class DraftLengthEnv(gym.Env):
    """
    ## Description

    Speculative decoding of one request with a *fixed* drafter; the agent decides the
    draft length. At every draft position it either lets the draft propose one more token
    (continue) or sends what has been drafted so far to the target (verify now). The target
    then keeps the accepted prefix plus one token of its own, and drafting starts again.
    Whatever the agent does, the text is exactly the target's own: the agent only chooses
    when verification happens, i.e. how fast the text comes out on this hardware.

    ## Observation Space

    ``Box(0, 1, (6,), float32)``, domain-free features (``aurora_rl.core.control.FEATURES``):
    the draft's probability of its last proposal and that distribution's entropy / log V
    (both 0 before the step's first proposal), the position in the draft (proposals /
    ``max_draft``), the product of this step's proposal probabilities, the request's running
    acceptance rate (1-of-2 prior), and the context length / the target's context size.

    ## Action Space

    ``Discrete(2)``: 0 = verify now (at position 0: a plain target step, no drafting),
    1 = continue drafting. At ``max_draft`` proposals (or when the token budget is full)
    verification happens by itself.

    ## Rewards

    Tokens minus modelled time, in token units of a target-only step (the ``CostModel``):
    continuing costs ``-c`` (one draft forward / one target forward); verifying ``n``
    proposals earns the emitted tokens (accepted + 1) minus the verify forward's cost
    (width ``n + 1``, exactly 1 at ``n = 0``). A step's reward is thus ``emitted -
    token_cost(n)`` and an episode's return is the tokens gained over the target alone in
    the same modelled time (0 = as fast, > 0 faster). ``info`` of a verify step carries
    ``num_proposed``, ``num_accepted``, ``emitted_tokens``, ``step_cost``, and
    ``forced_plain_steps: 1`` when the token budget then left no room for a proposal (a
    plain target step was taken on the spot); at the end, ``goodput`` (tokens per modelled
    second), ``speedup`` (over the target alone) and ``tokens`` (emitted this episode).

    ## Starting State

    ``reset`` draws a prompt with ``self.np_random`` (or takes ``options["prompt"]`` /
    ``options["prompt_ids"]``), prefills the target and opens a draft session; the agent is
    at position 0 of the first step.

    ## Episode End

    ``terminated`` when the target emits EOS; ``truncated`` at ``max_new_tokens``.

    ## Arguments

    - ``world``: the miniature world for target, tokenizer and prompts (``"tiny"`` default).
    - ``target``, ``tokenizer``, ``drafter``: prebuilt objects instead of the world's (so
      vectorised copies share one target); ``drafter`` defaults to the world's pretrained
      small LM. Any :class:`~aurora_rl.core.draft.DraftPolicy` works.
    - ``cost_model``: a :class:`CostModel` (default: profiled on this machine for this target
      and drafter, cached). ``cost_batch``: the batch size whose costs are charged.
    - ``max_draft``: most proposals per step. ``max_new_tokens``: the token budget.
    - ``temperature``, ``top_k``, ``top_p``: the target's decoding rule (0 = greedy).
    - ``prompts``: a prompt source instead of the world's held-out split (anything
      :func:`~aurora_rl.world.traffic.load_prompts` takes, a loaded ``datasets.Dataset``
      too: with ``target``, ``tokenizer`` and ``drafter`` given, an env loads nothing).

    ## Version History

    - v0: initial version.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        world: str = "tiny",
        target: Target | PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        drafter: DraftPolicy | None = None,
        cost_model: CostModel | None = None,
        prompts: datasets.Dataset | str | Path | None = None,
        max_draft: int = 8,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        cost_batch: int = 1,
        cache_dir: str | Path | None = None,
    ) -> None:
        if max_draft < 1 or max_draft >= max_new_tokens:
            raise ValueError(f"max_draft={max_draft} must be in [1, max_new_tokens={max_new_tokens})")
        if (target is None) != (tokenizer is None):
            raise ValueError("give target and tokenizer together (or neither, for the world's)")
        if target is None:
            sources = load_env_sources(world, None, prompts, cache_dir)
            target, tokenizer, dataset = sources.model, sources.tokenizer, sources.prompts
        else:
            dataset = load_prompts(prompts if prompts is not None else get_world(world, cache_dir=cache_dir), split="heldout")
        self.target = target if isinstance(target, Target) else Target(target)
        self.tokenizer = tokenizer
        if drafter is None:
            drafter = pretrained_drafter(get_world(world, cache_dir=cache_dir), DrafterRecipe(), cache_dir, progress=False)
        self.drafter = drafter
        self.cost = cost_model or cached_cost_model(self.target, drafter, max_draft, cache_dir=cache_dir)
        if self.cost.max_k < max_draft:
            raise ValueError(f"the cost model covers k <= {self.cost.max_k}, below max_draft={max_draft}")
        self.prompt_ids = [tokenizer(p)["input_ids"] for p in dataset["prompt"]]
        self.domains = list(dataset["domain"]) if "domain" in dataset.column_names else [""] * len(self.prompt_ids)
        # Rewards come from what the target accepted; nothing reads its distributions.
        self.config = DecodeConfig(k=max_draft, sampling=SamplingParams(temperature, top_k, top_p), record_target_probs=False)
        self.max_draft, self.max_new_tokens, self.cost_batch = max_draft, max_new_tokens, cost_batch
        eos = tokenizer.eos_token_id
        self.eos_token_ids = () if eos is None else (eos,)
        self.unit = self.cost.target(1, cost_batch)  # one target-only step, in seconds

        self.observation_space = spaces.Box(0.0, 1.0, (len(FEATURES),), np.float32)
        self.action_space = spaces.Discrete(2)
        self._state: DecodeState | None = None
        self._session: DraftSession | None = None
        self._proposal: Proposal | None = None
        self._generator = torch.Generator()
        self._episode = 0

    # --- an episode -----------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        prompt_ids, domain = episode_prompt(options or {}, self.tokenizer, self.prompt_ids, self.domains.__getitem__,
                                            self.np_random)
        self._generator.manual_seed(int(self.np_random.integers(0, 2**62)))
        self._state = start_decode(self.target, prompt_ids, self.max_new_tokens, self.eos_token_ids,
                                   max_k=self.max_draft, request_id=f"episode-{self._episode}", domain=domain)
        self._episode += 1
        self._session = sync_session(self._state, self.drafter)
        self._features = StepFeatures(self.max_draft, self.target.max_positions)
        self.tokens, self.seconds, self.proposals = 0, 0.0, []
        info = self._begin_step()
        return self._features.vector(), {"prompt_domain": domain, **info}

    def _limit(self) -> int:
        return min(self.max_draft, self._state.remaining - 1)

    def _begin_step(self) -> dict[str, Any]:
        """Start a verify step at position 0; budget-forced plain steps (no room for a
        proposal) are taken on the spot. Returns their info (empty if none)."""
        info: dict[str, Any] = {}
        self._proposal = None
        self._features.begin_step(self._state.length)
        while not self._state.finished and self._limit() == 0:
            info = self._verify(0)[1]
            self._features.begin_step(self._state.length)
        return info

    def _draft(self, needed: int) -> None:
        """Have at least ``needed`` proposals drawn this step. Drafting runs ahead in chunks
        (2, 4, 8, ...) and redraws from the step's start with the generator rewound, so the
        first n proposals are exactly what stopping at n would have drawn; only the ones
        the agent keeps are charged and verified."""
        if self._proposal is not None and len(self._proposal) >= needed:
            return
        if self._proposal is None:
            self._draws = self._generator.get_state()
        else:
            self._generator.set_state(self._draws)
        self._asked = min(self._limit(), max(needed, 2, 2 * len(self._proposal or ())))
        self._proposal = self._session.propose(self._asked, self.config.draft_sampling, self._generator)

    def _verify(self, n: int) -> tuple[float, dict[str, Any]]:
        proposal = self._proposal
        if proposal is None or n == 0:
            proposal = Proposal(torch.zeros(0, dtype=torch.long), torch.zeros(0, self.drafter.vocab_size))
        else:
            proposal = Proposal(proposal.tokens[:n], proposal.probs[:n])
        trace = verify_step(self.target, self._state, proposal, self.config, self._generator,
                            self.drafter.version, self._session)
        self._features.observe(trace.num_proposed, trace.num_accepted)
        emitted = len(trace.emitted)
        verify_cost = self.cost.target(n + 1, self.cost_batch) / self.unit
        self.tokens += emitted
        self.seconds += self.cost.step_seconds(n, self.cost_batch)
        self.proposals.append(n)
        info = {"num_proposed": n, "num_accepted": trace.num_accepted, "emitted_tokens": trace.emitted.tolist(),
                "step_cost": self.cost.token_cost(n, self.cost_batch)}
        return emitted - verify_cost, info

    def step(self, action):
        if self._state is None:
            raise ResetNeeded("Cannot call env.step() before calling env.reset()")
        if self._state.finished:
            raise ResetNeeded("The episode has ended (terminated or truncated): call env.reset()")
        if not self.action_space.contains(action):
            raise InvalidAction(f"action {action!r} is not in Discrete(2): 0 = verify now, 1 = continue drafting")
        reward, info = 0.0, {}
        position = self._features.position
        exhausted = False
        if int(action) == CONTINUE:
            self._draft(position + 1)
            if len(self._proposal) > position:
                self._features.proposed(_logits_at(self._proposal, position), int(self._proposal.tokens[position]))
                position += 1
                reward -= self.cost.draft(self.cost_batch) / self.unit
            # a drafter may offer fewer than asked (a lookup drafter runs out): verify then
            exhausted = len(self._proposal) < self._asked and position >= len(self._proposal)
        if int(action) == VERIFY or exhausted or position >= self._limit():
            gained, info = self._verify(position)
            reward += gained
            forced = self._begin_step()
            if forced:
                info = {**info, "forced_plain_steps": 1}
        terminated = self._state.finished and self._state.finish_reason == "eos"
        truncated = self._state.finished and self._state.finish_reason == "length"
        if terminated or truncated:
            info = {**info, "goodput": self.goodput, "speedup": self.speedup, "tokens": self.tokens}
        return self._features.vector(), float(reward), terminated, truncated, info

    @property
    def goodput(self) -> float:
        """Tokens per modelled second so far this episode."""
        return self.tokens / max(self.seconds, 1e-12)

    @property
    def speedup(self) -> float:
        """Goodput over the target alone (which emits one token per ``unit`` seconds)."""
        return self.goodput * self.unit


def _logits_at(proposal: Proposal, position: int) -> torch.Tensor | None:
    """The raw draft logits behind proposal ``position`` (its probs' log when it has none)."""
    if proposal.logits is not None:
        return proposal.logits[position]
    return proposal.probs[position].clamp_min(1e-30).log()
