"""The TensorBoard dashboard of a train run, as one PNG (for docs and headless machines).

    python experiments/plot_tensorboard.py runs/<name> [--out docs/images/dashboard.png]

Reads the event files every arm wrote under ``runs/<name>/tensorboard/<arm>/`` (the data
``tensorboard --logdir runs/<name>/tensorboard`` shows) and draws the main panels: accepted
length, tokens/s, draft version, training loss, buffer staleness and per-position acceptance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from aurora_rl.plots import moving_average  # noqa: E402

PANELS = [  # (tag or tag prefix, title, smoothing window)
    ("spec/accepted_length", "accepted length per request", 20),
    ("charts/tokens_per_s", "tokens / s per request", 20),
    ("charts/draft_version", "live draft version", 1),
    ("losses/loss", "learner loss (per update)", 10),
    ("charts/buffer_mean_staleness", "buffer mean staleness (versions)", 1),
    ("spec/accept_rate_at_position/", "acceptance rate by draft position", 20),
]


def load(arm_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    events = EventAccumulator(str(arm_dir), size_guidance={"scalars": 0}).Reload()
    return {tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
            for tag in events.Tags()["scalars"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", help="PNG path (default <run_dir>/dashboard.png)")
    args = parser.parse_args(argv)
    board = Path(args.run_dir) / "tensorboard"
    arms = {d.name: load(d) for d in sorted(board.iterdir()) if d.is_dir()} if board.exists() else {}
    if not arms:
        print(f"error: no TensorBoard events under {board}; give a directory written by python -m aurora_rl.train",
              file=sys.stderr)
        return 2
    # per-position acceptance of one arm only (one line per position): the most learned one
    with_positions = [arm for arm, scalars in arms.items() if any(t.startswith(PANELS[-1][0]) for t in scalars)]
    position_arm = next((a for a in ("online_pretrained", "online_scratch") if a in with_positions),
                        with_positions[-1] if with_positions else None)
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    for ax, (tag, title, window) in zip(axes.flat, PANELS):
        if tag.endswith("/"):  # a family of tags, one line each
            scalars = arms.get(position_arm, {})
            for t in sorted(t for t in scalars if t.startswith(tag)):
                steps, values = scalars[t]
                ax.plot(steps, moving_average(values, window), lw=1.2, label=f"position {t.rsplit('/', 1)[1]}")
            title = f"{title} ({position_arm})"
        else:
            for arm, scalars in arms.items():
                if tag in scalars:
                    steps, values = scalars[tag]
                    ax.plot(steps, moving_average(values, window), lw=1.2, label=arm)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in axes.flat:
        ax.set_xlabel("global step (verify steps decoded)")
    fig.suptitle(f"TensorBoard scalars of {Path(args.run_dir).name}")
    fig.tight_layout()
    out = Path(args.out) if args.out else Path(args.run_dir) / "dashboard.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
