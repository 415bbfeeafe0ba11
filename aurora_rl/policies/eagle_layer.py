"""The EAGLE head as a network: its config, its one decoder block and the head module.

The block is plain torch (RMSNorm, RoPE, a rollback-able KV cache, causal self-attention,
a SwiGLU MLP) rather than a HF layer class, so that the head's decode path (one query at a
time against a cache cut back after every verdict) and its training path (a padded batch,
then unrolled steps) are visibly the same code. Decoding and training live in ``eagle.py``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dimension, computed in float32."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * scaled.to(x.dtype)


def rotary(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of the rotary angles, each ``(B, 1, T, head_dim)`` for ``positions`` ``(B, T)``."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim
    inverse = theta**-exponents
    angles = positions[..., None].float() * inverse
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, T, head_dim)`` by the angles (the half-split RoPE convention)."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class KVCache:
    """Keys and values of the block, ``(B, H, T, head_dim)`` each, cut back with ``rollback``.

    Entry ``t`` belongs to sequence position ``t``. Appending concatenates (autograd flows
    through it, which the unrolled training pass relies on).
    """

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def extend(
        self, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``(B, H, T, head_dim)`` entries; return all keys and values so far."""
        if self.keys is None or self.values is None:
            self.keys, self.values = keys, values
        else:
            self.keys = torch.cat([self.keys, keys], dim=2)
            self.values = torch.cat([self.values, values], dim=2)
        return self.keys, self.values

    def rollback(self, length: int) -> None:
        """Keep the first ``length`` entries."""
        current = len(self)
        if not 0 <= length <= current:
            raise ValueError(f"cannot roll a cache of length {current} back to {length}")
        if self.keys is not None and self.values is not None and length < current:
            self.keys = self.keys[:, :, :length]
            self.values = self.values[:, :, :length]


def stack_caches(caches: list[KVCache]) -> tuple[KVCache, torch.Tensor]:
    """One ``(B, H, T, head_dim)`` cache of several sequences' caches, each left-padded to
    the longest, and the ``(B, T)`` mask of their real entries (for ragged batched steps).
    Every cache must hold at least one entry."""
    width = max(len(cache) for cache in caches)
    reference = caches[0].keys
    keys = reference.new_zeros(len(caches), reference.shape[1], width, reference.shape[3])
    values = torch.zeros_like(keys)
    mask = torch.zeros(len(caches), width, dtype=torch.bool, device=reference.device)
    for row, cache in enumerate(caches):
        length = len(cache)
        keys[row, :, width - length :] = cache.keys[0]
        values[row, :, width - length :] = cache.values[0]
        mask[row, width - length :] = True
    stacked = KVCache()
    stacked.extend(keys, values)
    return stacked, mask


def attention_mask(past: int, new: int, key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Which keys each new query may read: ``(B or 1, 1, new, past + new)`` bool, or None.

    Causal over cache positions, and only real keys when ``key_mask`` ``(B, past + new)``
    marks padding. A query always reads its own key, so a padded query never has an empty
    row (which would give NaN and poison the gradients).
    """
    if key_mask is None and new == 1:
        return None  # one query may read the whole cache: no mask at all
    device = key_mask.device if key_mask is not None else None
    query_pos = torch.arange(new, device=device)[:, None] + past
    key_pos = torch.arange(past + new, device=device)[None, :]
    allowed = (key_pos <= query_pos)[None, None]
    if key_mask is not None:
        allowed = (allowed & key_mask[:, None, None, :]) | (key_pos == query_pos)
    return allowed


class DecoderBlock(nn.Module):
    """A pre-norm Llama-style decoder layer: ``x + attn(norm(x))``, then ``+ mlp(norm(.))``.

    Args:
        hidden_size: ``d``, the width of the residual stream.
        num_heads: attention heads (``d`` must divide by it, into an even head size).
        intermediate_size: width of the SwiGLU MLP.
        rope_theta: RoPE base.
        eps: RMSNorm epsilon.
    """

    def __init__(
        self, hidden_size: int, num_heads: int, intermediate_size: int, rope_theta: float, eps: float
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.rope_theta = rope_theta
        self.attn_norm = RMSNorm(hidden_size, eps)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.mlp_norm = RMSNorm(hidden_size, eps)
        self.gate_up = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``(B, T, d)`` at ``positions`` ``(B, T)`` appended to ``cache`` -> ``(B, T, d)``.

        ``key_mask`` ``(B, len(cache) + T)`` marks real (non-padding) entries; None = all real.
        """
        batch, new, width = x.shape
        qkv = self.qkv(self.attn_norm(x)).view(batch, new, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        cos, sin = rotary(positions, self.head_dim, self.rope_theta)
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        past = len(cache)
        keys, values = cache.extend(key, value)
        mask = attention_mask(past, new, key_mask)
        attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
        x = x + self.o_proj(attended.transpose(1, 2).reshape(batch, new, width))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class EagleConfig:
    """The shape of an EAGLE head, saved as ``config.json`` next to its weights.

    Attributes:
        hidden_layers: the target hidden states it reads (HF ``hidden_states`` indices;
            -1 is the final normalised state the LM head reads).
        hidden_size: ``d``, the target's hidden size and the head's width (its outputs go
            through the target's LM head).
        vocab_size: rows of the target's LM head.
        num_heads: attention heads of the decoder block (``d / num_heads`` must be even).
        intermediate_size: width of the block's SwiGLU MLP.
        rope_theta: RoPE base of the block.
        rms_norm_eps: epsilon of the block's RMSNorms.
        draft_vocab_size: 0 = the head drafts over the whole target vocabulary through the
            target's frozen LM head; ``n > 0`` = an EAGLE-3-style reduced draft vocabulary of
            ``n`` target tokens (``d2t``) with its own trainable ``n``-row LM head. Tokens
            outside it are never proposed (their draft probability is exactly 0).
        fused_norms: RMS-normalise each read layer's feature before ``proj`` fuses them, and
            the token embedding before ``fc`` pairs it (EAGLE-3), so no layer's scale drowns
            the others or the token.
    """

    hidden_layers: tuple[int, ...]
    hidden_size: int
    vocab_size: int
    num_heads: int
    intermediate_size: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    draft_vocab_size: int = 0
    fused_norms: bool = False

    def __post_init__(self) -> None:
        # JSON gives lists back; the layers are compared with Target.hidden_layers (a tuple).
        object.__setattr__(self, "hidden_layers", tuple(int(layer) for layer in self.hidden_layers))
        if not self.hidden_layers:
            raise ValueError(
                "hidden_layers is empty: an EAGLE head reads at least one target layer, e.g. (-1,)"
            )
        for name in ("hidden_size", "vocab_size", "num_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.draft_vocab_size <= self.vocab_size:
            raise ValueError(
                f"draft_vocab_size must be 0 (the full vocabulary) or in [1, vocab_size={self.vocab_size}], "
                f"got {self.draft_vocab_size}"
            )
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"hidden_size {self.hidden_size} must split into num_heads {self.num_heads} heads "
                "of an even size (RoPE rotates pairs); pick num_heads dividing it accordingly"
            )

    @property
    def feature_size(self) -> int:
        """``D``: width of the concatenated target features the head reads."""
        return self.hidden_size * len(self.hidden_layers)

    def save(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "EagleConfig":
        path = Path(directory) / CONFIG_FILE
        values = json.loads(path.read_text())
        fields = dataclasses.fields(cls)
        unknown = sorted(set(values) - {f.name for f in fields})
        required = {f.name for f in fields if f.default is dataclasses.MISSING}
        missing = sorted(required - set(values))
        if unknown or missing:
            raise ValueError(
                f"{path} is not an EAGLE head config: unknown fields {unknown}, missing fields {missing}"
            )
        return cls(**values)


class EagleHead(nn.Module):
    """The trainable part: ``proj`` ``D -> d``, ``fc`` ``2d -> d``, one decoder block, ``norm``;
    with a reduced draft vocabulary also ``lm_head`` ``d -> n`` and the buffer ``d2t`` ``(n,)``
    (draft index -> target token id, increasing), saved with the weights."""

    def __init__(self, config: EagleConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.proj = nn.Linear(config.feature_size, d, bias=False)
        self.fc = nn.Linear(2 * d, d, bias=False)
        self.block = DecoderBlock(
            d, config.num_heads, config.intermediate_size, config.rope_theta, config.rms_norm_eps
        )
        self.norm = RMSNorm(d, config.rms_norm_eps)
        if config.fused_norms:
            self.feature_norms = nn.ModuleList(RMSNorm(d, config.rms_norm_eps) for _ in config.hidden_layers)
            self.embed_norm = RMSNorm(d, config.rms_norm_eps)
        if config.draft_vocab_size:
            self.lm_head = nn.Linear(d, config.draft_vocab_size, bias=False)
            self.register_buffer("d2t", torch.arange(config.draft_vocab_size, dtype=torch.long))

    def forward(
        self,
        embeds: torch.Tensor,
        previous: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Outputs ``h`` ``(B, T, d)`` for pairs ``(previous, embeds)``, both ``(B, T, d)``.

        ``previous`` is ``proj(f)`` of true features or earlier outputs ``h``; ``positions``
        ``(B, T)``; the pairs are appended to ``cache`` (``key_mask`` as in ``DecoderBlock``).
        """
        if self.config.fused_norms:
            embeds = self.embed_norm(embeds)
        return self.block(self.fc(torch.cat([embeds, previous], dim=-1)), positions, cache, key_mask)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """``proj`` of target features ``(..., D)`` -> ``(..., d)`` (each layer normalised first
        with ``fused_norms``)."""
        if self.config.fused_norms:
            parts = features.split(self.config.hidden_size, dim=-1)
            features = torch.cat([norm(part) for norm, part in zip(self.feature_norms, parts)], dim=-1)
        return self.proj(features)

    def reset_parameters(self) -> None:
        """Start as "the previous feature plus the token": ``proj`` averages the read layers
        (the identity for one), ``fc`` adds embedding and feature, and the block's weights
        are small (std 0.02, as HF initialises Llamas), so training starts from a stable,
        residual-dominated head rather than noise."""
        d, layers = self.config.hidden_size, len(self.config.hidden_layers)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02)
            self.proj.weight.copy_(torch.eye(d).repeat(1, layers) / layers)
            self.fc.weight.copy_(torch.eye(d).repeat(1, 2))


def step_ragged(
    head: EagleHead, embeds: torch.Tensor, previous: torch.Tensor, positions: torch.Tensor, caches: list[KVCache]
) -> torch.Tensor:
    """One head step of ``B`` sequences, each appended to its own cache: ``(B, 1, d)``.

    Inputs are ``(B, 1, d)`` (``positions`` ``(B, 1)``). Several caches are stacked
    (:func:`stack_caches`) and each row's new entry is appended back to its own cache; a lone
    cache is used as it is, exactly the one-sequence step.
    """
    if len(caches) == 1:
        return head(embeds, previous, positions, caches[0])
    stacked, key_mask = stack_caches(caches)
    out = head(embeds, previous, positions, stacked, F.pad(key_mask, (0, 1), value=True))
    for row, cache in enumerate(caches):
        cache.extend(stacked.keys[row : row + 1, :, -1:], stacked.values[row : row + 1, :, -1:])
    return out
