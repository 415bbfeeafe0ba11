"""python -m aurora_rl.train [--config FILE.yaml] [key=value ...]

Serves one traffic stream with several draft "arms" side by side and compares them:
target_only (no draft: the speed reference), static (pretrained, never updated), offline
(pretrained + finetuned on offline traces), online_scratch and online_pretrained (a learner
trains a copy of the draft from the trace stream and publishes new versions that decoding
picks up between steps); the training-free baselines suffix and prompt_lookup; and hybrids
(static+suffix, online_*+suffix) choosing per step between the suffix proposal and the
learned draft's.

With no arguments: the default miniature world, an `ordered` stream with domain shifts,
the default arms (all but prompt_lookup, static+suffix, online_scratch+suffix). Writes runs/<name>/: config.yaml, summary.json, accepted_length.png and
TensorBoard events (tensorboard --logdir runs/<name>/tensorboard).
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm import tqdm

from aurora_rl.core.generate import SpeculativeDecoder
from aurora_rl.core.target import Target, load_model_and_tokenizer
from aurora_rl.plots import plot_accepted_length
from aurora_rl.serving.learner import Learner
from aurora_rl.serving.publish import LivePolicy
from aurora_rl.train.arms import Setting, arm_controller, initial_drafter
from aurora_rl.train.config import ARMS, DEFAULT_ARMS, ConfigError, describe, load_config, to_yaml
from aurora_rl.train.report import ArmRecorder
from aurora_rl.world import get_world
from aurora_rl.world.traffic import TrafficStream, load_prompts, make_traffic


def run_arm(s: Setting, arm: str, stream: TrafficStream, run_dir: Path, accelerator: Accelerator) -> dict:
    """Serve ``stream`` with one arm's draft; learn online if the arm does."""
    cfg = s.cfg
    mode, _ = ARMS[arm]
    began = time.perf_counter()
    live = LivePolicy(initial_drafter(s, arm)) if mode != "none" else None
    controller = arm_controller(s, live.current) if live else None
    setup_seconds = time.perf_counter() - began
    buffer = cfg.learner.make_buffer() if mode == "online" else None
    learner = Learner(live, buffer, cfg.algo, cfg.learner, s.pad_id, cfg.seed, accelerator) if mode == "online" else None
    explore = cfg.algo.explore_temperature if learner and learner.needs_exploration else None
    decoder = SpeculativeDecoder(s.target, live, cfg.decode.to_decode_config(explore, controller), s.eos)
    version = (lambda: live.version) if live else (lambda: 0)
    recorder = ArmRecorder(run_dir, arm, stream.phases, cfg.decode.k)
    clock = {"steps": 0, "learner_seconds": 0.0}

    def on_trace(trace):
        recorder.step(trace)
        if learner is None:
            return
        clock["steps"] += 1
        learner.observe(trace)
        if cfg.learner.mode == "sync" and clock["steps"] % cfg.learner.train_every == 0:
            t0 = time.perf_counter()
            first = learner.updates
            recorder.learner(learner.train_round(), first)
            clock["learner_seconds"] += time.perf_counter() - t0

    if learner and cfg.learner.mode == "async":
        learner.start()
    bar = tqdm(stream.requests, desc=arm, disable=not cfg.progress, unit="req")
    for request in bar:
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + request.index)
        ids = s.tokenizer(request.prompt)["input_ids"]
        learner_before = clock["learner_seconds"]
        gen = decoder.generate(ids, cfg.traffic.max_new_tokens, generator, request.request_id, request.domain,
                               keep_traces=False, on_trace=on_trace)
        # In sync mode the learner ran inside this decode; time it as if on its own device.
        decode_seconds = gen.seconds - (clock["learner_seconds"] - learner_before)
        recorder.request(request, gen, decode_seconds, version(), buffer.stats() if buffer else None)
        bar.set_postfix(tau=f"{gen.accepted_length:.2f}", version=version(), refresh=False)
    if learner and cfg.learner.mode == "async":
        learner.stop()
        recorder.learner(list(learner.metrics), 0)

    extra = {
        "mode": mode,
        "setup_seconds": setup_seconds,
        "versions_published": learner.published if learner else 0,
        "final_version": version(),
        "updates": learner.updates if learner else 0,
        "rejected_updates": learner.rejected_updates if learner else 0,
        "gate_rejections": learner.gate_rejections if learner else 0,
        "rollbacks": live.rollbacks if live else 0,
        "learner_seconds": clock["learner_seconds"],
        "learner_state": learner.state if learner else "none",
        "learner_error": learner.error if learner else None,
        "suffix_share": getattr(live.current, "suffix_share", None) if live else None,
    }
    result = recorder.summary(extra)
    hparams = {"arm": arm, "algo": cfg.algo.name, "k": cfg.decode.k, "schedule": cfg.traffic.schedule,
               "drafter": cfg.drafter.kind, "seed": cfg.seed, "publish_every": cfg.learner.publish_every}
    recorder.close(hparams, result)
    return result


def print_table(results: dict[str, dict]) -> None:
    first = next(iter(results.values()))
    labels = [p["label"] for p in first["phases"]]
    reference = results.get("target_only", {}).get("tokens_per_s")
    header = (f"{'arm':18s} {'tau':>6s} " + " ".join(f"{label[:9]:>9s}" for label in labels)
              + f" {'tok/s':>7s} {'vs target':>9s} {'versions':>8s}")
    print("\n" + header + "\n" + "-" * len(header))
    for arm, r in results.items():
        phases = " ".join(f"{p['accepted_length']:9.2f}" for p in r["phases"])
        speedup = f"{r['tokens_per_s'] / reference:8.2f}x" if reference else f"{'-':>9s}"
        print(f"{arm:18s} {r['accepted_length']:6.2f} {phases} {r['tokens_per_s']:7.1f} {speedup} {r['versions_published']:8d}")
    print("tau = accepted length: tokens emitted per target verify step (accepted drafts + 1); "
          "vs target = tokens/s relative to target_only")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(__doc__ + "\nConfiguration keys (key (default): help):\n" + "\n".join(describe()))
        return 0
    try:
        cfg = load_config(argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # Seeding: one block; every later random draw derives from cfg.seed.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    arms_tag = "+".join(cfg.arms) if list(cfg.arms) != list(DEFAULT_ARMS) else "all-arms"
    run_name = cfg.run_name or f"{arms_tag}-{cfg.traffic.schedule}-{cfg.algo.name}-seed{cfg.seed}"
    run_dir = Path(cfg.output_dir) / run_name
    suffix = 1
    while run_dir.exists() and any(run_dir.iterdir()):  # never mix with, or overwrite, an earlier run
        suffix += 1
        run_dir = Path(cfg.output_dir) / f"{run_name}-{suffix}"
    run_name = run_dir.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))

    world = get_world(cfg.world.name, cache_dir=cfg.world.cache_dir, progress=cfg.progress, precision=cfg.world.precision)
    hidden_layers = tuple(cfg.drafter.eagle_layers) if cfg.drafter.kind == "eagle" else ()
    if cfg.world.target:
        model, tokenizer = load_model_and_tokenizer(cfg.world.target)
    else:
        tokenizer, model = world.tokenizer(), world.target()
    target = Target(model, hidden_layers)
    prompts = load_prompts(cfg.traffic.source if cfg.traffic.source else world, split="heldout")
    stream = make_traffic(prompts, cfg.traffic.schedule, cfg.traffic.num_requests, seed=cfg.seed,
                          domains=cfg.traffic.domains, num_phases=cfg.traffic.num_phases)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    setting = Setting(cfg, world, target, tokenizer)

    results = {}
    for arm in cfg.arms:
        results[arm] = run_arm(setting, arm, stream, run_dir, accelerator)

    summary = {
        "run": run_name,
        "world": world.name,
        "target": cfg.world.target or str(world.path),
        "schedule": cfg.traffic.schedule,
        "phases": [asdict(p) for p in stream.phases],
        "arms": results,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_accepted_length({arm: r["per_request_accepted_length"] for arm, r in results.items()},
                         summary["phases"], run_dir / "accepted_length.png",
                         title=f"{run_name} ({world.name} world)")
    print_table(results)
    print(f"\nwrote {run_dir}/summary.json, accepted_length.png, tensorboard/ (tensorboard --logdir {run_dir}/tensorboard)")
    crashed = [arm for arm, r in results.items() if r["learner_state"] == "crashed"]
    if crashed:
        print(f"warning: the learner crashed in {crashed}; see learner_error in summary.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
