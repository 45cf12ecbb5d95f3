"""rewardkit: a thin, pluggable reward-and-trainer layer over TRL.

Importing this package is cheap: no torch, no transformers, no plugin loading. Plugins are discovered
lazily the first time a :class:`~rewardkit.registry.Registry` is asked for something.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("rewardkit")
"""Marker for hook implementations: ``@rewardkit.hookimpl def register_rewards(register): ...``."""

from rewardkit.errors import PluginError, RecipeError, RewardError, RewardkitError  # noqa: E402

__all__ = ["hookimpl", "PluginError", "RecipeError", "RewardError", "RewardkitError", "__version__"]
