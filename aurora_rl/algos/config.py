"""``AlgoConfig``: which learning rule trains the draft, and its knobs."""

from __future__ import annotations

from dataclasses import dataclass

from aurora_rl.algos.divergences import DIVERGENCES
from aurora_rl.algos.rl_losses import DISCARD_TERMS, PG_MODES
from aurora_rl.settings import check_ranges, documented

ALGORITHMS = (
    "forward_kl",
    "reverse_kl",
    "jsd",
    "tv",
    "accept_discard",
    "osd",
    "pg",
    "expected_acceptance",
)



@dataclass
class AlgoConfig:
    name: str = documented(
        "learning rule: forward_kl | reverse_kl | jsd | tv (distillation on every judged "
        "position), accept_discard (Aurora-style: divergence on accepted positions + "
        "lambda_discard x a term on the refused one), osd (divergence only where the draft "
        "was wrong), pg (policy gradient on accepted length), expected_acceptance "
        "(maximise sum_i prod_j<=i alpha_j)",
        "forward_kl",
    )
    lr: float = documented("AdamW learning rate", 3e-3)
    weight_decay: float = documented("AdamW weight decay", 0.0)
    max_grad_norm: float = documented("clip the gradient norm to this (0 = no clipping)", 1.0)
    batch_size: int = documented("traces per update", 32)
    max_context: int = documented("context tokens per trace the draft is trained on (the last ones)", 64)
    beta: float = documented("jsd: 0 = forward KL, 1 = reverse KL, 0.5 = Jensen-Shannon", 0.5)
    divergence: str = documented("accept_discard / osd: the divergence to the target", "forward_kl")
    lambda_discard: float = documented(
        "accept_discard: weight of the discarded proposals relative to accepted ones "
        "(0 = learn from accepted positions only, 1 = plain distillation on every position)",
        0.5,
    )
    discard_term: str = documented(
        "accept_discard: 'divergence' to the target at every discarded position, or "
        "'unlikelihood' (-log(1 - q(refused))) at the refused proposal only",
        "divergence",
    )
    pg_mode: str = documented("pg: 'ppo_clip' or 'truncated_is' off-policy correction", "ppo_clip")
    clip_eps: float = documented("pg (ppo_clip): ratio clip range", 0.2)
    rho_max: float = documented("pg (truncated_is): importance-weight cap", 1.0)
    pg_kl_coef: float = documented(
        "pg: weight of a forward-KL anchor to the target (0 = pure REINFORCE). Pure PG from an "
        "untrained draft barely learns: its reward (an accepted sample) comes ~1/V of the time",
        0.3,
    )
    context_lm_coef: float = documented(
        "weight of an auxiliary next-token cross-entropy on the traces' context windows (prompt "
        "and the target's own output), free from the same forward pass (0 = proposal positions only)",
        1.0,
    )
    explore_temperature: float = documented(
        "pg: when decoding is greedy the draft samples its proposals at this temperature "
        "(still lossless) so the policy gradient has a stochastic policy to improve",
        1.0,
    )

    def __post_init__(self) -> None:
        if self.name not in ALGORITHMS:
            raise ValueError(f"algo.name={self.name!r} is not one of {', '.join(ALGORITHMS)}")
        check_ranges(self, "algo", [
            ("lr", lambda v: not v > 0, "> 0"),
            ("max_grad_norm", lambda v: v < 0, ">= 0 (0 disables)"),
            ("batch_size", lambda v: v < 1, ">= 1"),
            ("max_context", lambda v: v < 1, ">= 1"),
            ("beta", lambda v: not 0.0 <= v <= 1.0, "in [0, 1]"),
        ])  # fmt: skip
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"algo.divergence={self.divergence!r} is not one of {', '.join(DIVERGENCES)}")
        check_ranges(self, "algo", [("lambda_discard", lambda v: v < 0, ">= 0")])
        if self.discard_term not in DISCARD_TERMS:
            raise ValueError(f"algo.discard_term={self.discard_term!r} is not one of {', '.join(DISCARD_TERMS)}")
        if self.pg_mode not in PG_MODES:
            raise ValueError(f"algo.pg_mode={self.pg_mode!r} is not one of {', '.join(PG_MODES)}")
        check_ranges(self, "algo", [
            ("clip_eps", lambda v: not 0 < v < 1, "in (0, 1)"),
            ("rho_max", lambda v: not v > 0, "> 0"),
            ("context_lm_coef", lambda v: v < 0, ">= 0"),
            ("pg_kl_coef", lambda v: v < 0, ">= 0"),
            ("explore_temperature", lambda v: not v > 0, "> 0"),
        ])  # fmt: skip
