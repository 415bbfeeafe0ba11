"""Grouped-query attention without copying the KV cache, for verify passes of several tokens.

Why: transformers' ``sdpa`` attention hands grouped-query attention (GQA: fewer K/V heads
than query heads, SmolLM2: 9 and 3) to the kernel (``enable_gqa``) only when there is no
attention mask. A speculative verify scores ``k + 1`` new tokens against a cache, which
needs a causal mask, so there it falls back to ``repeat_kv``: every layer copies its whole
cached K and V three times over, on every step. On 2 CPU cores that is ~5 ms of an ~70 ms
SmolLM2 verify forward at context 100, and it grows with the context; one-token decoding
(no mask) never pays it. PyTorch's CPU kernel takes ``enable_gqa`` with a mask too, and
gives bit-identical outputs (``tests/test_gqa_attention.py``).

:func:`use_gqa_attention` switches a model's ``sdpa`` attention to :func:`gqa_sdpa_attention`
(registered with transformers' attention and mask interfaces), which passes the masked
multi-token case to the kernel and everything else to transformers' own function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GQA_SDPA = "aurora_gqa_sdpa"


def gqa_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa_attention_forward``, except that several queries under a mask
    read the grouped K/V heads in place (``enable_gqa``) instead of through ``repeat_kv``."""
    groups = getattr(module, "num_key_value_groups", 1)
    # Off the CPU transformers' reason stands: on CUDA, a mask with enable_gqa falls back to the math kernel.
    plain = (
        groups == 1 or attention_mask is None or query.shape[2] == 1 or query.device.type != "cpu"
        or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
        or kwargs.get("output_attentions", False)
    )  # fmt: skip
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)  # fmt: skip
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, enable_gqa=True)  # fmt: skip
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(GQA_SDPA, gqa_sdpa_attention)
AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)


def use_gqa_attention(model: PreTrainedModel) -> bool:
    """Switch ``model`` from ``sdpa`` to :func:`gqa_sdpa_attention` in place; True if it did.

    Models on another attention implementation, or without grouped K/V heads, are left as
    they are (nothing would change for them).
    """
    config = model.config
    heads, kv_heads = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if config._attn_implementation != "sdpa" or not heads or not kv_heads or heads == kv_heads:
        return False
    model.set_attn_implementation(GQA_SDPA)
    return True
