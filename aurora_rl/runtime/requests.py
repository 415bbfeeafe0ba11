"""What passes between a caller and the decode engine: a request, its per-step outputs and
final stats, the handle that cancels it, and the two refusals (full queue, shutting down)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from aurora_rl.core.sampling import GREEDY, SamplingParams
from aurora_rl.core.spec import DecodeConfig, DecodeState

SHUTTING_DOWN = "the server is shutting down"


class EngineFull(Exception):
    """The request queue is full: the caller should answer 429 and the client retry later."""


class EngineClosed(Exception):
    """The engine no longer accepts requests (shutting down): the caller should answer 503."""


@dataclass(frozen=True)
class GenerationRequest:
    """One request, already tokenised and validated by the caller.

    Attributes:
        request_id: unique id; every trace of the request carries it.
        prompt_ids: the prompt's token ids (at least one).
        max_new_tokens: token budget (>= 1; prompt + budget within the target's context).
        sampling: the target's decoding rule for this request (greedy by default).
        seed: seeds this request's random draws (None = derived from the engine seed).
        domain: a label every trace of the request carries (traffic studies group by it).
    """

    request_id: str
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    sampling: SamplingParams = GREEDY
    seed: int | None = None
    domain: str = ""


@dataclass(frozen=True)
class RequestStats:
    """How a finished request went.

    Attributes:
        finish_reason: "eos", "length", "stop" (the caller ended it at a stop string),
            "cancelled" or "error".
        draft_versions: the draft versions that proposed for it, in order of first use.
        queued_seconds / first_token_seconds / total_seconds: from submission to admission,
            to the first emitted token, and to the end.
    """

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    verify_steps: int
    proposed_tokens: int
    accepted_tokens: int
    draft_versions: tuple[int, ...]
    queued_seconds: float
    first_token_seconds: float | None
    total_seconds: float

    @property
    def accepted_length(self) -> float:
        """Tokens emitted per verify step (tau)."""
        return self.completion_tokens / max(self.verify_steps, 1)


@dataclass(frozen=True)
class EngineOutput:
    """What one step of a request produced, delivered to its sink in order.

    ``token_ids`` are the tokens this step appended (EOS included when it ended the
    request); ``stats`` is set on the last output of a request, and ``error`` when it
    failed or was cancelled.
    """

    token_ids: tuple[int, ...]
    draft_version: int | None
    stats: RequestStats | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.stats is not None


Sink = Callable[[EngineOutput], None]


@dataclass
class _Sequence:
    request: GenerationRequest
    sink: Sink
    generator: torch.Generator
    submitted: float = field(default_factory=time.perf_counter)
    admitted: float | None = None
    first_token: float | None = None
    state: DecodeState | None = None
    config: DecodeConfig | None = None  # the engine's DecodeConfig with this request's sampling rule
    proposed: int = 0
    accepted: int = 0
    versions: list[int] = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    cancelled_as: str = "cancelled"  # the finish reason a cancel reports
    ended: bool = False  # its final output went out; nothing may follow it

    def stats(self, finish_reason: str) -> RequestStats:
        """What this request cost and got, up to now, ending with ``finish_reason``."""
        now = time.perf_counter()
        state = self.state
        return RequestStats(
            finish_reason=finish_reason,
            prompt_tokens=len(self.request.prompt_ids),
            completion_tokens=state.num_generated if state is not None else 0,
            verify_steps=state.steps if state is not None else 0,
            proposed_tokens=self.proposed,
            accepted_tokens=self.accepted,
            draft_versions=tuple(self.versions),
            queued_seconds=(self.admitted or now) - self.submitted,
            first_token_seconds=None if self.first_token is None else self.first_token - self.submitted,
            total_seconds=now - self.submitted,
        )


class RequestHandle:
    """The caller's side of a submitted request: its id and a way to cancel it."""

    def __init__(self, sequence: _Sequence) -> None:
        self._sequence = sequence
        self.request_id = sequence.request.request_id

    def cancel(self, finish_reason: str = "cancelled") -> None:
        """Stop decoding before the next step (no-op once finished); the sink then gets a
        final output with this finish reason: "cancelled" (nobody wants the rest) or "stop"
        (the caller found a stop string: the request ended normally). The first cancel wins."""
        if not self._sequence.cancel_requested.is_set():
            self._sequence.cancelled_as = finish_reason
            self._sequence.cancel_requested.set()
