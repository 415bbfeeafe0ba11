"""ANSI rendering of a speculative-decoding step: what was kept and what was thrown away."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from aurora_rl.core.spec import DecodeState
from aurora_rl.core.trace import Trace

GREEN, RED, YELLOW, DIM, RESET = "\033[32m", "\033[9;31m", "\033[1;33m", "\033[2m", "\033[0m"
CONTEXT_CHARS = 120


def render_step(tokenizer: PreTrainedTokenizerBase, state: DecodeState, trace: Trace | None) -> str:
    """The tail of the context, then accepted proposals (green), rejected ones (red,
    struck through) and the target's own token (bold yellow), with a one-line summary."""
    decode = lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False)  # noqa: E731
    if trace is None:
        return f"{DIM}{decode(state.sequence.tolist())[-CONTEXT_CHARS:]}{RESET}\n[prompt, no step yet]"
    accepted = trace.num_accepted
    own_token = trace.emitted[accepted:].tolist()
    context = decode(trace.context_ids.tolist())[-CONTEXT_CHARS:]
    spans = (
        f"{DIM}{context}{RESET}"
        f"{GREEN}{decode(trace.proposed[:accepted].tolist())}{RESET}"
        f"{RED}{decode(trace.proposed[accepted:].tolist())}{RESET}"
        f"{YELLOW}{decode(own_token)}{RESET}"
    )
    summary = (
        f"[step {trace.step}: accepted {accepted}/{trace.num_proposed}, "
        f"{state.num_generated}/{state.max_new_tokens} tokens"
        + (f", finished: {state.finish_reason}" if state.finished else "")
        + "]"
    )
    return f"{spans}\n{summary}"
