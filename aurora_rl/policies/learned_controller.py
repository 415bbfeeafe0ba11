"""The learned draft-length controller: a tiny MLP policy trained with PPO on
``aurora_rl/DraftLength-v0`` and run on the decode path in plain numpy.

Training (``aurora_rl/envs/ppo_controller.py``) uses stable-baselines3; what it exports is
only the actor's weights, so deciding costs two small matmuls per draft position and
nothing from SB3 (or gymnasium) is imported while decoding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from aurora_rl.core.control import FEATURES, StepFeatures

POLICY_FILE, MANIFEST_FILE = "policy.safetensors", "controller.json"
KIND = "draft_length_mlp"
VERIFY, CONTINUE = 0, 1  # DraftLength-v0's actions


class TinyPolicy:
    """``features -> argmax(logits)`` through tanh layers.

    Args:
        layers: ``[(W (out, in), b (out,)), ...]`` float32; the last layer gives 2 logits
            (verify now, continue).
        max_draft: the most proposals per step it was trained with (positions are
            normalised by it).
        meta: provenance (env, world, cost model, training steps, measured goodput).
    """

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], max_draft: int, meta: dict | None = None) -> None:
        if not layers or layers[0][0].shape[1] != len(FEATURES) or layers[-1][0].shape[0] != 2:
            raise ValueError(
                f"a draft-length policy maps {len(FEATURES)} features to 2 logits; got layers "
                f"{[w.shape for w, _ in layers]}"
            )
        self.layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in layers]
        self.max_draft = max_draft
        self.meta = meta or {}

    def logits(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, np.float32)
        for i, (w, b) in enumerate(self.layers):
            x = w @ x + b
            if i < len(self.layers) - 1:
                x = np.tanh(x)
        return x

    def act(self, features: np.ndarray) -> int:
        """The greedy action: ``VERIFY`` (0) or ``CONTINUE`` (1)."""
        logits = self.logits(features)
        return CONTINUE if logits[CONTINUE] > logits[VERIFY] else VERIFY

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i, (w, b) in enumerate(self.layers):
            tensors[f"layer{i}.weight"], tensors[f"layer{i}.bias"] = w, b
        save_file(tensors, str(directory / POLICY_FILE))
        manifest = {"kind": KIND, "features": list(FEATURES), "max_draft": self.max_draft,
                    "activation": "tanh", "num_layers": len(self.layers), "meta": self.meta}
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "TinyPolicy":
        directory = Path(directory)
        if not (directory / MANIFEST_FILE).is_file():
            raise FileNotFoundError(
                f"{directory} holds no draft-length policy ({MANIFEST_FILE} missing): train one with "
                "aurora_rl.envs.ppo_controller.train_policy or leave decode.controller_policy null"
            )
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        if manifest.get("kind") != KIND:
            raise ValueError(f"{directory} holds a {manifest.get('kind')!r}, not a {KIND!r} policy")
        if manifest["features"] != list(FEATURES):
            raise ValueError(
                f"{directory} was trained on features {manifest['features']}, but this version computes "
                f"{list(FEATURES)}: retrain it on DraftLength-v0"
            )
        tensors = load_file(str(directory / POLICY_FILE))
        layers = [(tensors[f"layer{i}.weight"], tensors[f"layer{i}.bias"]) for i in range(manifest["num_layers"])]
        return cls(layers, manifest["max_draft"], manifest.get("meta", {}))


class LearnedSession:
    def __init__(self, controller: "LearnedController") -> None:
        self.controller = controller
        self.features = StepFeatures(controller.policy.max_draft, controller.max_positions)
        self.skipped = 0

    def budget(self, limit: int, context_len: int) -> int:
        self.features.begin_step(context_len)
        if self.controller.policy.act(self.features.vector()) == CONTINUE:
            self.skipped = 0
            return min(limit, self.controller.policy.max_draft)
        self.skipped += 1
        if self.skipped >= self.controller.probe_every:
            # The policy judges the draft by this request's acceptance, which stops moving
            # while it skips: a one-token probe now and then lets an improving draft back in.
            self.skipped = 0
            return min(limit, 1)
        return 0

    def stop(self, position: int, raw_logits: torch.Tensor | None, token: int) -> bool:
        self.features.proposed(raw_logits, token)
        return self.controller.policy.act(self.features.vector()) == VERIFY

    def observe(self, num_proposed: int, num_accepted: int) -> None:
        self.features.observe(num_proposed, num_accepted)


class LearnedController:
    """Runs a :class:`TinyPolicy` at every draft position (and once before drafting, where
    "verify now" means a plain target step).

    Args:
        policy: the exported policy.
        max_positions: the target's context size (the ``context`` feature's scale).
        probe_every: after this many skipped steps in a row, draft one token anyway.
    """

    name = "learned"

    def __init__(self, policy: TinyPolicy, max_positions: int, probe_every: int = 8) -> None:
        if probe_every < 1:
            raise ValueError(f"probe_every must be >= 1, got {probe_every}")
        self.policy, self.max_positions, self.probe_every = policy, max_positions, probe_every

    def start(self) -> LearnedSession:
        return LearnedSession(self)
