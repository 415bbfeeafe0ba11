"""Drafter checkpoints: a directory of safetensors weights + configs + a version manifest.

Layout (``save_pretrained``-style, loadable without this package's pickles)::

    policy.json        {"kind": "small_lm" | "eagle", "version": N, ...}
    config.json        the HF config of the drafter's network
    model.safetensors  the trainable weights

Loading is strict: a missing, unexpected or mis-shaped weight is an error naming it, never
a silently re-initialised layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model

POLICY_FILE = "policy.json"
WEIGHTS_FILE = "model.safetensors"


def write_manifest(directory: str | Path, kind: str, version: int, **extra) -> None:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    manifest = {"kind": kind, "version": int(version), **extra}
    (path / POLICY_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(directory: str | Path, kind: str | None = None) -> dict:
    """The manifest of a saved drafter; with ``kind``, refuse a drafter of another kind."""
    path = Path(directory) / POLICY_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {directory} is not a saved aurora_rl drafter "
            "(save one with policy.save_pretrained(directory))"
        )
    manifest = json.loads(path.read_text())
    if kind is not None and manifest["kind"] != kind:
        raise ValueError(f"{directory} holds a {manifest['kind']!r} drafter, not {kind!r}")
    return manifest


def save_weights(module: torch.nn.Module, directory: str | Path) -> None:
    # save_model handles tied (shared) tensors, which save_file refuses.
    save_model(module, str(Path(directory) / WEIGHTS_FILE))


def load_weights_strict(module: torch.nn.Module, directory: str | Path) -> None:
    """Load ``model.safetensors`` into ``module``; any name or shape mismatch is an error."""
    path = Path(directory) / WEIGHTS_FILE
    expected = module.state_dict()
    with safe_open(str(path), framework="pt") as handle:
        stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    for name, shape in stored.items():
        if name in expected and tuple(expected[name].shape) != shape:
            raise ValueError(
                f"weight {name!r} in {path} has shape {shape} but the drafter expects "
                f"{tuple(expected[name].shape)}: the checkpoint was saved from a different "
                "architecture (check config.json)"
            )
    unexpected = sorted(set(stored) - set(expected))
    if unexpected:
        raise ValueError(
            f"{path} holds weights the drafter does not have: {unexpected}; the checkpoint "
            "belongs to a different architecture"
        )
    missing, _ = load_model(module, str(path), strict=False)
    if missing:
        raise ValueError(
            f"{path} lacks weights the drafter needs: {sorted(missing)}; refusing to leave "
            "them randomly initialised"
        )
