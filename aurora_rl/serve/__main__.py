"""python -m aurora_rl.serve [--config FILE.yaml] [key=value ...]

An OpenAI-compatible HTTP server doing speculative decoding with a draft that learns from
its own traffic: POST /v1/completions and /v1/chat/completions (streaming over SSE),
GET /v1/models, /health and /metrics (Prometheus). Every answer is the target's own output
(greedy: token for token; sampled: the target's distribution); a background learner trains
a copy of the draft on the verification traces, gates each candidate on held-out traces,
and publishes versions that decoding picks up between two steps.

With no arguments: the default miniature world, its pretrained draft, learning on,
http://127.0.0.1:8000/v1. Ctrl-C (SIGINT/SIGTERM) stops accepting, lets in-flight requests
finish for server.drain_seconds, stops the learner and saves its state to snapshots.directory.

Follow mode (learn=false snapshots.follow=DIR): learn nothing here, and serve the versions
another server's learner writes to DIR (a shared filesystem), each hot-swapped in as it
appears; the configured draft serves (as v-1) only until DIR holds one.

    python -m aurora_rl.serve world.name=tiny draft=scratch server.port=8001
    python -m aurora_rl.serve world.name=tiny drafter.kind=suffix learn=false   # training-free baseline
    python -m aurora_rl.serve world.name=tiny with_suffix=true                  # hybrid: suffix + learning draft
    curl http://127.0.0.1:8001/v1/completions -H 'Content-Type: application/json' \\
         -d '{"model": "aurora-tiny", "prompt": "def add(a, b):", "max_tokens": 32, "temperature": 0}'
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from aurora_rl.algos.eagle_pretrain import eagle_pretrainer
from aurora_rl.envs.controller_setup import configured_controller
from aurora_rl.policies import factory
from aurora_rl.serve.config import describe, load_config, to_yaml
from aurora_rl.settings import config_from_cli
from aurora_rl.runtime import http
from aurora_rl.runtime.config import TrafficSection
from aurora_rl.runtime.server import build_server

API_KEY_ENV = "AURORA_RL_API_KEY"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = config_from_cli(argv, __doc__, describe, load_config)
    if isinstance(cfg, int):  # --help, or a bad configuration (already said)
        return cfg
    logging.basicConfig(level=cfg.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # Seeding: one block; the draft's init, the learner and unseeded requests derive from cfg.seed.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)

    # Target, tokenizer and the draft it starts with.
    world, target, tokenizer = cfg.world.load(cfg.drafter.hidden_layers, cfg.progress)
    pretrain_eagle = eagle_pretrainer(cfg.drafter, world, target, tokenizer, cfg.seed, cfg.world.cache_dir, cfg.progress)

    def static_draft():
        return factory.pretrained(cfg.drafter, target, world, seed=cfg.seed, pretrain_eagle=pretrain_eagle, cache_dir=cfg.world.cache_dir,
                                  precision=cfg.world.precision, progress=cfg.progress)  # fmt: skip

    drafter = factory.build_drafter(cfg.drafter, target, world, start=cfg.draft, hybrid=cfg.with_suffix, seed=cfg.seed,
                                    pretrained=static_draft, tokenizer=tokenizer)  # fmt: skip
    controller, _ = configured_controller(cfg.decode, cfg.drafter, target, drafter, static_draft, world=world,
                                          tokenizer=tokenizer, max_new_tokens=TrafficSection().max_new_tokens,
                                          cache_dir=cfg.world.cache_dir, seed=cfg.seed, progress=cfg.progress)  # fmt: skip

    # The server: engine + learner + metrics + HTTP app, wired in one place.
    model_name = cfg.server.model_name or cfg.world.target or f"aurora-{world.name}"
    api_key = cfg.server.api_key or os.environ.get(API_KEY_ENV) or None
    server = build_server(
        target, tokenizer, drafter,
        decode=cfg.decode.to_decode_config(controller=controller), model_name=model_name,
        server=replace(cfg.server, api_key=api_key), engine=cfg.engine,
        learner=cfg.learner if cfg.learn else None, algo=cfg.algo, snapshots=cfg.snapshots, seed=cfg.seed,
    )  # fmt: skip
    if server.snapshots is not None:
        (server.snapshots.directory / "serve_config.yaml").write_text(to_yaml(cfg))
    if server.resumed is not None:
        print(f"snapshots {server.snapshots.directory}: {server.resumed}", flush=True)
    if server.follower is not None:
        learning = f"following {server.follower.directory}"
    else:
        learning = f"learning with {cfg.algo.name}" if cfg.learn else "learning off"
    print(f"serving {model_name!r} (draft v{server.live.version}, {learning}, key {'required' if api_key else 'off'}) "
          f"on http://{cfg.server.host}:{cfg.server.port}/v1", flush=True)  # fmt: skip

    # Runs until SIGINT/SIGTERM; the app's lifespan drains the engine and stops the learner.
    # uvicorn re-raises the signal to the previous handler once it has shut down; a no-op
    # one lets main finish (summary, exit status 0) instead of dying on the re-raise.
    for handled in (signal.SIGINT, signal.SIGTERM):
        signal.signal(handled, lambda *_: None)
    http.run(server, cfg.server)

    learner = server.learning.learner if server.learning else None
    follower = server.follower
    print(f"stopped: draft v{server.live.version}, {server.live.swaps} swaps, {server.live.rollbacks} rollbacks"
          + (f", {learner.updates} updates ({learner.rejected_updates} rejected), learner {learner.state}" if learner else "")
          + (f", {follower.loaded} versions followed ({follower.failures} skipped)" if follower else ""))  # fmt: skip
    if learner is not None and learner.error:
        print(f"warning: the learner crashed (serving went on):\n{learner.error}", file=sys.stderr)
    if server.snapshots is not None:
        print(f"snapshots and learner state in {Path(server.snapshots.directory).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
