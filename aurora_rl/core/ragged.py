"""One forward pass over several sequences, each with its own KV cache and its own length.

Speculative steps are ragged: every sequence has a different cache length and feeds a
different number of new tokens (its pending token plus however many proposals it drew).
:func:`run_cached_ragged` scores them all in one batched forward:

- each row's cached K/V are copied into a batch left-padded to the longest cache;
- the new tokens are right-padded to the widest feed;
- a 2-D attention mask hides every padding column, and explicit position ids give each
  row's new tokens the positions they would have alone (so rotary / absolute position
  embeddings see what the one-sequence path sees; padding repeats the row's last position);
- afterwards each row's *real* new K/V columns are appended to its own cache.

The per-row caches stay the source of truth, so rows can join, leave and roll back
independently between steps. Per row the result equals :func:`run_cached` up to float
reassociation in the batched matmuls (about 1e-6 on float32 logits; see
``tests/test_batched_decode.py``). A near-tie can therefore, rarely, resolve differently
than alone -- still the target's own output up to that float noise, exactly as a different
batch size would in any serving stack.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from aurora_rl.core.target import ModelOutput, RollbackCache, plain_kv_layer, run_cached


def batchable(caches: Sequence[RollbackCache]) -> bool:
    """Whether these caches can be stacked into one batch: plain full-attention layers only.

    Sliding-window or recurrent layers keep state that is not a list of per-position K/V;
    :func:`run_cached_ragged` runs such rows one forward each.
    """
    return all(plain_kv_layer(layer) for cache in caches for layer in cache.kv.layers)


def _stacked_past(caches: Sequence[RollbackCache], layer: int, width: int):
    """``(B, H, width, d)`` keys and values of one layer, each row left-padded with zeros."""
    rows = [cache.kv.layers[layer] for cache in caches]
    reference = next(r for r in rows if r.is_initialized and r.keys.shape[-2] > 0)
    shape = (len(rows), *reference.keys.shape[1:-2], width, reference.keys.shape[-1])
    keys = reference.keys.new_zeros(shape)
    values = reference.values.new_zeros(shape[:-1] + (reference.values.shape[-1],))
    for b, row in enumerate(rows):
        length = row.keys.shape[-2] if row.is_initialized else 0
        if length:
            keys[b, ..., width - length :, :] = row.keys[0]
            values[b, ..., width - length :, :] = row.values[0]
    return keys, values


def run_cached_ragged(
    model: PreTrainedModel,
    caches: Sequence[RollbackCache],
    feeds: Sequence[Sequence[int] | torch.Tensor],
    hidden_layers: Sequence[int] = (),
    pad_id: int = 0,
) -> list[ModelOutput]:
    """Append ``feeds[b]`` to ``caches[b]`` for every row in one forward pass and score them.

    Returns one :class:`ModelOutput` per row, shaped as :func:`run_cached` would return it
    (``(len(feeds[b]), V)`` logits). Every feed must hold at least one token. A lone row, or
    caches that are not :func:`batchable`, get one :func:`run_cached` forward per row.
    """
    if len(caches) != len(feeds):
        raise ValueError(f"{len(caches)} caches but {len(feeds)} feeds: give one feed per cache")
    feeds = [torch.as_tensor(feed, dtype=torch.long).reshape(-1) for feed in feeds]
    if any(feed.numel() == 0 for feed in feeds):
        raise ValueError("every row must feed at least one token")
    if len(feeds) == 1 or not batchable(caches):  # nothing to stack, or nothing stackable
        return [run_cached(model, cache, feed, hidden_layers) for cache, feed in zip(caches, feeds)]
    batch, device = len(feeds), model.device
    past_lengths = [len(cache) for cache in caches]
    new_lengths = [feed.numel() for feed in feeds]
    past_width, new_width = max(past_lengths), max(new_lengths)

    input_ids = torch.full((batch, new_width), pad_id, dtype=torch.long)
    mask = torch.zeros(batch, past_width + new_width, dtype=torch.long)
    for b, (feed, past) in enumerate(zip(feeds, past_lengths)):
        input_ids[b, : feed.numel()] = feed
        mask[b, past_width - past : past_width + feed.numel()] = 1
    # Padding columns repeat their row's last real position: nothing reads their outputs,
    # and a position past the row's own end could overflow learned position embeddings.
    columns = torch.minimum(torch.arange(new_width)[None, :], torch.tensor(new_lengths)[:, None] - 1)
    positions = torch.tensor(past_lengths)[:, None] + columns

    stacked = None
    if past_width:
        layers = range(len(caches[0].kv.layers))
        stacked = DynamicCache([_stacked_past(caches, layer, past_width) for layer in layers], config=model.config)
    with torch.inference_mode():
        out = model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            past_key_values=stacked if stacked is not None else DynamicCache(config=model.config),
            use_cache=True,
            output_hidden_states=bool(hidden_layers),
        )
    new_kv = out.past_key_values
    for layer in range(len(new_kv.layers)):
        keys = new_kv.layers[layer].keys[..., past_width:, :]
        values = new_kv.layers[layer].values[..., past_width:, :]
        for b, (cache, n) in enumerate(zip(caches, new_lengths)):
            cache.kv.update(keys[b : b + 1, ..., :n, :], values[b : b + 1, ..., :n, :], layer)

    results = []
    for b, n in enumerate(new_lengths):
        hidden = None
        if hidden_layers:
            hidden = torch.cat([out.hidden_states[i][b, :n] for i in hidden_layers], dim=-1)
        results.append(ModelOutput(logits=out.logits[b, :n].float(), hidden=hidden))
    return results
