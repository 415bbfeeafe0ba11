"""What a training-free proposal costs, next to a draft-model forward and a target forward.

    python benchmarks/model_free_cost.py --world tiny --requests 40

Decodes held-out requests (ordered traffic, greedy, k = 4) once per drafter and times, by
wrapping the session methods: the suffix drafter's ``propose`` (trie matching + path),
its ``commit`` (appending to the global and per-request tries) and ``start`` (building
the request's trie from the prompt); prompt lookup's; and the pretrained small-LM
drafter's ``propose`` (its autoregressive forwards), all per proposed token, with the
target's verify forward for scale. Writes ``benchmarks/results/model_free_cost_<world>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.policies.pretrained import DrafterRecipe, pretrained_drafter
from aurora_rl.policies.prompt_lookup import PromptLookupDrafter, PromptLookupSession
from aurora_rl.policies.small_lm import SmallLMSession
from aurora_rl.policies.suffix import SuffixDrafter, SuffixSession
from aurora_rl.world import get_world
from aurora_rl.world.traffic import load_prompts, make_traffic

SECONDS: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def timed(cls, name: str, label: str) -> None:
    original = getattr(cls, name)

    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        result = original(*args, **kwargs)
        SECONDS[label] += time.perf_counter() - began
        CALLS[label] += 1
        return result

    setattr(cls, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="tiny")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = get_world(args.world, progress=False)
    tokenizer, target = world.tokenizer(), Target(world.target())
    stream = make_traffic(load_prompts(world, split="heldout"), "ordered", args.requests, seed=0)
    prompts = [tokenizer(r.prompt)["input_ids"] for r in stream.requests]
    small_lm = pretrained_drafter(world, DrafterRecipe(domains=("code", "prose")), progress=False)
    for cls, label in [(SuffixSession, "suffix"), (PromptLookupSession, "prompt_lookup"), (SmallLMSession, "small_lm")]:
        timed(cls, "propose", f"{label}.propose")
        timed(cls, "commit", f"{label}.commit")
    timed(SuffixSession, "__init__", "suffix.start")
    timed(Target, "forward", "target.forward")

    results = {}
    for label, drafter in [("suffix", SuffixDrafter(target.vocab_size)), ("prompt_lookup", PromptLookupDrafter(target.vocab_size)),
                           ("small_lm", small_lm)]:  # fmt: skip
        SECONDS.clear(), CALLS.clear()
        decoder = SpeculativeDecoder(target, drafter, DecodeConfig(k=4), [tokenizer.eos_token_id])
        proposed = steps = emitted = 0
        for ids in prompts:
            gen = decoder.generate(ids, args.max_new_tokens)
            proposed += sum(t.num_proposed for t in gen.traces)
            steps += gen.num_steps
            emitted += len(gen.tokens)
        results[label] = {
            "steps": steps, "proposed_tokens": proposed, "accepted_length": emitted / steps,
            "propose_us_per_step": 1e6 * SECONDS[f"{label}.propose"] / max(CALLS[f"{label}.propose"], 1),
            "propose_us_per_proposed_token": 1e6 * SECONDS[f"{label}.propose"] / max(proposed, 1),
            "commit_us_per_step": 1e6 * SECONDS[f"{label}.commit"] / max(CALLS[f"{label}.commit"], 1),
            "start_us_per_request": 1e6 * SECONDS["suffix.start"] / len(prompts) if label == "suffix" else None,
            "target_forward_us": 1e6 * SECONDS["target.forward"] / max(CALLS["target.forward"], 1),
        }  # fmt: skip
        print(label, json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in results[label].items()}))
    out = Path(__file__).parent / "results" / f"model_free_cost_{args.world}.json"
    out.write_text(json.dumps({"world": args.world, "requests": args.requests, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
