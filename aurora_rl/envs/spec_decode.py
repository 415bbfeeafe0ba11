"""``aurora_rl/SpecDecode-v0``: one speculative-decoding request as an RL episode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.error import InvalidAction, ResetNeeded

from aurora_rl.core.draft import Proposal
from aurora_rl.core.sampling import SamplingParams, probs_from_logits
from aurora_rl.core.spec import DecodeConfig, DecodeState, start_decode, verify_step
from aurora_rl.core.target import Target
from aurora_rl.core.trace import Trace, TopKProbs
from aurora_rl.envs.render import render_step
from aurora_rl.envs.sources import EnvSources, episode_prompt, load_env_sources


class SpecDecodeEnv(gym.Env):
    """
    ## Description

    Speculative decoding of one request, seen as reinforcement learning. The agent is the
    draft policy: at every step it proposes ``k`` tokens continuing the sequence; the
    target model verifies all of them in one forward pass, keeps the longest acceptable
    prefix and appends one token of its own (the correction at the first rejection, or a
    bonus token when all ``k`` are accepted). Whatever the agent does, the text produced
    is exactly the target's own (token for token when greedy, in distribution when
    sampling): the agent only changes how fast it comes out.

    ## Observation Space

    ``Dict``:
    - ``"tokens"``: ``Box(0, V - 1, (max_context,), int64)`` -- the sequence so far (prompt
      and generated tokens), left-aligned, padded with the tokenizer's pad id.
    - ``"length"``: ``Discrete(max_context + 1)`` -- how many entries of ``tokens`` are real.

    ## Action Space

    ``Dict``:
    - ``"tokens"``: ``MultiDiscrete([V] * k)`` -- the proposed continuation.
    - ``"draft_logits"``: ``Box(-inf, inf, (k, V), float32)`` -- present when sampling (and
      optional when greedy, see ``action_logits``): the draft's logits at each proposed
      position. The env shapes them with the same temperature / top-k / top-p as the
      target; the proposed tokens must be samples from those shaped distributions for the
      output to stay lossless. Near the end of the token budget only the first
      ``remaining - 1`` proposals are verified.

    ## Rewards

    The number of proposals the target accepted this step (0 to ``k``). ``info`` carries
    everything a KL or policy-gradient loss needs without a second target pass:
    ``per_token_reward`` and ``accept_mask`` ``(k,)``, ``num_accepted``, ``num_verified``,
    ``emitted_tokens``, ``next_token``, the target's temperature-1 probabilities at each
    verified position and the bonus position (``target_probs`` ``(k + 1, V)``, or
    ``target_topk_probs`` / ``target_topk_ids`` ``(k + 1, K)`` when ``target_probs_topk`` is
    set; rows past ``num_verified + 1`` are zero), ``target_hidden`` (the target's features
    at the kept positions, when ``hidden_layers`` is set). The step's full
    :class:`~aurora_rl.core.trace.Trace` is ``env.unwrapped.last_trace`` (not in ``info``: it
    carries a wall-clock stamp, and ``info`` must be a pure function of seed and actions).

    ## Starting State

    ``reset`` draws a prompt from the prompt set with ``self.np_random`` (or takes
    ``options["prompt"]`` text / ``options["prompt_ids"]``) and prefills the target.
    ``info`` holds ``prompt_domain`` and, with ``hidden_layers``, ``target_hidden`` for the
    prefilled positions.

    ## Episode End

    ``terminated`` when the target emits EOS; ``truncated`` when ``max_new_tokens`` tokens
    have been generated.

    ## Arguments

    - ``world``: the miniature world supplying target, tokenizer and prompts (default
      ``"tiny"``, built on first use; ``"default"`` for the larger one).
    - ``sources``: a prebuilt :class:`~aurora_rl.envs.sources.EnvSources` (target model,
      tokenizer, prompts) instead of loading one: the copies of a vector env share one
      target (``load_env_sources(...)`` once, then ``sources=`` to each copy).
    - ``model``: a HF hub id or local directory of a causal LM to use as the target
      instead of the world's (its tokenizer is loaded from the same place).
    - ``prompts``: a prompt source instead of the world's held-out split (a world name,
      ``.jsonl`` / ``.parquet`` file or HF dataset id with a ``prompt`` column).
    - ``k``: proposals per step. ``max_new_tokens``: the token budget per episode.
    - ``temperature``, ``top_k``, ``top_p``: the target's decoding rule (0 = greedy).
    - ``target_probs_topk``: report only the top-K target probabilities (None = full, or the
      top 64 for vocabularies over 8192 tokens, as in ``DecodeConfig.trace_topk``).
    - ``hidden_layers``: target hidden states to report in ``info`` (EAGLE-style agents).
    - ``action_logits``: include ``draft_logits`` in the action space (default: when sampling).
    - ``max_context``: observation length (default: longest prompt + ``max_new_tokens``).
    - ``render_mode``: ``"ansi"`` renders the last step, accepted and rejected spans marked.

    ## Version History

    - v0: initial version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        world: str = "tiny",
        model: str | Path | None = None,
        prompts: str | Path | None = None,
        k: int = 4,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        target_probs_topk: int | None = None,
        hidden_layers: tuple[int, ...] = (),
        action_logits: bool | None = None,
        max_context: int | None = None,
        render_mode: str | None = None,
        cache_dir: str | Path | None = None,
        sources: EnvSources | None = None,
    ) -> None:
        sampling = SamplingParams(temperature, top_k, top_p)
        self.config = DecodeConfig(k=k, sampling=sampling, trace_topk=target_probs_topk)
        if k >= max_new_tokens:
            raise ValueError(
                f"k={k} proposals cannot fit max_new_tokens={max_new_tokens}: a step emits up "
                f"to k + 1 tokens; use k < max_new_tokens"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        if action_logits is None:
            action_logits = not sampling.greedy
        if not action_logits and not sampling.greedy:
            raise ValueError(
                "sampling (temperature > 0) needs the draft's distributions: keep action_logits=True"
            )

        sources = sources or load_env_sources(world, model, prompts, cache_dir)
        self.tokenizer = sources.tokenizer
        self.target = Target(sources.model, hidden_layers)
        self.prompts = sources.prompts
        self.prompt_ids = [self.tokenizer(p)["input_ids"] for p in self.prompts["prompt"]]
        longest = max(len(ids) for ids in self.prompt_ids)
        self.max_context = max_context or longest + max_new_tokens
        if longest + max_new_tokens > self.max_context:
            raise ValueError(
                f"max_context={self.max_context} cannot hold the longest prompt ({longest} tokens) "
                f"plus max_new_tokens={max_new_tokens}; raise it or leave it unset"
            )
        self.k, self.max_new_tokens, self.render_mode = k, max_new_tokens, render_mode
        self.vocab_size = self.target.vocab_size
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        eos = self.tokenizer.eos_token_id
        self.eos_token_ids = () if eos is None else (eos,)

        self.observation_space = spaces.Dict(
            {
                "tokens": spaces.Box(0, self.vocab_size - 1, (self.max_context,), np.int64),
                "length": spaces.Discrete(self.max_context + 1),
            }
        )
        action = {"tokens": spaces.MultiDiscrete(np.full(k, self.vocab_size, dtype=np.int64))}
        if action_logits:
            action["draft_logits"] = spaces.Box(-np.inf, np.inf, (k, self.vocab_size), np.float32)
        self.action_space = spaces.Dict(action)

        self._state: DecodeState | None = None
        self._generator = torch.Generator()
        self.last_trace: Trace | None = None  # the latest step's full record
        self._episode = 0

    def _observation(self) -> dict[str, Any]:
        state = self._state
        tokens = np.full(self.max_context, self.pad_id, dtype=np.int64)
        tokens[: state.length] = state.sequence.numpy()
        return {"tokens": tokens, "length": int(state.length)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        prompt_ids, domain = episode_prompt(options or {}, self.tokenizer, self.prompt_ids,
                                            lambda index: self.prompts[index].get("domain", ""), self.np_random)
        if len(prompt_ids) + self.max_new_tokens > self.max_context:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens + max_new_tokens={self.max_new_tokens} "
                f"exceeds max_context={self.max_context}"
            )
        self._generator.manual_seed(int(self.np_random.integers(0, 2**62)))
        self._state = start_decode(
            self.target,
            prompt_ids,
            self.max_new_tokens,
            self.eos_token_ids,
            max_k=self.k,
            request_id=f"episode-{self._episode}",
            domain=domain,
        )
        self._episode += 1
        self.last_trace = None
        info: dict[str, Any] = {"prompt_domain": domain}
        if self._state.features is not None:
            info["target_hidden"] = self._state.features[: self._state.length - 1].float().numpy().copy()
        return self._observation(), info

    def _proposal(self, action: dict[str, Any]) -> Proposal:
        if not self.action_space.contains(action):
            raise InvalidAction(
                f"action is not in the action space {self.action_space}: give 'tokens' as {self.k} "
                f"ints in [0, {self.vocab_size})"
                + (f" and 'draft_logits' as float32 ({self.k}, {self.vocab_size})" if "draft_logits" in self.action_space.spaces else "")
            )
        count = min(self.k, self._state.remaining - 1)
        tokens = torch.as_tensor(np.asarray(action["tokens"])[:count], dtype=torch.long)
        if "draft_logits" in action:
            logits = torch.as_tensor(np.asarray(action["draft_logits"])[:count], dtype=torch.float32)
            probs = probs_from_logits(logits, self.config.draft_sampling)
        else:
            probs = torch.nn.functional.one_hot(tokens, self.vocab_size).float()
        if not self.config.sampling.greedy:
            chosen = probs.gather(-1, tokens[:, None]).squeeze(-1)
            if bool((chosen <= 0).any()):
                position = int((chosen <= 0).nonzero()[0])
                raise InvalidAction(
                    f"proposed token {int(tokens[position])} at position {position} has zero "
                    "probability under the shaped draft distribution (top-k / top-p cut it): "
                    "sample proposals from probs_from_logits(draft_logits, sampling)"
                )
        return Proposal(tokens, probs)

    def step(self, action: dict[str, Any]):
        if self._state is None:
            raise ResetNeeded("Cannot call env.step() before calling env.reset()")
        if self._state.finished:
            raise ResetNeeded("The episode has ended (terminated or truncated): call env.reset()")
        proposal = self._proposal(action)
        trace = verify_step(self.target, self._state, proposal, self.config, self._generator)
        self.last_trace = trace
        return (
            self._observation(),
            float(trace.num_accepted),
            self._state.finish_reason == "eos",
            self._state.finish_reason == "length",
            self._step_info(trace),
        )

    def _step_info(self, trace: Trace) -> dict[str, Any]:
        k, verified = self.k, trace.num_proposed
        accept_mask = np.zeros(k, dtype=bool)
        accept_mask[:verified] = trace.accept_mask.numpy()
        info: dict[str, Any] = {
            "accept_mask": accept_mask,
            "per_token_reward": accept_mask.astype(np.float32),
            "num_accepted": trace.num_accepted,
            "num_verified": verified,
            "emitted_tokens": trace.emitted.tolist(),
            "next_token": int(trace.emitted[-1]),
        }
        if isinstance(trace.target_probs, TopKProbs):
            width = trace.target_probs.values.shape[-1]
            values = np.zeros((k + 1, width), dtype=np.float32)
            ids = np.zeros((k + 1, width), dtype=np.int64)
            values[: verified + 1] = trace.target_probs.values.numpy()
            ids[: verified + 1] = trace.target_probs.indices.numpy()
            info["target_topk_probs"], info["target_topk_ids"] = values, ids
        else:
            probs = np.zeros((k + 1, self.vocab_size), dtype=np.float32)
            probs[: verified + 1] = trace.target_probs.numpy()
            info["target_probs"] = probs
        if self._state.features is not None:
            start = trace.context_len - 1
            info["target_hidden"] = self._state.features[start : start + trace.num_accepted + 1].float().numpy().copy()
        return info

    def render(self):
        if self.render_mode != "ansi":
            return None
        if self._state is None:
            return ""
        return render_step(self.tokenizer, self._state, self.last_trace)
