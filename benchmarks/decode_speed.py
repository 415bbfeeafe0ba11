"""Decode speed at batch size 1: target-only vs our speculative decoding vs HF assisted
generation and prompt lookup, on the same target/draft pair and prompts, side by side in one run.

    python benchmarks/decode_speed.py                      # default world, pretrained drafter
    python benchmarks/decode_speed.py --world tiny --num-prompts 10
    python benchmarks/decode_speed.py --world smollm2      # a real LLM (docs/real_model.md)

On the ``smollm2`` world the small LM is a self-draft (the target's first
``--self-draft-layers`` layers, the assistant HF assisted generation gets too) and our loop
also runs the EAGLE-3-style head (reduced draft vocabulary, fused low/mid/high features),
pretrained offline on the world's training prompts (cached; ``--eagle-pretrain key=value``
overrides its ``EaglePretrainRecipe``) or loaded from ``--eagle``: at
fixed k, under the ``goodput`` controller, and in the hybrid with suffix decoding. Suffix
decoding (training-free; its global trie learns from the outputs it served) runs on every world.

Every method decodes every prompt (methods interleaved per prompt so machine noise hits
all alike), greedily, and all outputs are checked to be identical (lossless). Printed per
method: tokens/s, speedup over our target-only loop, tau (tokens per target forward),
and for speculative methods the analytic ceiling tau / (1 + k c), where c is the measured
cost of one draft forward relative to one target forward.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from aurora_rl.core.cost_profile import cached_cost_model
from aurora_rl.core.fp16_weights import TARGET_WEIGHTS, apply_target_weights
from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.spec import DecodeConfig
from aurora_rl.algos.eagle_pretrain import EaglePretrainRecipe, pretrained_eagle
from aurora_rl.core.target import RollbackCache, Target, run_cached
from aurora_rl.policies.eagle import EagleDrafter
from aurora_rl.policies.eagle_layer import EagleConfig
from aurora_rl.policies.hybrid import HybridDrafter
from aurora_rl.policies.suffix import SuffixConfig, SuffixDrafter
from aurora_rl.policies.controller_factory import build_controller
from aurora_rl.policies.pretrained import DrafterRecipe, pretrained_drafter
from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.settings import ConfigError, parse_overrides
from aurora_rl.world import get_world
from aurora_rl.world.recipe import ChatWorldRecipe
from aurora_rl.world.traffic import make_traffic


@dataclass
class Tally:
    seconds: float = 0.0
    tokens: int = 0
    target_forwards: int = 0  # forwards that emitted tokens (a separate prefill excluded)
    outputs: list[list[int]] = field(default_factory=list)


def forward_ms(model, context: int, repeats: int = 50) -> float:
    """Milliseconds of one cached single-token forward at ``context`` tokens."""
    cache = RollbackCache(model)
    run_cached(model, cache, torch.arange(context) % 100 + 3)
    for _ in range(5):
        run_cached(model, cache, [5])
        cache.rollback(context)
    began = time.perf_counter()
    for _ in range(repeats):
        run_cached(model, cache, [5])
        cache.rollback(context)
    return (time.perf_counter() - began) / repeats * 1e3


class ForwardCounter:
    """Counts forward calls of a model (HF generate hides its loop)."""

    def __init__(self, model) -> None:
        self.calls = 0
        model.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def hf_assisted(target_model, draft_model, ids, max_new_tokens, eos, pad, k: int | None):
    config = draft_model.generation_config
    if k is None:  # transformers' own defaults: up to 20 tokens, self-tuning confidence stop (from 0.4)
        config.num_assistant_tokens, config.num_assistant_tokens_schedule = 20, "constant"
        config.assistant_confidence_threshold = 0.4
    else:  # exactly k proposals per step, like ours
        config.num_assistant_tokens, config.num_assistant_tokens_schedule = k, "constant"
        config.assistant_confidence_threshold = 0.0
    out = target_model.generate(
        ids[None], assistant_model=draft_model, do_sample=False, max_new_tokens=max_new_tokens,
        eos_token_id=eos, pad_token_id=pad,
    )
    return out[0, len(ids):].tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="default")
    parser.add_argument("--drafter", default=None, help="a saved drafter directory (default: pretrained on the world)")
    parser.add_argument("--self-draft-layers", type=int, default=4, help="chat worlds: layers of the self-draft small LM")
    parser.add_argument("--eagle", default=None, help="chat worlds: a saved EAGLE-3-style head (default: pretrained, cached)")
    parser.add_argument("--eagle-pretrain", nargs="*", default=[], metavar="KEY=VALUE",
                        help="chat worlds: EaglePretrainRecipe overrides of the pretrained head, e.g. steps=1000 "
                             "num_prompts=400 (cached per recipe)")
    parser.add_argument("--lookup", type=int, default=10, help="HF prompt lookup: prompt_lookup_num_tokens")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--adaptive-k", type=int, default=8, help="lookahead of the adaptive rows")
    parser.add_argument("--confidence", type=float, default=0.5, help="our adaptive row: stop drafting below this draft probability")
    parser.add_argument("--num-prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--warmup", type=int, default=2, help="prompts every method decodes first, untimed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--target-weights", choices=TARGET_WEIGHTS, default="fp32",
                        help="fp16: the linear layers of the target and the drafters (small LM, EAGLE head) on fbgemm's fp16 kernel "
                             "(aurora_rl/core/fp16_weights.py); every method then decodes that model")
    args = parser.parse_args(argv)

    try:
        recipe = parse_overrides(EaglePretrainRecipe, args.eagle_pretrain, "benchmarks/decode_speed.py")
    except ConfigError as error:
        parser.error(str(error))
    world = get_world(args.world)
    tokenizer, target_model = world.tokenizer(), world.target()
    chat = isinstance(world.recipe, ChatWorldRecipe)
    if args.drafter:
        drafter = SmallLMDrafter.from_pretrained(args.drafter)
    elif chat:
        drafter = SmallLMDrafter.from_target_layers(target_model, args.self_draft_layers)
    else:
        drafter = pretrained_drafter(world, DrafterRecipe())
    target = Target(target_model)
    eagle = None
    if chat or args.eagle:
        layers = EagleConfig.load(args.eagle).hidden_layers if args.eagle else recipe.hidden_layers
        feature_target = Target(target_model, layers)
        if args.eagle:
            eagle = EagleDrafter.from_pretrained(args.eagle, feature_target)
        else:
            eagle = pretrained_eagle(world, feature_target, tokenizer, recipe)
    # After the drafters are built: the self-draft copies fp32 layers, the EAGLE head reads
    # the fp32 LM head rows; then target and small LM run on the chosen kernel, and the EAGLE
    # head drafts with a copy on the target's kernel (EagleDrafter.drafting_model).
    apply_target_weights(target_model, args.target_weights)
    apply_target_weights(drafter.model, args.target_weights)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    stream = make_traffic(world.dataset("heldout"), "mixed", args.num_prompts, seed=args.seed)
    prompts = [torch.tensor(tokenizer(r.prompt)["input_ids"]) for r in stream.requests]

    ours = SpeculativeDecoder(target, drafter, DecodeConfig(k=args.k), [eos])
    adaptive = SpeculativeDecoder(target, drafter, DecodeConfig(k=args.adaptive_k, draft_confidence=args.confidence), [eos])
    plain = SpeculativeDecoder(target, None, DecodeConfig(k=args.k), [eos])
    counter = ForwardCounter(target_model)

    def run_ours(decoder):
        def go(ids):
            gen = decoder.generate(ids, args.max_new_tokens, keep_traces=False)
            return gen.tokens.tolist(), gen.num_steps
        return go

    def run_hf(k):
        def go(ids):
            before = counter.calls
            tokens = hf_assisted(target_model, drafter.model, ids, args.max_new_tokens, eos, pad, k)
            # HF runs the prefill inside its first verify pass: every forward is a step.
            return tokens, counter.calls - before
        return go

    def run_hf_lookup(ids):
        before = counter.calls
        out = target_model.generate(ids[None], do_sample=False, max_new_tokens=args.max_new_tokens, eos_token_id=eos,
                                    pad_token_id=pad, prompt_lookup_num_tokens=args.lookup)
        return out[0, len(ids):].tolist(), counter.calls - before

    def run_hf_plain(ids):
        before = counter.calls
        out = target_model.generate(ids[None], do_sample=False, max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=pad)
        return out[0, len(ids):].tolist(), counter.calls - before  # prefill emits the first token

    methods = {
        "target only (ours)": run_ours(plain),
        "target only (HF generate)": run_hf_plain,
        f"speculative k={args.k} (ours)": run_ours(ours),
        f"HF assisted, k={args.k} constant": run_hf(args.k),
        f"speculative k<={args.adaptive_k}, conf {args.confidence} (ours)": run_ours(adaptive),
        "HF assisted, its defaults": run_hf(None),
        f"HF prompt lookup, {args.lookup} tokens": run_hf_lookup,
    }
    # Training-free and online-adaptive: the suffix drafter's global trie learns from the
    # outputs it served (warm-up included), its per-request trie from the prompt and output.
    vocab = target.vocab_size
    suffix = SuffixDrafter(vocab, SuffixConfig())
    methods[f"suffix decoding, k<={args.adaptive_k} (ours)"] = run_ours(
        SpeculativeDecoder(target, suffix, DecodeConfig(k=args.adaptive_k), [eos]))
    if eagle is not None:
        eagle_decoder = SpeculativeDecoder(feature_target, eagle, DecodeConfig(k=args.k), [eos])
        methods[f"EAGLE-3 head, k {args.k} (ours)"] = run_ours(eagle_decoder)
        # The goodput controller picks k per step from measured acceptance and the wall clock
        # (a fresh controller per decoder: its statistics are the decoder's own).
        cost = cached_cost_model(feature_target, eagle, args.adaptive_k)
        goodput = lambda: build_controller("goodput", args.adaptive_k, cost)  # noqa: E731
        methods[f"EAGLE-3 head, goodput k<={args.adaptive_k} (ours)"] = run_ours(
            SpeculativeDecoder(feature_target, eagle, DecodeConfig(k=args.adaptive_k, controller=goodput()), [eos]))
        hybrid = HybridDrafter(eagle, SuffixDrafter(vocab, SuffixConfig()))
        methods[f"hybrid suffix + EAGLE-3, goodput k<={args.adaptive_k} (ours)"] = run_ours(
            SpeculativeDecoder(feature_target, hybrid, DecodeConfig(k=args.adaptive_k, controller=goodput()), [eos]))
    tallies = {name: Tally() for name in methods}
    with torch.inference_mode():
        for ids in prompts[: args.warmup]:
            for go in methods.values():
                go(ids)
        for i, ids in enumerate(tqdm(prompts, desc="prompts")):
            names = list(methods)
            names = names[i % len(names):] + names[: i % len(names)]
            for name in names:
                began = time.perf_counter()
                tokens, forwards = methods[name](ids)
                tally = tallies[name]
                tally.seconds += time.perf_counter() - began
                tally.tokens += len(tokens)
                tally.target_forwards += forwards
                tally.outputs.append(tokens)
        context = int(sum(len(p) for p in prompts) / len(prompts)) + args.max_new_tokens // 2
        cost_ratio = forward_ms(drafter.model, context) / forward_ms(target_model, context)

    reference = tallies["target only (ours)"]
    lossless = {name: t.outputs == reference.outputs for name, t in tallies.items()}
    base_tps = reference.tokens / reference.seconds
    rows = []
    for name, t in tallies.items():
        tps = t.tokens / t.seconds
        tau = t.tokens / max(t.target_forwards, 1)
        speculative = "target only" not in name
        k = args.k if f"k={args.k}" in name else None  # the ceiling assumes exactly k drafts per step
        ceiling = tau / (1 + k * cost_ratio) if speculative and k else None
        rows.append({
            "method": name, "tokens_per_s": tps, "speedup": tps / base_tps, "tau": tau,
            "ceiling": ceiling, "speedup_over_ceiling": (tps / base_tps) / ceiling if ceiling else None,
            "identical_to_target": lossless[name],
        })

    print(f"\nworld={world.name} k={args.k} prompts={len(prompts)} max_new_tokens={args.max_new_tokens} "
          f"threads={torch.get_num_threads()}  cost ratio c = draft/target forward = {cost_ratio:.3f}")
    print(f"{'method':34s} {'tok/s':>8s} {'speedup':>8s} {'tau':>6s} {'ceiling':>8s} {'of ceil':>8s} lossless")
    for r in rows:
        ceiling = f"{r['ceiling']:.2f}x" if r["ceiling"] else "-"
        of = f"{r['speedup_over_ceiling']:.0%}" if r["speedup_over_ceiling"] else "-"
        print(f"{r['method']:34s} {r['tokens_per_s']:8.1f} {r['speedup']:7.2f}x {r['tau']:6.2f} {ceiling:>8s} {of:>8s} {r['identical_to_target']}")
    samples = [{"domain": r.domain, "prompt": r.prompt, "output": tokenizer.decode(out)}
               for r, out in zip(stream.requests[:3], reference.outputs[:3])]
    print(f"\nfirst greedy output ({samples[0]['domain']}): {samples[0]['output']!r}")
    if args.json:
        report = {"args": vars(args) | {"json": str(args.json)}, "cost_ratio": cost_ratio, "rows": rows, "samples": samples}
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if all(lossless.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
