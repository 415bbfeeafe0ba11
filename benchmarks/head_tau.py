"""Accepted length of pretrained EAGLE-3-style heads on held-out chat prompts: how good a
pretraining recipe is, with no timing. Greedy decoding is deterministic, so tau is the same
on a busy machine as on a quiet one, and many more prompts fit than in a speed benchmark.

    python benchmarks/head_tau.py --world smollm2 --num-prompts 30 --target-weights fp16 \\
        --recipe "num_prompts=1000 max_new_tokens=64 steps=3200 batch_size=32" \\
        --recipe "num_prompts=1000 max_new_tokens=64 steps=3200 batch_size=32 lr_schedule=cosine"

Each ``--recipe`` is one head: ``EaglePretrainRecipe`` overrides (``algos/eagle_pretrain.py``),
pretrained and cached on first use. Printed per head and ``k``: tau (tokens per verify step)
and, per proposal position i, the share of steps whose first i + 1 proposals were all
accepted (tau - 1 is their sum when every step proposes k), over the same prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from aurora_rl.algos.eagle_pretrain import EaglePretrainRecipe, pretrained_eagle
from aurora_rl.core.fp16_weights import TARGET_WEIGHTS, apply_target_weights
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.settings import ConfigError, parse_overrides
from aurora_rl.world import get_world
from aurora_rl.world.traffic import make_traffic


def head_tau(decoder: SpeculativeDecoder, prompts: list[torch.Tensor], k: int, max_new_tokens: int, desc: str) -> dict:
    """tau and, per position, the share of steps that kept it, for one head at lookahead ``k``."""
    tokens = steps = 0
    reached, kept = [0] * k, [0] * k  # per position: steps that proposed it, steps that kept it
    for ids in tqdm(prompts, desc=desc, leave=False):
        out = decoder.generate(ids, max_new_tokens)
        tokens, steps = tokens + len(out.tokens), steps + out.num_steps
        for trace in out.traces:
            for position in range(len(trace.proposed)):
                reached[position] += 1
                kept[position] += int(trace.num_accepted > position)
    return {
        "k": k, "tau": tokens / steps, "tokens": tokens, "steps": steps,
        "kept_by_position": [a / max(r, 1) for a, r in zip(kept, reached)],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="smollm2")
    parser.add_argument("--recipe", action="append", default=[], metavar='"KEY=VALUE ..."',
                        help="one head's EaglePretrainRecipe overrides (repeat for more heads)")
    parser.add_argument("--k", type=int, nargs="+", default=[4])
    parser.add_argument("--num-prompts", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1, help="held-out prompt choice (the speed bench uses 0)")
    parser.add_argument("--target-weights", choices=TARGET_WEIGHTS, default="fp16")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        recipes = [parse_overrides(EaglePretrainRecipe, text.split(), "benchmarks/head_tau.py") for text in args.recipe or [""]]
    except ConfigError as error:
        parser.error(str(error))
    if len({recipe.hidden_layers for recipe in recipes}) > 1:
        parser.error("every --recipe must fuse the same hidden_layers (one target records them)")

    world = get_world(args.world)
    tokenizer, model = world.tokenizer(), world.target()
    target = Target(model, recipes[0].hidden_layers)
    heads = [pretrained_eagle(world, target, tokenizer, recipe) for recipe in recipes]
    apply_target_weights(model, args.target_weights)  # the heads then draft on its kernel too
    stream = make_traffic(world.dataset("heldout"), "mixed", args.num_prompts, seed=args.seed)
    prompts = [torch.tensor(tokenizer(r.prompt)["input_ids"]) for r in stream.requests]

    results = []
    for index, (text, head) in enumerate(zip(args.recipe or ["(defaults)"], heads)):
        for k in args.k:
            decoder = SpeculativeDecoder(target, head, DecodeConfig(k=k), [tokenizer.eos_token_id])
            row = {"recipe": text, **head_tau(decoder, prompts, k, args.max_new_tokens, f"head {index}, k={k}")}
            results.append(row)
            by_position = " ".join(f"{rate:.2f}" for rate in row["kept_by_position"])
            print(f"{text} | k={k} | tau {row['tau']:.3f} | kept by position {by_position}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"world": args.world, "num_prompts": args.num_prompts,
                                         "max_new_tokens": args.max_new_tokens, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
