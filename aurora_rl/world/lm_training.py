"""A small, deterministic causal-LM trainer: the world's target is trained with it, and so
is any drafter pretrained on a slice of the world.

Next-token cross-entropy on windows of one packed token stream; AdamW with linear warm-up
and cosine decay; fp32 master weights, with bf16 autocast only where the hardware runs bf16
natively (`precision.resolve_precision`: emulated bf16 is 10-30x slower than fp32).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from aurora_rl.settings import documented

from .precision import autocast, resolve_precision

WEIGHT_DECAY = 0.1
GRAD_CLIP_NORM = 1.0
MIN_LR_RATIO = 0.1  # the cosine schedule ends at lr * MIN_LR_RATIO


@dataclass(frozen=True)
class LMTraining:
    """How long and how hard `train_causal_lm` trains: the one place its ranges are checked,
    shared by the world's target recipe and the pretrained drafters' recipe."""

    steps: int = documented("optimizer steps (>= 1)")
    batch_size: int = documented("sequences per step (>= 1)")
    seq_len: int = documented("tokens per training sequence (>= 1)")
    lr: float = documented("peak AdamW learning rate (> 0), reached after warm-up, then cosine decay")
    warmup: int = documented("linear warm-up steps, in [0, steps]", 0)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LMTraining.{name}={value!r}: must be a positive int.")
        if not self.lr > 0:
            raise ValueError(f"LMTraining.lr={self.lr!r}: must be > 0.")
        if not 0 <= self.warmup <= self.steps:
            raise ValueError(f"LMTraining.warmup={self.warmup}: must be in [0, steps={self.steps}].")

    def with_steps(self, steps: int) -> LMTraining:
        """The same run, `steps` long; warm-up is cut to fit a shorter one."""
        return dataclasses.replace(self, steps=steps, warmup=min(self.warmup, steps))


def pack_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> torch.Tensor:
    """<bos> text <eos> for every text, end to end: shape (total_tokens,), int64."""
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise ValueError("texts must be a sequence of str (a list of documents), not a single str or other items.")
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return torch.tensor(
        [token for seq in ids for token in (tokenizer.bos_token_id, *seq, tokenizer.eos_token_id)], dtype=torch.long
    )


def pack_examples(examples: Sequence[tuple[list[int], int]]) -> torch.Tensor:
    """The ids of ``tokenizer.encoded_examples`` end to end, in order: shape (total_tokens,),
    int64 -- the stream the target, and every drafter pretrained on the world's text, trains on."""
    return torch.tensor([token for ids, _ in examples for token in ids], dtype=torch.long)


def window_starts(stream: torch.Tensor, seq_len: int, bos_token_id: int | None) -> torch.Tensor:
    """Offsets where a training window of seq_len + 1 tokens may start, shape (num_starts,).

    When the stream holds <bos> tokens, windows start at each document's <bos> (so row
    position 0 is <bos>, as at inference) and every seq_len tokens further into documents
    longer than a window (so no token goes unseen). Otherwise any offset is a start.
    """
    last = stream.numel() - (seq_len + 1)
    if last < 0:
        raise ValueError(
            f"the token stream has {stream.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
            "pass more text or lower seq_len."
        )
    bos_positions = (stream == bos_token_id).nonzero().flatten().tolist() if bos_token_id is not None else []
    if not bos_positions:
        return torch.arange(last + 1)
    boundaries = sorted({0, *bos_positions}) + [stream.numel()]
    starts = [s for begin, end in zip(boundaries, boundaries[1:]) for s in range(begin, end, seq_len) if s <= last]
    return torch.tensor(starts, dtype=torch.long)


def cosine_with_warmup(step: int, steps: int, warmup: int) -> float:
    """Learning-rate multiplier at `step` (0-based): linear warm-up to 1, cosine down to MIN_LR_RATIO."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))


def train_causal_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts_or_token_stream: Sequence[str] | torch.Tensor,
    training: LMTraining,
    *,
    seed: int,
    progress: bool = True,
    desc: str = "train",
    precision: str | None = None,
) -> dict[str, float | str]:
    """Train `model` in place on next-token prediction and return metrics.

    Args:
        model: a causal LM returning `.logits` of shape (B, T, V); trained on the device of its parameters.
        tokenizer: supplies <bos> / <eos> ids (texts are packed as <bos> text <eos>).
        texts_or_token_stream: a sequence of documents, or an already packed 1-D LongTensor of ids.
        training: each of its `steps` draws `batch_size` windows of `seq_len` + 1 tokens; AdamW
            at peak `lr` after `warmup` linear steps, then cosine decay.
        seed: fixes the window order (and any dropout); the same seed, data and machine give
            identical weights. The caller's global RNG state is left untouched.
        progress, desc: show a tqdm bar with this label.
        precision: "fp32", "bf16" or "auto" (None = $AURORA_RL_PRECISION, else "auto": bf16
            autocast only where the device runs bf16 natively).

    Returns:
        {"steps", "tokens", "seconds", "tokens_per_second", "loss_first", "loss_last", "precision"},
        where loss_last is the mean loss over the last tenth of the steps and precision is the one
        resolved ("fp32" or "bf16"). The model is left in eval mode.
    """
    steps, batch_size, seq_len = training.steps, training.batch_size, training.seq_len
    if isinstance(texts_or_token_stream, torch.Tensor):
        if texts_or_token_stream.dim() != 1:
            raise ValueError(f"a token stream must be 1-D; got shape {tuple(texts_or_token_stream.shape)}.")
        stream = texts_or_token_stream.long()
    else:
        stream = pack_texts(tokenizer, texts_or_token_stream)
    starts = window_starts(stream, seq_len, tokenizer.bos_token_id)
    offsets = torch.arange(seq_len + 1)
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)

    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]  # norms and biases
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=training.lr,
        betas=(0.9, 0.95),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, steps, training.warmup)
    )

    losses = []
    began = time.perf_counter()
    model.train()
    with torch.random.fork_rng(devices=[]), tqdm(total=steps, desc=desc, disable=not progress, unit="step") as bar:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            rows = starts[torch.randint(starts.numel(), (batch_size,), generator=generator)]
            window = stream[rows[:, None] + offsets].to(device)  # (B, T + 1)
            with autocast(precision, device):
                logits = model(input_ids=window[:, :-1], use_cache=False).logits  # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), window[:, 1:].flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            bar.update()
    model.eval()
    seconds = time.perf_counter() - began
    tail = losses[-max(1, steps // 10) :]
    return {
        "steps": float(steps),
        "tokens": float(steps * batch_size * seq_len),
        "seconds": seconds,
        "tokens_per_second": steps * batch_size * seq_len / seconds,
        "loss_first": losses[0],
        "loss_last": sum(tail) / len(tail),
        "precision": precision,
    }
