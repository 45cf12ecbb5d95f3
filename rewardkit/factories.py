"""What rewardkit can tell about a registered object without calling it, and the callables it builds from one.

A registered reward is either a **reward function** (a non-class callable with a ``completions`` parameter) or
a **factory** whose keyword parameters are the recipe's ``params``; an environment is always a factory. Params
are bound to a factory's signature at validation, before any model loads. :class:`EnvironmentFactory` is the
zero-argument callable TRL's ``environment_factory`` takes. No torch, no TRL: importing this module is cheap.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from rewardkit.errors import PluginError

# Keyword arguments TRL passes to every reward function that are not dataset columns.
TRL_REWARD_EXTRAS = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
                     "environments"}


def is_reward_function(obj: Any) -> bool:
    """A reward function (vs a factory) is a non-class callable with a ``completions`` parameter."""
    if inspect.isclass(obj) or not callable(obj):
        return False
    try:
        return "completions" in inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False


def required_columns(fn: Callable) -> list[str]:
    """Dataset columns a reward function cannot run without: its keyword parameters without defaults."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params
            if p.kind in kinds and p.default is inspect.Parameter.empty and p.name not in TRL_REWARD_EXTRAS]


def bind_problems(factory: Callable, params: dict, what: str) -> list[str]:
    """``params`` bound to ``factory``'s signature: unknown or missing params, with did-you-mean and the accepted
    ones, each message starting with ``what`` (the component and its provider)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return []
    try:
        sig.bind(**params)
    except TypeError as exc:
        accepted = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
        bad = [k for k in params if k not in sig.parameters]
        detail = (f"unknown param(s) {', '.join(repr(b) for b in bad)}" if bad and not any(
            p.kind == p.VAR_KEYWORD for p in sig.parameters.values()) else str(exc))
        for b in bad:
            close = difflib.get_close_matches(b, accepted, n=1)
            if close:
                detail += f" (did you mean '{close[0]}' for '{b}'?)"
        return [f"{what}: {detail}; accepted params: {', '.join(accepted) or 'none'}"]
    return []


def has_method(cls: type, name: str) -> bool:
    """Whether ``cls`` defines (or inherits) a function ``name``, the test TRL's GRPOTrainer makes for ``reset``."""
    return any(n == name for n, _ in inspect.getmembers(cls, predicate=inspect.isfunction))


class EnvironmentFactory:
    """The zero-argument callable TRL's ``environment_factory`` takes: each call builds one environment from the
    registered factory and the recipe's params. A factory that raises, or builds something without ``reset``,
    is reported naming the environment and its plugin. Picklable when the registered factory is."""

    def __init__(self, factory: Callable, params: dict, name: str, provider: str):
        self.factory, self.params, self.name, self.provider = factory, dict(params), name, provider

    def __call__(self) -> Any:
        try:
            env = self.factory(**self.params)
        except Exception as exc:
            raise PluginError(f"environment '{self.name}' from {self.provider} failed to build with params "
                              f"{self.params}: {type(exc).__name__}: {exc}") from exc
        if not has_method(type(env), "reset"):
            raise PluginError(f"environment '{self.name}' from {self.provider} built a {type(env).__name__} "
                              f"without a reset method; TRL's environment_factory needs reset(**row) -> str | None")
        return env

    def __repr__(self) -> str:
        return f"EnvironmentFactory({self.name!r}, {self.params!r})"
