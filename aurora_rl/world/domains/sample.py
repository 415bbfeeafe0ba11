"""The unit every domain produces, the length budget it must meet, and two ways to fill it."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """One prompt and the continuation that follows it.

    `source` names where the text came from (a stdlib module, a doc topic, or for generated
    domains the prompt itself); the corpus keeps every source on one side of the
    train / held-out split, so held-out text never shares a file with training text.
    """

    prompt: str
    reference: str
    source: str


@dataclass(frozen=True)
class LengthBudget:
    """Inclusive (min, max) character lengths of a prompt and of its reference."""

    prompt_chars: tuple[int, int]
    reference_chars: tuple[int, int]

    def admits(self, prompt: str, reference: str) -> bool:
        (pmin, pmax), (rmin, rmax) = self.prompt_chars, self.reference_chars
        return pmin <= len(prompt) <= pmax and rmin <= len(reference) <= rmax

    def windows(self, units: Sequence[tuple[str, str]], *, overlap: bool = False) -> Iterator[tuple[str, str]]:
        """Cut a document into (prompt, reference) pairs within budget.

        `units` are (separator, text) pairs: lines with separator "\n", or sentences with
        " " or "\n". A prompt is whole units without its first separator; its reference
        is the next units *with* theirs, so the reference opens with the separator
        (" The", "\n    return") exactly as that text reads inside the document, and
        prompt + reference is verbatim text. Each part takes at least one unit, then as
        many as fit under its maximum; windows that miss a minimum are skipped. Windows
        follow each other, or with `overlap` the next prompt starts where this reference did
        (about twice the windows from scarce text).
        """
        position = 0
        while position < len(units):
            opening_separator = len(units[position][0])
            prompt, reference_start = _take(units, position, self.prompt_chars[1] + opening_separator)
            reference, reference_end = _take(units, reference_start, self.reference_chars[1])
            if self.admits(prompt[opening_separator:], reference):
                yield prompt[opening_separator:], reference
            position = reference_start if overlap else reference_end


def _take(units: Sequence[tuple[str, str]], start: int, max_chars: int) -> tuple[str, int]:
    end, size = start, 0
    while end < len(units) and (end == start or size + len(units[end][0]) + len(units[end][1]) <= max_chars):
        size += len(units[end][0]) + len(units[end][1])
        end += 1
    return "".join(separator + text for separator, text in units[start:end]), end


def draw_unique(
    domain: str, count: int, rng: random.Random, budget: LengthBudget, draw: Callable[[random.Random], tuple[str, str]]
) -> list[Sample]:
    """`count` samples with distinct prompts from a template sampler, redrawing any outside the budget.

    Raises ValueError when the templates cannot supply that many distinct prompts.
    """
    samples: dict[str, Sample] = {}
    for _ in range(50 * count):
        prompt, reference = draw(rng)
        if prompt not in samples and budget.admits(prompt, reference):
            samples[prompt] = Sample(prompt, reference, source=prompt)
            if len(samples) == count:
                return list(samples.values())
    raise ValueError(
        f"domain {domain!r}: only {len(samples)} distinct samples within prompt_chars={budget.prompt_chars}, "
        f"reference_chars={budget.reference_chars} after {50 * count} draws (wanted {count}); "
        "lower the sample counts or widen the length budget."
    )
