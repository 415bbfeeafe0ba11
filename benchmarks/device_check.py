"""Lossless and speed on an accelerator: the check to run when a GPU machine is lent.

    python benchmarks/device_check.py --device cuda            # on the lent machine
    python benchmarks/device_check.py --device cpu --world tiny  # the same check here

On ``--device`` it loads the world's target and its pretrained small-LM drafter, then for
each held-out prompt decodes greedily with (a) ``model.generate(do_sample=False)``, (b) the
engine without a draft and (c) the engine with the draft, checks that (b) and (c) equal (a)
token for token, and prints tokens/s of (b) and (c) side by side (same prompts, interleaved).
Exit status 1 if any output differs. ``benchmarks/device_checks.sh`` runs it with the
decode benchmark; DEVELOPERS.md says what to carry (the lent machine reaches no registry).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.policies.pretrained import DrafterRecipe, pretrained_drafter
from aurora_rl.runtime.config import EngineSection
from aurora_rl.runtime.engine import Engine, GenerationRequest
from aurora_rl.world import get_world
from aurora_rl.world.traffic import make_traffic


def engine_tokens(engine: Engine, prompt: tuple[int, ...], max_new_tokens: int) -> list[int]:
    outputs = []
    engine.submit(GenerationRequest("check", prompt, max_new_tokens), outputs.append)
    while engine.busy:
        engine.step()
    if outputs[-1].error:
        raise RuntimeError(outputs[-1].error)
    return [token for output in outputs for token in output.token_ids]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--world", default="default")
    parser.add_argument("--num-prompts", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    world = get_world(args.world)
    tokenizer = world.tokenizer()
    model = world.target().to(args.device).eval()
    drafter = pretrained_drafter(world, DrafterRecipe())
    drafter.model.to(args.device)
    target = Target(model)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    decode = DecodeConfig(k=args.k)
    plain = Engine(target, None, decode, eos, EngineSection(max_active=1))
    speculative = Engine(target, drafter, decode, eos, EngineSection(max_active=1))
    prompts = [r.prompt for r in make_traffic(world.dataset("heldout"), "mixed", args.num_prompts, seed=0).requests]

    seconds, tokens, mismatches = {"target_only": 0.0, "speculative": 0.0}, {"target_only": 0, "speculative": 0}, 0
    for text in prompts:
        ids = tuple(tokenizer(text)["input_ids"])
        with torch.inference_mode():
            reference = model.generate(torch.tensor([ids], device=args.device), max_new_tokens=args.max_new_tokens,
                                       do_sample=False, eos_token_id=eos or None,
                                       pad_token_id=tokenizer.pad_token_id or 0)[0, len(ids):].tolist()
        if eos and eos[0] in reference:
            reference = reference[: reference.index(eos[0]) + 1]
        for name, engine in (("target_only", plain), ("speculative", speculative)):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            began = time.perf_counter()
            out = engine_tokens(engine, ids, args.max_new_tokens)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - began
            tokens[name] += len(out)
            if out != reference:
                mismatches += 1
                print(f"MISMATCH ({name}) on {text[:40]!r}: {out[:12]} vs generate {reference[:12]}", file=sys.stderr)

    rates = {name: tokens[name] / seconds[name] for name in seconds}
    result = {"device": args.device, "world": args.world, "prompts": len(prompts), "mismatches": mismatches,
              "tokens_per_s": rates, "speedup": rates["speculative"] / rates["target_only"]}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
