"""The EAGLE-style head as a module: what it computes, and the pass it is trained with.

Notation: tokens ``x_0 .. x_{L-1}``; ``f_j`` is the target's feature after ``x_j`` (its
configured hidden states concatenated, ``D = d * len(hidden_layers)``), which predicts
``x_{j+1}``. At position ``j`` the head reads the pair ``(g_{j-1}, x_j)``:
``g_{j-1} = proj(f_{j-1})`` for a true target feature, or the head's own previous output
``h_{j-1}`` while it drafts ahead of the target; ``g_{-1} = 0`` (the first token has no
predecessor). It outputs ``h_j = block(fc([embed(x_j), g_{j-1}]))`` and
``logits_j = lm_head(norm(h_j))`` predict ``x_{j+1}``. The embedding and LM head are the
target's, shared and frozen; only ``proj``, ``fc``, the block and ``norm`` are the head's.

Training unrolls exactly as decoding does: true pairs over the context, then ``k - 1``
steps fed with the head's own outputs, backpropagating through them (EAGLE's "learn from
your own previous outputs").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from aurora_rl.core.batch import TraceBatch
from aurora_rl.core.fp16_weights import Fp16Linear
from aurora_rl.policies.eagle_layer import EagleHead, KVCache

# Logits below the lowest in-vocabulary one given to tokens outside a reduced draft vocabulary
# while training (e^-30: no mass to speak of, but finite).
OUTSIDE_MARGIN = 30.0


class EagleModel(nn.Module):
    """The head together with the target's embedding and LM head, shared and frozen.

    Only the head is a registered submodule, so ``parameters()`` and ``state_dict()`` are
    the head's alone: what a learner optimises and a checkpoint holds. The target's
    modules are read through ``detach`` (no gradient ever reaches them) and are not moved
    by ``.to()`` (they stay wherever the target lives). ``forward(batch)`` is the training
    pass a learner hands to ``accelerate``.

    Args:
        head: the trainable head (its config fixes which target layers it reads).
        target_model: the target whose input embedding and LM head the head shares.
    """

    def __init__(self, head: EagleHead, target_model: PreTrainedModel) -> None:
        super().__init__()
        config = head.config
        embedding, lm_head = target_model.get_input_embeddings(), target_model.get_output_embeddings()
        if not isinstance(embedding, nn.Embedding) or not isinstance(lm_head, (nn.Linear, Fp16Linear)):
            raise ValueError(
                "the EAGLE head shares the target's nn.Embedding input embedding and nn.Linear "
                f"(or Fp16Linear) LM head; this target has {type(embedding).__name__} and {type(lm_head).__name__}"
            )
        target_shape = (target_model.config.hidden_size, lm_head.weight.shape[0])
        embedding_size = embedding.weight.shape[1]
        if target_shape != (config.hidden_size, config.vocab_size) or embedding_size != config.hidden_size:
            raise ValueError(
                f"the EAGLE head was built for a target of hidden size {config.hidden_size} and "
                f"vocabulary {config.vocab_size}, but this target has hidden size {target_shape[0]} "
                f"and vocabulary {target_shape[1]}; pair the head with the target it was built for"
            )
        self.head = head
        # A tuple is invisible to nn.Module's registration: the target's modules stay out
        # of parameters(), state_dict(), optimisers and checkpoints.
        self._shared = (embedding, lm_head)

    @property
    def dtype(self) -> torch.dtype:
        return self.head.norm.weight.dtype  # a norm: linears may be served as Fp16Linear (no .weight)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The target's frozen token embeddings ``(..., d)`` of ``ids`` ``(...)``."""
        return F.embedding(ids, self._shared[0].weight.detach()).to(self.dtype)

    def logits(self, outputs: torch.Tensor, training: bool = False) -> torch.Tensor:
        """``(..., V)`` float32 logits of head outputs ``(..., d)``.

        Over the full vocabulary they come from the target's frozen LM head. With a reduced
        draft vocabulary the head's own LM head scores its ``n`` tokens and every other token
        gets ``-inf`` (probability exactly 0: never proposed, lossless under the rejection
        rule); in ``training`` they get a finite floor ``OUTSIDE_MARGIN`` below the lowest
        in-vocabulary logit instead, so divergences to the target (which has mass there)
        stay finite and their gradients only reshape the in-vocabulary distribution.
        """
        head = self.head
        if not head.config.draft_vocab_size:
            lm_head = self._shared[1]
            if isinstance(lm_head, Fp16Linear) and not torch.is_grad_enabled():
                return lm_head(head.norm(outputs)).float()  # the target's own fp16 kernel (no autograd)
            weight = lm_head.weight.detach()
            bias = None if lm_head.bias is None else lm_head.bias.detach()
            return F.linear(head.norm(outputs).to(weight.dtype), weight, bias).float()
        small = head.lm_head(head.norm(outputs)).float()
        shape = (*small.shape[:-1], head.config.vocab_size)
        if training:
            floor = small.detach().amin(-1, keepdim=True) - OUTSIDE_MARGIN
            return floor.expand(shape).index_copy(-1, head.d2t, small)
        return small.new_full(shape, float("-inf")).index_copy_(-1, head.d2t, small)

    def forward(self, batch: TraceBatch, with_context: bool = False):
        """``(B, k, V)`` draft logits at every proposal position, with gradients.

        The true pairs of the context window run in one pass (left padding masked, the
        window's first token paired with a zero feature); the output at the last context
        token predicts proposal 0. Then ``k - 1`` unrolled steps pair the head's previous
        output with the previous proposal, as at decode time, and gradients flow back
        through every step. With the full context in the window the logits equal the
        decode-time ones.

        ``with_context=True`` also returns the ``(B, W - 1, V)`` logits of the true-feature
        pass at window positions ``0 .. W - 2`` (each predicting the next context token):
        the standard EAGLE training signal, free from the same forward pass.
        """
        config = self.head.config
        if batch.context_features is None:
            raise ValueError(
                "the EAGLE head trains on the target's features: build the batch with "
                "TraceBatch.from_traces(..., with_features=True) from traces decoded by a "
                f"Target with hidden_layers={config.hidden_layers}"
            )
        if batch.context_features.shape[-1] != config.feature_size:
            raise ValueError(
                f"the batch's features have width {batch.context_features.shape[-1]} but the head "
                f"reads hidden_layers {config.hidden_layers} of width {config.feature_size}"
            )
        mask = batch.context_mask
        # The pair at window position p reads the feature at p - 1; none before the window.
        projected = self.head.project(batch.context_features.to(self.dtype))
        previous = F.pad(projected[:, :-1], (0, 0, 1, 0)) * F.pad(mask[:, :-1], (1, 0))[..., None]
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        cache = KVCache()
        context_out = self.head(self.embed(batch.context_ids), previous, positions, cache, mask)
        out = context_out[:, -1]
        outputs = [out]
        key_mask = mask
        for i in range(1, batch.k):
            key_mask = F.pad(key_mask, (0, 1), value=True)
            step_ids = batch.proposed[:, i - 1 : i]
            step_pos = positions[:, -1:] + i
            out = self.head(self.embed(step_ids), out[:, None], step_pos, cache, key_mask)[:, 0]
            outputs.append(out)
        proposal_logits = self.logits(torch.stack(outputs, dim=1), training=True)
        if with_context:
            return proposal_logits, self.logits(context_out[:, :-1], training=True)
        return proposal_logits
