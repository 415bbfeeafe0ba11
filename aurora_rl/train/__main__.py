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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from aurora_rl.plots import plot_accepted_length
from aurora_rl.train.arms import build_setting
from aurora_rl.settings import config_from_cli
from aurora_rl.train.config import DEFAULT_ARMS, describe, load_config, to_yaml
from aurora_rl.train.loop import run_arm
from aurora_rl.world.traffic import load_prompts, make_traffic


def print_table(results: dict[str, dict]) -> None:
    first = next(iter(results.values()))
    labels = [p["label"] for p in first["phases"]]
    reference = results.get("target_only", {}).get("tokens_per_s")
    header = (f"{'arm':18s} {'tau':>6s} " + " ".join(f"{label[:9]:>9s}" for label in labels)
              + f" {'mean k':>6s} {'tok/s':>7s} {'vs target':>9s} {'versions':>8s}")
    print("\n" + header + "\n" + "-" * len(header))
    for arm, r in results.items():
        phases = " ".join(f"{p['accepted_length']:9.2f}" for p in r["phases"])
        speedup = f"{r['tokens_per_s'] / reference:8.2f}x" if reference else f"{'-':>9s}"
        print(f"{arm:18s} {r['accepted_length']:6.2f} {phases} {r['mean_k']:6.2f} {r['tokens_per_s']:7.1f} {speedup} "
              f"{r['versions_published']:8d}")
    print("tau = accepted length: tokens emitted per target verify step (accepted drafts + 1); mean k = proposals "
          "per verify step; vs target = tokens/s relative to target_only")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = config_from_cli(argv, __doc__, describe, load_config)
    if isinstance(cfg, int):  # --help, or a bad configuration (already said)
        return cfg

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

    setting = build_setting(cfg)
    world = setting.world
    prompts = load_prompts(cfg.traffic.source if cfg.traffic.source else world, split="heldout")
    stream = make_traffic(prompts, cfg.traffic.schedule, cfg.traffic.num_requests, seed=cfg.seed,
                          domains=cfg.traffic.domains, num_phases=cfg.traffic.num_phases)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())

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
