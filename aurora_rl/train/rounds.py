"""Deprecated: moved to :mod:`aurora_rl.online.rounds` (kept so old imports work, with a warning)."""

import warnings

from aurora_rl.online.rounds import accepted_length, train_rounds  # noqa: F401

warnings.warn("aurora_rl.train.rounds is deprecated: import aurora_rl.online.rounds", DeprecationWarning, stacklevel=2)
