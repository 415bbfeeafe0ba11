"""Draft-length controllers side by side: tokens/s per controller, measured in one run.

    python experiments/controller_study.py --world tiny
    python experiments/controller_study.py --world default --num-prompts 24
    python experiments/controller_study.py --config configs/smollm2.yaml --num-prompts 10 --max-new-tokens 48

One target, one draft (the world's small LM pretrained on all domains, or the static drafter
of ``--config``, e.g. SmolLM2's EAGLE-3 head), the same held-out
prompts; every controller decodes every prompt, controllers interleaved per prompt (so
machine noise hits all alike), greedily, after a warm-up. Every output is checked to be the
target-only output (lossless). The learned controller's policy is trained with PPO on
``DraftLength-v0`` for this world, draft and machine's cost model (cached). Writes
``experiments/results/controllers/<world>.{md,json,png}``: the table, and a plot of the
draft length each controller chose by position in the request and over the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from aurora_rl.core.cost_profile import cached_cost_model  # noqa: E402
from aurora_rl.core.generate import SpeculativeDecoder  # noqa: E402
from aurora_rl.core.spec import DecodeConfig  # noqa: E402
from aurora_rl.core.target import Target, eos_token_ids  # noqa: E402
from aurora_rl.policies.pretrained import DrafterRecipe, pretrained_drafter  # noqa: E402
from aurora_rl.envs.controller_setup import learned_policy  # noqa: E402
from aurora_rl.policies.controller_factory import CONTROLLERS, build_controller  # noqa: E402
from aurora_rl.train.arms import build_setting, pretrained  # noqa: E402
from aurora_rl.train.config import load_config  # noqa: E402
from aurora_rl.world import get_world, make_traffic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "controllers"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="tiny")
    parser.add_argument("--k", type=int, default=8, help="the most proposals per step (fixed k uses --fixed-k)")
    parser.add_argument("--fixed-k", type=int, default=4, help="the fixed-k row's lookahead (the train CLI's default)")
    parser.add_argument("--num-prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--config", type=Path, default=None,
                        help="a train config (e.g. configs/smollm2.yaml): its world, target weights and static "
                             "pretrained drafter (an EAGLE head there) instead of --world's small LM")
    parser.add_argument("--controllers", default=",".join(CONTROLLERS),
                        help=f"comma-separated, from {', '.join(CONTROLLERS)} (default: all)")
    args = parser.parse_args(argv)
    args.command = " ".join(["python experiments/controller_study.py", *(sys.argv[1:] if argv is None else argv)])
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = [name for name in args.controllers.split(",") if name]
    unknown = sorted(set(chosen) - set(CONTROLLERS))
    if unknown:
        parser.error(f"unknown controllers {unknown}: choose from {', '.join(CONTROLLERS)}")

    if args.config is not None:  # the config's world, target and static drafter, as the train CLI builds them
        setting = build_setting(load_config(["--config", str(args.config)]))
        world, tokenizer, target = setting.world, setting.tokenizer, setting.target
        drafter, drafter_key = pretrained(setting), {"config": args.config.read_text()}
    else:
        world = get_world(args.world)
        tokenizer, target = world.tokenizer(), Target(world.target())
        drafter, drafter_key = pretrained_drafter(world, DrafterRecipe()), dataclasses.asdict(DrafterRecipe())
    eos = eos_token_ids(tokenizer)
    cost = cached_cost_model(target, drafter, args.k)
    print(f"cost model: {cost.summary()}")
    policy = None
    if "learned" in chosen:
        policy = learned_policy(world, target, tokenizer, drafter, cost, args.k, args.max_new_tokens,
                                json.dumps({"study": "all-domains", **drafter_key}, default=str), seed=args.seed)
    stream = make_traffic(world.dataset("heldout"), "mixed", args.num_prompts + 2, seed=args.seed)
    prompts = [torch.tensor(tokenizer(r.prompt)["input_ids"]) for r in stream.requests]

    def decoder(name: str) -> SpeculativeDecoder:
        if name == "target_only":
            return SpeculativeDecoder(target, None, DecodeConfig(k=1), eos)
        if name == "fixed":
            return SpeculativeDecoder(target, drafter, DecodeConfig(k=args.fixed_k), eos)
        controller = build_controller(name, args.k, cost, None, policy, target.max_positions)
        return SpeculativeDecoder(target, drafter, DecodeConfig(k=args.k, controller=controller), eos)

    names = ["target_only", *chosen]
    decoders = {name: decoder(name) for name in names}
    seconds = dict.fromkeys(names, 0.0)
    tokens, steps = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    outputs: dict[str, list[list[int]]] = {name: [] for name in names}
    lengths: dict[str, list[tuple[int, int]]] = {name: [] for name in names}  # (position in request, k)
    with torch.inference_mode():
        for ids in prompts[:2]:  # warm-up (also gives the adaptive controllers their first outcomes)
            for d in decoders.values():
                d.generate(ids, args.max_new_tokens, keep_traces=False)
        for i, ids in enumerate(tqdm(prompts[2:], desc=f"prompts ({world.name})")):
            order = names[i % len(names):] + names[: i % len(names)]
            for name in order:
                began = time.perf_counter()
                gen = decoders[name].generate(ids, args.max_new_tokens)
                seconds[name] += time.perf_counter() - began
                tokens[name] += len(gen.tokens)
                steps[name] += gen.num_steps
                outputs[name].append(gen.tokens.tolist())
                position = 0
                for trace in gen.traces:
                    lengths[name].append((position, trace.num_proposed))
                    position += len(trace.emitted)

    base = tokens["target_only"] / seconds["target_only"]
    rows = []
    for name in names:
        ks = [k for _, k in lengths[name]]
        tps = tokens[name] / seconds[name]
        modelled = cost.goodput(tokens[name], ks) * cost.target(1)
        rows.append({"controller": name, "tokens_per_s": tps, "vs_target_only": tps / base,
                     "tau": tokens[name] / steps[name], "mean_k": float(np.mean(ks)),
                     "modelled_speedup": modelled, "lossless": outputs[name] == outputs["target_only"]})
    write(args, world.name, cost, rows, lengths)
    return 0 if all(r["lossless"] for r in rows) else 1


def write(args, world_name: str, cost, rows: list[dict], lengths: dict[str, list[tuple[int, int]]]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    header = "| controller | tokens/s | vs target-only | tau | mean k | modelled speedup | lossless |\n|---|---|---|---|---|---|---|"
    lines = [f"| {r['controller']} | {r['tokens_per_s']:.1f} | {r['vs_target_only']:.2f}x | {r['tau']:.2f} | "
             f"{r['mean_k']:.2f} | {r['modelled_speedup']:.2f}x | {r['lossless']} |" for r in rows]
    table = "\n".join([header, *lines])
    print(f"\nworld={world_name} prompts={args.num_prompts} max_new_tokens={args.max_new_tokens} k<={args.k} "
          f"(fixed: k={args.fixed_k}) threads={torch.get_num_threads()}\n{table}")
    (args.out / f"{world_name}.md").write_text(
        f"`{args.command}` ({args.num_prompts} prompts x "
        f"{args.max_new_tokens} tokens, greedy, batch 1, {torch.get_num_threads()} threads)\n\n"
        f"Cost model: {cost.summary()}\n\n{table}\n")
    (args.out / f"{world_name}.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                             "cost": json.loads(cost.to_json()), "rows": rows}, indent=2))
    fig, (by_position, over_time) = plt.subplots(1, 2, figsize=(12, 4))
    for name, pairs in lengths.items():
        if name == "target_only" or not pairs:
            continue
        positions = np.array([p for p, _ in pairs])
        ks = np.array([k for _, k in pairs], dtype=float)
        bins = np.arange(0, args.max_new_tokens + 8, 8)
        which = np.digitize(positions, bins) - 1
        means = [ks[which == b].mean() if (which == b).any() else np.nan for b in range(len(bins))]
        by_position.plot(bins + 4, means, marker="o", label=name)
        window = 50
        smooth = np.convolve(ks, np.ones(window) / window, mode="valid") if len(ks) > window else ks
        over_time.plot(smooth, label=name)
    by_position.set(xlabel="token position in the request", ylabel="mean draft length k", title="k by position")
    over_time.set(xlabel="verify step (all requests, in order)", ylabel="k (moving mean of 50 steps)", title="k over the run")
    by_position.legend(fontsize=8)
    fig.suptitle(f"draft length chosen per controller ({world_name} world)")
    fig.tight_layout()
    fig.savefig(args.out / f"{world_name}.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
