"""Learning rules for the draft: pure losses (``losses``) and ``Algorithm.update(batch) -> metrics``."""

from aurora_rl.algos.base import Algorithm, TrainableDraft
from aurora_rl.algos.config import ALGORITHMS, AlgoConfig
from aurora_rl.algos.zoo import make_algorithm

__all__ = ["ALGORITHMS", "AlgoConfig", "Algorithm", "TrainableDraft", "make_algorithm"]
