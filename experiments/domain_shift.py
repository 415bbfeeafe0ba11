"""Does the miniature world shift? Train one drafter per domain offline, decode every domain.

    python experiments/domain_shift.py                    # default world
    python experiments/domain_shift.py --world tiny --prompts 6

A drafter pretrained on one domain's text should accept clearly more on that domain than
on the others: that is the distribution shift that makes online learning matter. Writes
experiments/results/domain_shift.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from aurora_rl.core.generate import SpeculativeDecoder  # noqa: E402
from aurora_rl.core.spec import DecodeConfig  # noqa: E402
from aurora_rl.core.target import Target  # noqa: E402
from aurora_rl.policies.pretrained import DRAFTER_TRAINING, DrafterRecipe, pretrained_drafter  # noqa: E402
from aurora_rl.world import get_world  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def accepted_length(decoder: SpeculativeDecoder, prompts: list[list[int]], max_new_tokens: int) -> float:
    tokens = steps = 0
    for ids in prompts:
        gen = decoder.generate(ids, max_new_tokens, keep_traces=False)
        tokens, steps = tokens + len(gen.tokens), steps + gen.num_steps
    return tokens / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="default")
    parser.add_argument("--prompts", type=int, default=12, help="held-out prompts per domain")
    parser.add_argument("--steps", type=int, default=300, help="pretraining steps per drafter")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    world = get_world(args.world)
    tokenizer = world.tokenizer()
    target = Target(world.target())
    heldout = world.dataset("heldout")
    prompts = {
        d: [tokenizer(p)["input_ids"] for p in heldout.filter(lambda r: r["domain"] == d)["prompt"][: args.prompts]]
        for d in world.domains
    }
    drafters = {
        "all": pretrained_drafter(world, DrafterRecipe(training=DRAFTER_TRAINING.with_steps(args.steps))),
        **{d: pretrained_drafter(world, DrafterRecipe((d,), DRAFTER_TRAINING.with_steps(args.steps))) for d in world.domains},
    }
    table: dict[str, dict[str, float]] = {}
    cells = [(trained_on, evaluated_on) for trained_on in drafters for evaluated_on in world.domains]
    for trained_on, evaluated_on in tqdm(cells, desc="decode"):
        decoder = SpeculativeDecoder(target, drafters[trained_on], DecodeConfig(k=args.k), [tokenizer.eos_token_id])
        table.setdefault(trained_on, {})[evaluated_on] = accepted_length(decoder, prompts[evaluated_on], args.max_new_tokens)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("domain_shift" if args.world == "default" else f"domain_shift_{args.world}")
    header = "| drafter trained on | " + " | ".join(world.domains) + " | own vs others |\n"
    header += "|---|" + "---|" * (len(world.domains) + 1) + "\n"
    rows = []
    for trained_on, row in table.items():
        cells_md = " | ".join(f"**{v:.2f}**" if d == trained_on else f"{v:.2f}" for d, v in row.items())
        if trained_on in row:
            others = [v for d, v in row.items() if d != trained_on]
            ratio = f"{row[trained_on] / (sum(others) / len(others)):.2f}x"
        else:
            ratio = "-"
        rows.append(f"| {trained_on} | {cells_md} | {ratio} |")
    command = f"python experiments/domain_shift.py --world {args.world} --prompts {args.prompts} --steps {args.steps} --k {args.k} --max-new-tokens {args.max_new_tokens}"
    markdown = (
        f"Accepted length (tokens per verify step, k={args.k}, greedy) on {args.prompts} held-out prompts "
        f"per domain of the `{args.world}` world; drafters pretrained {args.steps} steps on one domain's text "
        f"(row) or on all of them.\n\n" + header + "\n".join(rows) + f"\n\nReproduce: `{command}`\n"
    )
    stem.with_suffix(".md").write_text(markdown)
    stem.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "table": table}, indent=2))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    values = [[table[t][e] for e in world.domains] for t in drafters]
    image = ax.imshow(values, cmap="viridis")
    ax.set_xticks(range(len(world.domains)), world.domains)
    ax.set_yticks(range(len(drafters)), list(drafters))
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("drafter trained on")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < max(map(max, values)) * 0.75 else "black")
    fig.colorbar(image, label="accepted length")
    ax.set_title(f"Domain shift in the {args.world} world")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
