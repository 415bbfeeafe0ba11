"""Whole-request decoding on top of ``speculate_step`` (one request) and ``speculate_batch``
(several at once): speculative or target-only."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence

import torch

from aurora_rl.core.draft import DraftPolicy, check_vocab_compatible
from aurora_rl.core.spec import DecodeConfig, DecodeState, speculate_batch, speculate_step, start_decode
from aurora_rl.core.target import Target
from aurora_rl.core.trace import Trace


@dataclass
class Generation:
    """The result of decoding one request.

    Attributes:
        prompt_ids: ``(P,)`` the prompt.
        tokens: ``(m,)`` generated tokens (EOS included when it ended the request).
        traces: one trace per verify step (empty if not kept).
        num_steps: verify steps (target forward passes after the prefill).
        accepted: draft tokens the target accepted, summed over steps.
        finish_reason: "eos" or "length".
        seconds: wall-clock time of the decode, prefill included.
    """

    prompt_ids: torch.Tensor
    tokens: torch.Tensor
    traces: list[Trace] = field(default_factory=list)
    num_steps: int = 0
    accepted: int = 0
    finish_reason: str = ""
    seconds: float = 0.0

    @property
    def accepted_length(self) -> float:
        """Tokens emitted per verify step (tau): accepted proposals + the target's token."""
        return len(self.tokens) / max(self.num_steps, 1)

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / max(self.seconds, 1e-9)


class SpeculativeDecoder:
    """A target and a draft policy, checked to be compatible, decoding requests.

    Args:
        target: the verifier.
        policy: the drafter, or a zero-argument callable returning the *current* drafter
            (serving passes one so a newly published version takes over between steps).
            None decodes with the target alone through the same code path.
        config: lookahead, sampling rule, trace options.
        eos_token_ids: tokens that end a request.
    """

    def __init__(
        self,
        target: Target,
        policy: DraftPolicy | Callable[[], DraftPolicy] | None,
        config: DecodeConfig = DecodeConfig(),
        eos_token_ids: Iterable[int] = (),
    ) -> None:
        self.target = target
        self.config = config
        self.eos_token_ids = tuple(eos_token_ids)
        self._policy = policy
        current = self.current_policy()
        if current is not None:
            check_vocab_compatible(current.vocab_size, target.vocab_size)
            if current.uses_target_features:
                wanted = tuple(getattr(current, "hidden_layers", ()))
                if not target.hidden_layers or (
                    wanted and target.normalized_layers(wanted) != target.normalized_layers(target.hidden_layers)
                ):
                    raise ValueError(
                        f"the drafter reads the target's hidden_layers {wanted or '(some)'} but the Target "
                        f"records {target.hidden_layers or 'none'}; build it with "
                        f"Target(model, hidden_layers={wanted or '...'})"
                    )

    def current_policy(self) -> DraftPolicy | None:
        if self._policy is None or isinstance(self._policy, DraftPolicy):
            return self._policy
        return self._policy()

    def start(
        self, prompt_ids, max_new_tokens: int, request_id: str = "", domain: str = ""
    ) -> DecodeState:
        return start_decode(
            self.target,
            prompt_ids,
            max_new_tokens,
            self.eos_token_ids,
            max_k=self.config.k,
            request_id=request_id,
            domain=domain,
        )

    def step(self, state: DecodeState, generator: torch.Generator | None = None, keep_target_probs: bool = True) -> Trace:
        """One verify step with whichever draft version is current right now.

        ``keep_target_probs=False`` leaves the target's distributions out of the trace (a
        softmax and top-K over ``(k + 1, V)`` per step) for callers that read no trace.
        """
        return self._step(state, generator, self._config(keep_target_probs))

    def _step(self, state: DecodeState, generator: torch.Generator | None, config: DecodeConfig) -> Trace:
        return speculate_step(self.current_policy(), self.target, state, config, generator)

    def _config(self, keep_target_probs: bool) -> DecodeConfig:
        if keep_target_probs or not self.config.record_target_probs:
            return self.config
        return replace(self.config, record_target_probs=False)

    def generate(
        self,
        prompt_ids,
        max_new_tokens: int,
        generator: torch.Generator | None = None,
        request_id: str = "",
        domain: str = "",
        keep_traces: bool = True,
        on_trace: Callable[[Trace], None] | None = None,
    ) -> Generation:
        """Decode one request to EOS or ``max_new_tokens``."""
        began = time.perf_counter()
        state = self.start(prompt_ids, max_new_tokens, request_id, domain)
        traces: list[Trace] = []
        accepted = 0
        config = self._config(keep_target_probs=keep_traces or on_trace is not None)  # once, not per step
        while not state.finished:
            trace = self._step(state, generator, config)
            accepted += trace.num_accepted
            if keep_traces:
                traces.append(trace)
            if on_trace is not None:
                on_trace(trace)
        return self._result(state, traces, accepted, time.perf_counter() - began)

    def generate_batch(
        self,
        prompts: Sequence,
        max_new_tokens: int,
        seed: int = 0,
        keep_traces: bool = True,
    ) -> list[Generation]:
        """Decode every prompt to EOS or ``max_new_tokens``, all of them together: each step
        is one batched speculative step of the requests still running (the engine's step).

        Row ``i`` draws from its own generator, seeded ``seed + i``, so its output does not
        depend on the others (up to float reassociation in the batched forwards). Rows
        share wall-clock, so each :class:`Generation` reports the batch's seconds."""
        began = time.perf_counter()
        states = [self.start(ids, max_new_tokens) for ids in prompts]
        generators = [torch.Generator().manual_seed(seed + row) for row in range(len(states))]
        traces, accepted = self.finish_together(states, generators, keep_traces)
        seconds = time.perf_counter() - began
        return [self._result(state, row_traces, row_accepted, seconds)
                for state, row_traces, row_accepted in zip(states, traces, accepted)]  # fmt: skip

    def finish_together(
        self, states: Sequence[DecodeState], generators: Sequence[torch.Generator | None], keep_traces: bool = True
    ) -> tuple[list[list[Trace]], list[int]]:
        """Step started ``states`` together, one batched speculative step of those still
        running at a time, until all are finished. Returns each row's traces (empty unless
        ``keep_traces``) and its accepted draft tokens."""
        traces: list[list[Trace]] = [[] for _ in states]
        accepted = [0] * len(states)
        live = [row for row, state in enumerate(states) if not state.finished]
        config = self._config(keep_target_probs=keep_traces)
        while live:
            stepped = speculate_batch(self.current_policy(), self.target, [states[row] for row in live],
                                      [config] * len(live), [generators[row] for row in live])  # fmt: skip
            for row, trace in zip(live, stepped):
                accepted[row] += trace.num_accepted
                if keep_traces:
                    traces[row].append(trace)
            live = [row for row in live if not states[row].finished]
        return traces, accepted

    @staticmethod
    def _result(state: DecodeState, traces: list[Trace], accepted: int, seconds: float) -> Generation:
        return Generation(
            prompt_ids=state.tokens[: state.prompt_len].clone(),
            tokens=state.generated.clone(),
            traces=traces,
            num_steps=state.steps,
            accepted=accepted,
            finish_reason=state.finish_reason or "",
            seconds=seconds,
        )
