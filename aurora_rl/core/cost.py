"""``CostModel``: what one speculative step costs on the hardware it runs on.

Accepted length is not what users pay for; seconds are. A step that drafts ``k`` tokens
and verifies them costs ``k`` draft forwards plus one target forward scoring ``k + 1``
tokens, and on a CPU that forward is *not* free in its width (scoring 5 tokens costs ~1.3x
one). A :class:`CostModel` holds both costs as measured tables -- target seconds by verify
width and batch size, draft seconds per proposal by batch size -- so controllers, the
``DraftLength-v0`` env and reports can turn accepted tokens into goodput:

    goodput = emitted tokens / modelled seconds

Costs in *token units* divide by one target-only step (width 1): a target-only step costs
exactly 1 and emits exactly 1 token, so ``emitted - token_cost(k)`` is the number of tokens a
step gains over decoding with the target alone in the same time.

Profiling (:func:`profile_cost`) and its on-disk cache live in ``core/cost_profile.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class CostModel:
    """Seconds of a step's forward passes, by verify width and batch size.

    Attributes:
        batches: batch sizes measured (rows per forward), ascending, starting at 1.
        target_seconds: ``(len(batches), max_width)`` seconds of one target forward in which
            every one of ``batches[b]`` rows scores ``w + 1`` new tokens (entry ``[b][w]``).
        draft_seconds: ``(len(batches),)`` seconds of one draft round (one proposal for
            each of ``batches[b]`` rows).
        label: where it was measured (machine, models), for reports.
    """

    batches: tuple[int, ...]
    target_seconds: tuple[tuple[float, ...], ...]
    draft_seconds: tuple[float, ...]
    label: str = ""

    def __post_init__(self) -> None:
        if not self.batches or self.batches[0] != 1 or list(self.batches) != sorted(set(self.batches)):
            raise ValueError(f"batches must be ascending distinct sizes starting at 1, got {self.batches}")
        if len(self.target_seconds) != len(self.batches) or len(self.draft_seconds) != len(self.batches):
            raise ValueError(
                f"{len(self.batches)} batch sizes need as many rows of target_seconds and draft_seconds, got "
                f"{len(self.target_seconds)} and {len(self.draft_seconds)}"
            )
        widths = {len(row) for row in self.target_seconds}
        if len(widths) != 1 or widths == {0}:
            raise ValueError("every row of target_seconds must hold the same number (>= 1) of widths")
        values = [v for row in self.target_seconds for v in row] + list(self.draft_seconds)
        if not all(v >= 0 for v in values) or not all(v > 0 for row in self.target_seconds for v in row):
            raise ValueError("target seconds must be > 0 and draft seconds >= 0")

    @property
    def max_width(self) -> int:
        """The widest verify forward measured: ``max_k + 1`` tokens."""
        return len(self.target_seconds[0])

    @property
    def max_k(self) -> int:
        return self.max_width - 1

    def _by_batch(self, values: Sequence[float], batch: int) -> float:
        """Linear interpolation over the measured batch sizes (extrapolated past the last)."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        sizes = self.batches
        if len(sizes) == 1:
            return values[0] * batch
        for i in range(1, len(sizes)):
            if batch <= sizes[i] or i == len(sizes) - 1:
                lo, hi = sizes[i - 1], sizes[i]
                return values[i - 1] + (values[i] - values[i - 1]) * (batch - lo) / (hi - lo)
        raise AssertionError("unreachable")

    def target(self, width: int, batch: int = 1) -> float:
        """Seconds of one target forward of ``batch`` rows each scoring ``width`` tokens."""
        if not 1 <= width <= self.max_width:
            raise ValueError(
                f"verify width {width} is outside the measured 1..{self.max_width}: profile the cost "
                f"model with max_k >= {width - 1}"
            )
        return self._by_batch([row[width - 1] for row in self.target_seconds], batch)

    def draft(self, batch: int = 1) -> float:
        """Seconds of one draft round (one proposal per row) at ``batch`` rows."""
        return self._by_batch(self.draft_seconds, batch)

    def step_seconds(self, k: int, batch: int = 1) -> float:
        """Seconds of one speculative step of ``batch`` rows, each drafting ``k`` tokens."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return self.target(k + 1, batch) + k * self.draft(batch)

    def token_cost(self, k: int, batch: int = 1) -> float:
        """:meth:`step_seconds` in units of one target-only step (which emits one token)."""
        return self.step_seconds(k, batch) / self.target(1, batch)

    def draft_token_cost(self, batch: int = 1) -> float:
        """One draft round in units of one target-only step."""
        return self.draft(batch) / self.target(1, batch)

    def verify_token_cost(self, k: int, batch: int = 1) -> float:
        """The target forward of a ``k``-proposal step in units of one target-only step."""
        return self.target(k + 1, batch) / self.target(1, batch)

    def goodput(self, tokens: int, proposals_per_step: Sequence[int], batch: int = 1) -> float:
        """Tokens per modelled second of a decode whose steps drafted these many tokens."""
        seconds = sum(self.step_seconds(k, batch) for k in proposals_per_step)
        return tokens / max(seconds, 1e-12)

    @classmethod
    def linear(
        cls, draft_ratio: float, width_slope: float, max_k: int, target_seconds: float = 1e-3
    ) -> "CostModel":
        """An analytic model (batch 1): a target forward of width ``w`` costs
        ``target_seconds * (1 + width_slope * (w - 1))`` and a draft forward ``draft_ratio``
        target forwards. Deterministic on every machine, for tests and worked examples."""
        if draft_ratio < 0 or width_slope < 0 or max_k < 1:
            raise ValueError(f"need draft_ratio >= 0, width_slope >= 0 and max_k >= 1, got {draft_ratio}, {width_slope}, {max_k}")
        row = tuple(target_seconds * (1 + width_slope * w) for w in range(max_k + 1))
        return cls((1,), (row,), (draft_ratio * target_seconds,), f"linear(c={draft_ratio}, slope={width_slope})")

    def to_json(self) -> str:
        return json.dumps({"batches": self.batches, "target_seconds": self.target_seconds,
                           "draft_seconds": self.draft_seconds, "label": self.label}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "CostModel":
        data = json.loads(text)
        return cls(tuple(data["batches"]), tuple(tuple(r) for r in data["target_seconds"]),
                   tuple(data["draft_seconds"]), data.get("label", ""))

    def summary(self) -> str:
        """One line: the cost ratio c, the width cost and the batch-1 step costs."""
        steps = ", ".join(f"k={k}: {self.token_cost(k):.2f}" for k in range(self.max_k + 1))
        return (f"target 1 token {self.target(1) * 1e3:.2f} ms, {self.max_width} tokens "
                f"{self.target(self.max_width) * 1e3:.2f} ms; draft {self.draft() * 1e3:.2f} ms "
                f"(c = {self.draft_token_cost():.3f}); step cost in target steps: {steps}")
