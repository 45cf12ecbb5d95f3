"""rewardkit: a thin, pluggable reward-and-trainer layer over TRL.

Importing this package is cheap: no torch, no transformers, no plugin loading. Plugins are discovered
lazily the first time a :class:`~rewardkit.registry.Registry` is asked for something.

What a plugin may import (the public surface; docs/architecture.md): ``hookimpl``, ``completion_text``, the
errors below, ``Stage``, ``StageContext`` and ``TRLStage`` (the trainer contract, for ``register_trainers``), ``Environment`` and
``EnvironmentFault`` (the environment contract, for ``register_environments``), the hook contract in
:mod:`rewardkit.hookspecs` and the pytest helpers in :mod:`rewardkit.testing`.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("rewardkit")
"""Marker for hook implementations: ``@rewardkit.hookimpl def register_rewards(register): ...``."""

from rewardkit.completions import completion_text  # noqa: E402
from rewardkit.errors import PluginError, RecipeError, RewardError, RewardkitError  # noqa: E402
from rewardkit.trainers.base import Stage, StageContext  # noqa: E402  (no torch: typing imports only)
from rewardkit.trainers.trl_stages import TRLStage  # noqa: E402  (no torch until a trainer is built)
from rewardkit.environments import Environment, EnvironmentFault  # noqa: E402  (no torch)

__all__ = ["hookimpl", "completion_text", "PluginError", "RecipeError", "RewardError", "RewardkitError", "Stage",
           "StageContext", "TRLStage", "Environment", "EnvironmentFault", "__version__"]
