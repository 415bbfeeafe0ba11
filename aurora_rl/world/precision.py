"""Which floating-point precision training runs in: bf16 autocast only where the hardware has it.

bf16 autocast halves the bytes a matmul moves, which pays on GPUs and on CPUs with native
bf16 instructions (AVX512-BF16 or AMX). On a CPU without them (AVX2-only x86: many AMD EPYC
and older Intel machines) PyTorch emulates bf16, and the same training step ran 10-30x
*slower* than plain fp32 (figures for both kinds of CPU in docs/world.md).
So the default, "auto", decides by capability, never by a timing probe that machine load
could flip: bf16 on CUDA devices that support it and on CPUs that report native bf16, fp32
everywhere else. Users force either with `AURORA_RL_PRECISION=fp32|bf16` or a config key.

The choice changes the trained weights, so it is part of every cache key that stores them
(worlds, pretrained drafters): a world built in bf16 is never loaded as the fp32 one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16")
ENV_PRECISION = "AURORA_RL_PRECISION"


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether `device` runs bf16 matmuls natively (CUDA with bf16 support; CPU with AVX512-BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(requested: str | None = None, device: torch.device | str = "cpu") -> str:
    """"fp32" or "bf16": `requested` if it names one, else $AURORA_RL_PRECISION, else by capability.

    Raises ValueError naming the accepted values for anything else.
    """
    source = "precision"
    if requested is None:
        requested, source = os.environ.get(ENV_PRECISION) or "auto", f"${ENV_PRECISION}"
    if requested not in PRECISIONS:
        raise ValueError(f"{source}={requested!r}: choose one of {list(PRECISIONS)} (auto = bf16 only where native).")
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return requested


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str = "cpu") -> Iterator[None]:
    """bf16 autocast for precision "bf16", nothing for "fp32" (a resolved precision, not "auto")."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"autocast needs a resolved precision, 'fp32' or 'bf16'; got {precision!r}.")
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        yield
