"""Per-phase accepted length and tokens/s of every arm of one train run, as markdown.

    python experiments/baselines_table.py runs/studies/baselines/tiny-seed0/summary.json

Each cell is ``tau / tok/s`` for that traffic phase; the last columns are the whole run and
its speed relative to target_only (decode time only; the learner's time is excluded as
in the train CLI).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(summary: dict) -> str:
    arms = summary["arms"]
    labels = [p["label"] for p in summary["phases"]]
    reference = arms.get("target_only", {}).get("tokens_per_s")
    lines = [
        "| arm | " + " | ".join(labels) + " | all: tau | all: tok/s | vs target_only | suffix share |",
        "|---|" + "---|" * (len(labels) + 4),
    ]
    for arm, r in arms.items():
        phases = " | ".join(f"{p['accepted_length']:.2f} / {p['tokens_per_s']:.0f}" for p in r["phases"])
        speedup = f"{r['tokens_per_s'] / reference:.2f}x" if reference else "-"
        share = r.get("suffix_share")
        lines.append(f"| {arm} | {phases} | {r['accepted_length']:.2f} | {r['tokens_per_s']:.0f} | {speedup} | "
                     f"{'-' if share is None else f'{share:.2f}'} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(json.loads(Path(sys.argv[1]).read_text())))
