"""Plots people would rather look at than read (matplotlib, written as PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def moving_average(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_accepted_length(
    series: Mapping[str, Sequence[float]],
    phases: Sequence[Mapping],
    path: str | Path,
    title: str = "",
    window: int = 20,
    spread: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> Path:
    """Accepted length per request (moving average) for each arm, traffic phases shaded.

    ``phases`` are mappings with ``start``, ``end`` and ``label``; ``spread`` optionally
    gives a (low, high) band per arm (e.g. min/max over seeds).
    """
    fig, ax = plt.subplots(figsize=(12.5 if len(series) > 5 else 10, 4.2))
    for number, phase in enumerate(phases):
        if number % 2:
            ax.axvspan(phase["start"], phase["end"], color="0.92", zorder=0)
        ax.text((phase["start"] + phase["end"]) / 2, 1.0, phase["label"], transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=9, color="0.35")
    for name, values in series.items():
        smooth = moving_average(list(values), window)
        (line,) = ax.plot(range(len(smooth)), smooth, label=name, lw=1.6)
        if spread and name in spread:
            low, high = spread[name]
            ax.fill_between(range(len(low)), moving_average(list(low), window), moving_average(list(high), window),
                            color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("request")
    ax.set_ylabel(f"accepted length (tokens / verify step, {window}-request mean)")
    if title:
        ax.set_title(title, pad=18)
    if len(series) > 5:  # many lines: the legend goes beside the axes, not over the data
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    else:
        ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
