"""Accepted length after the same budget of traces, per algorithm and drafter.

    python experiments/algorithm_table.py                  # tiny world, as in the test suite
    python experiments/algorithm_table.py --world default --rounds 4

Protocol (the same as tests/test_algorithms_learn.py): from an untrained drafter, a few
rounds of on-policy trace collection on training prompts, each followed by a fixed number
of updates; then accepted length by real greedy decoding of held-out prompts. Writes
experiments/results/algorithms_<world>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from aurora_rl.algos import ALGORITHMS, AlgoConfig
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.policies.eagle import EagleDrafter
from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.online.rounds import accepted_length, train_rounds
from aurora_rl.world import get_world
from aurora_rl.world.traffic import make_traffic

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="tiny")
    parser.add_argument("--domains", default="math,sql,chat", help="comma-separated, or 'all'")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=30, help="updates per round")
    parser.add_argument("--train-prompts", type=int, default=8, help="prompts decoded per round")
    parser.add_argument("--eval-prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    world = get_world(args.world)
    tokenizer = world.tokenizer()
    eos, pad = [tokenizer.eos_token_id], tokenizer.pad_token_id
    target = Target(world.target(), hidden_layers=(-1,))
    domains = world.domains if args.domains == "all" else args.domains.split(",")
    encode = lambda stream: [tokenizer(r.prompt)["input_ids"] for r in stream.requests]  # noqa: E731
    train = encode(make_traffic(world.dataset("train", domains), "mixed", args.rounds * args.train_prompts, seed=args.seed + 1))
    heldout = encode(make_traffic(world.dataset("heldout", domains), "mixed", args.eval_prompts, seed=args.seed + 2))

    def fresh(kind):
        if kind == "eagle":
            return EagleDrafter.from_target(target, seed=args.seed)
        return SmallLMDrafter.from_config(world.drafter_config(), seed=args.seed)

    decode = DecodeConfig(k=args.k)
    rounds = [train[i * args.train_prompts : (i + 1) * args.train_prompts] for i in range(args.rounds)]
    measure = lambda drafter: accepted_length(target, drafter, heldout, decode, args.max_new_tokens, eos)  # noqa: E731
    table = {kind: {"untrained": measure(fresh(kind))} for kind in ("small_lm", "eagle")}
    seconds = {}
    for name, kind in tqdm([(n, k) for n in ALGORITHMS for k in table], desc="algorithms"):
        began = time.perf_counter()
        drafter = fresh(kind)
        algo = AlgoConfig(name=name, lr=args.lr, batch_size=32, max_context=64, context_lm_coef=0.0)
        train_rounds(target, drafter, algo, rounds, decode, args.max_new_tokens, eos, pad, args.updates, args.seed)
        table[kind][name] = measure(drafter)
        seconds[f"{name}/{kind}"] = time.perf_counter() - began

    command = "python experiments/algorithm_table.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
    )
    lines = [
        f"Accepted length (tokens per verify step, k={args.k}, greedy) on {args.eval_prompts} held-out "
        f"{'/'.join(domains)} prompts of the `{args.world}` world, after {args.rounds} rounds x "
        f"({args.train_prompts} prompts decoded on-policy, then {args.updates} updates of 32 traces), "
        f"lr {args.lr}, from an untrained drafter. pg uses its default forward-KL anchor (0.3).",
        "",
        "| algorithm | small LM | EAGLE-style head |",
        "|---|---|---|",
    ]
    for name in ["untrained", *ALGORITHMS]:
        lines.append(f"| {name} | {table['small_lm'][name]:.3f} | {table['eagle'][name]:.3f} |")
    lines += ["", f"Reproduce: `{command}`", ""]
    markdown = "\n".join(lines)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"algorithms_{args.world}.md").write_text(markdown)
    (RESULTS / f"algorithms_{args.world}.json").write_text(json.dumps({"args": vars(args), "table": table, "seconds": seconds}, indent=2))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
