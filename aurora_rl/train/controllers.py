"""Moved: the controller builder is ``aurora_rl.policies.controller_factory`` and the
configured (profiled, learned-policy) controller ``aurora_rl.envs.controller_setup``, so that
the serve CLI needs nothing from the train CLI. The old names still import from here, with a
DeprecationWarning."""

import warnings

from aurora_rl.envs.controller_setup import configured_controller, learned_policy  # noqa: F401
from aurora_rl.policies.controller_factory import (  # noqa: F401
    CONTROLLERS,
    DEFAULT_CONFIDENCE,
    build_controller,
    controller_cost,
    load_policy,
)

warnings.warn(
    "aurora_rl.train.controllers is deprecated: import aurora_rl.policies.controller_factory "
    "(build_controller, CONTROLLERS, ...) or aurora_rl.envs.controller_setup (configured_controller, learned_policy)",
    DeprecationWarning,
    stacklevel=2,
)
