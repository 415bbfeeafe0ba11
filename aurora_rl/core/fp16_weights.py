"""Serve a target on a CPU with fp16 weights: fbgemm's fp16 GEMM, fp32 arithmetic.

Why: on x86 CPUs, PyTorch's fp32 ``linear`` is fast for one token (a GEMV) but 2-4x
slower per call for the 2-8 tokens a speculative verify scores (MKL's small-M GEMM; on the
2-core AVX2 EPYC, SmolLM2's 49k-row LM head: 12 ms for 1 token, 27 ms for 2, 36 ms for 5).
Verifying k + 1 tokens then costs ~2x one token, and no draft can pay for that. fbgemm's
fp16 kernel (``torch.ops.quantized.linear_dynamic_fp16``: weights stored as fp16, products
and sums in fp32, activations never quantized) reads half the bytes and keeps small M cheap
(4.7, 5.2 and 6.3 ms for the same three calls).

What it changes: each weight is rounded to fp16 once (SmolLM2: at most 2e-3 per weight, a
Q4_1 GGUF holds only 4-bit levels anyway), so the served model is "the target with fp16
weights". Decoding stays lossless *relative to that model*: target-only decoding,
``generate`` and speculative decoding all run the same converted modules, and a row's
result does not depend on the other rows of a forward (no activation quantization), so
verifying 5 tokens gives the logits scoring them one by one would (up to fp32 reassociation,
as before). Activation-quantized int8 (``quantize_dynamic(..., qint8)``) is faster still
but scales activations per *tensor*: a token's logits then depend on its neighbours in the
forward, which breaks that property; it is deliberately not offered.
"""

from __future__ import annotations

import torch
from torch import nn

TARGET_WEIGHTS = ("fp32", "fp16")


class Fp16Linear(nn.Module):
    """An ``nn.Linear`` whose weight is packed for fbgemm's fp16 GEMM (inference only).

    ``keep_weight`` keeps the original fp32 ``weight`` (and ``bias``) readable, for the LM
    head: drafters copy or share its rows, and a tied head shares the embedding's tensor, so
    keeping it costs no memory.
    """

    def __init__(self, linear: nn.Linear, keep_weight: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().float(), bias)
        if keep_weight:
            self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x.float(), self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights=fp16 (fbgemm)"


def use_fp16_weights(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` (CPU, fp32, inference) by an :class:`Fp16Linear`
    in place; returns how many were replaced. Embeddings and norms stay fp32; a tied LM head
    gets its own fp16 copy (the input embedding is untouched) and keeps ``weight`` readable.

    Raises:
        ValueError: the model is not on the CPU, or this torch build has no fbgemm.
    """
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"target weights=fp16 is a CPU kernel (fbgemm); the model is on {device}: "
                         "on a GPU load it in half precision instead (dtype=torch.float16)")
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise ValueError("target weights=fp16 needs fbgemm (x86 CPUs with AVX2); this torch build has "
                         f"{torch.backends.quantized.supported_engines}: use weights=fp32")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Fp16Linear(child, keep_weight=child is head))
                replaced += 1
    return replaced


def apply_target_weights(model: nn.Module, weights: str) -> nn.Module:
    """``model`` with its linear layers in ``weights`` (``"fp32"``: as loaded; ``"fp16"``:
    :func:`use_fp16_weights`)."""
    if weights not in TARGET_WEIGHTS:
        raise ValueError(f"target weights={weights!r}: choose one of {list(TARGET_WEIGHTS)}")
    if weights == "fp16":
        use_fp16_weights(model)
    return model
