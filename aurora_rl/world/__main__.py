"""python -m aurora_rl.world build|info|sample [--world tiny|default] [--cache-dir DIR]

build   build the world (with a progress bar) unless a valid copy is cached
info    print where it is, its sizes, build time and per-domain held-out perplexity
sample  print greedy continuations of held-out prompts, a few per domain

`info` and `sample` build the world first when it is not cached yet.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from .evaluation import greedy_continuations, per_token_latency_ms
from .recipe import RECIPES
from .world import World, get_world


def _print_info(world: World, timing: bool) -> None:
    info = world.info
    recipe = info["recipe"]
    megabytes = sum(path.stat().st_size for path in world.path.rglob("*") if path.is_file()) / 2**20
    print(f"world        {world.name}")
    print(f"path         {world.path}")
    print(f"disk         {megabytes:.1f} MB")
    print(f"built in     {info['build_seconds']:.0f} s  ({', '.join(f'{k} {v:.0f} s' for k, v in info['stage_seconds'].items())})")
    cpu = info.get("cpu", {})
    print(f"precision    {world.precision} (CPU {cpu.get('capability', '?')}, native bf16: {cpu.get('native_bf16', '?')})")
    print("built with   " + ", ".join(f"{name} {version}" for name, version in info["versions"].items()))
    print(f"vocab        {info['vocab_size']} tokens (byte-level BPE)")
    for role in ("target", "drafter"):
        shape = recipe[role]
        print(
            f"{role:<12} {info[f'{role}_params'] / 1e6:.2f}M params: layers={shape['layers']}, d={shape['hidden']}, "
            f"heads={shape['heads']}, mlp={shape['intermediate']}" + ("" if role == "target" else " (config only, untrained)")
        )
    training = info["training"]
    print(
        f"training     {training['steps']:.0f} steps, {training['tokens'] / 1e6:.2f}M tokens seen "
        f"({info['train_tokens'] / 1e6:.2f}M in the corpus), {training['tokens_per_second']:.0f} tok/s, "
        f"loss {training['loss_first']:.2f} -> {training['loss_last']:.2f}"
    )
    print(f"{'domain':<8} {'train':>6} {'heldout':>8} {'prompt tok':>11} {'ref tok':>8} {'heldout ppl':>12}")
    for domain in world.domains:
        lengths = info["mean_tokens"][domain]
        print(
            f"{domain:<8} {info['samples']['train'][domain]:>6} {info['samples']['heldout'][domain]:>8} "
            f"{lengths['prompt']:>11.1f} {lengths['reference']:>8.1f} {info['heldout_perplexity'][domain]:>12.2f}"
        )
    if timing:
        target = world.target()
        drafter = type(target)(world.drafter_config()).eval()
        target_ms, drafter_ms = per_token_latency_ms(target), per_token_latency_ms(drafter)
        print(
            f"per token    target {target_ms:.2f} ms, drafter {drafter_ms:.2f} ms, ratio {drafter_ms / target_ms:.2f} "
            f"(batch 1, KV cache, fp32, {torch.get_num_threads()} threads)"
        )


def _print_samples(world: World, per_domain: int, max_new_tokens: int) -> None:
    tokenizer, target = world.tokenizer(), world.target()
    heldout = world.dataset("heldout")
    for domain in world.domains:
        prompts = [row["prompt"] for row in heldout if row["domain"] == domain][:per_domain]
        for number, (prompt, continuation) in enumerate(
            zip(prompts, greedy_continuations(target, tokenizer, prompts, max_new_tokens=max_new_tokens))
        ):
            print(f"=== {domain} #{number} ===")
            print(f"--- prompt ---\n{prompt}")
            print(f"--- greedy continuation ({max_new_tokens} new tokens at most) ---\n{continuation}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aurora_rl.world", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "info", "sample"))
    parser.add_argument("--world", default="default", choices=sorted(RECIPES), help="which registered world")
    parser.add_argument("--cache-dir", default=None, help="cache root (default: $AURORA_RL_CACHE or ~/.cache/aurora_rl)")
    parser.add_argument(
        "--precision", default=None, choices=("auto", "fp32", "bf16"),
        help="training precision (default: $AURORA_RL_PRECISION, else auto = bf16 only where native)",
    )
    parser.add_argument("--timing", action="store_true", help="info: also time one-token forwards of target and drafter")
    parser.add_argument("-n", "--per-domain", type=int, default=2, help="sample: prompts per domain")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="sample: continuation length cap")
    parser.add_argument("--json", action="store_true", help="info: print the manifest's info as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    world = get_world(args.world, cache_dir=args.cache_dir, progress=True, precision=args.precision)
    if args.command == "build":
        print(f"world {world.name!r} ready at {world.path} (built in {world.info['build_seconds']:.0f} s)")
    elif args.command == "info":
        if args.json:
            print(json.dumps(world.info, indent=2))
        else:
            _print_info(world, args.timing)
    else:
        _print_samples(world, args.per_domain, args.max_new_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
