"""User-facing errors. The CLI prints these without a traceback and exits with code 2."""

from __future__ import annotations


class RewardkitError(Exception):
    """Base class for errors caused by user input (a recipe, a plugin, a dataset), not by a bug."""


class PluginError(RewardkitError):
    """A plugin failed to load, registered something invalid, or two plugins registered one name."""


class RewardError(RewardkitError):
    """A reward function broke its contract (wrong length, non-number, NaN) or raised."""


class RecipeError(RewardkitError):
    """A recipe is invalid. Carries every problem found, so the user fixes them in one pass."""

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            msg = f"{head}{self.problems[0]}"
        else:
            msg = f"{head}{len(self.problems)} problems\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(msg)
