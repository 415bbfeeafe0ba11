"""Incremental detokenisation with stop strings, for streaming text as tokens arrive.

Byte-level BPE tokens need not end on a character boundary: a multi-byte character split
over two tokens decodes to U+FFFD until its last byte arrives. So the text is always the
decode of the whole generated prefix, and only the part that can no longer change is
released: trailing replacement characters and a tail that could still grow into a stop
string are held back until the next tokens (or the end) settle them. Concatenating every
released delta therefore gives exactly ``tokenizer.decode(all tokens)`` cut at the first
stop string.
"""

from __future__ import annotations

from typing import Sequence

from transformers import PreTrainedTokenizerBase

REPLACEMENT = "\ufffd"


def decode(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> str:
    """The text of ``token_ids`` as a completion shows it: special tokens (EOS) dropped, no
    space clean-up (which would make a prefix's text change when more tokens arrive)."""
    return tokenizer.decode(list(token_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


class IncrementalDetokenizer:
    """Turns a growing token sequence into text deltas, stopping at the first stop string.

    Args:
        tokenizer: the tokenizer of the served model.
        stop: strings that end the completion; the text returned excludes them.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self._holdback = max((len(s) for s in self.stop), default=1) - 1
        self._ids: list[int] = []
        self._released = 0  # characters of the text already handed out
        self.text = ""  # everything released so far
        self.stopped = False  # a stop string was found

    def push(self, token_ids: Sequence[int]) -> str:
        """Add tokens; return the newly settled text (possibly empty)."""
        if self.stopped:
            return ""
        self._ids.extend(token_ids)
        text = decode(self.tokenizer, self._ids)
        end = self._cut_at_stop(text)
        if end is None:
            end = len(text.rstrip(REPLACEMENT)) - self._holdback
        return self._release(text, end)

    def flush(self) -> str:
        """The request ended: release everything still held back."""
        if self.stopped:
            return ""
        text = decode(self.tokenizer, self._ids)
        end = self._cut_at_stop(text)
        return self._release(text, len(text) if end is None else end)

    def _cut_at_stop(self, text: str) -> int | None:
        # Only text after what was released can hold a new stop string, plus the tail of
        # the released part it may straddle.
        start = max(self._released - self._holdback, 0)
        hits = [at for at in (text.find(s, start) for s in self.stop) if at >= 0]
        if not hits:
            return None
        self.stopped = True
        return min(hits)

    def _release(self, text: str, end: int) -> str:
        if end <= self._released:
            return ""
        delta = text[self._released : end]
        self._released = end
        self.text += delta
        return delta
