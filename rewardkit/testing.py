"""Test helpers for plugin authors; also a pytest plugin (installed with rewardkit, active in every session).

Fixtures:

- ``fresh_registry``: an empty :class:`~rewardkit.registry.Registry` installed as the process default (restored
  afterwards); add your hook module with ``fresh_registry.add_plugin(my_plugin)``.
- ``builtin_registry``: the same, holding rewardkit's built-in components only.

Neither reads installed entry points or ``REWARDKIT_DISABLE_PLUGINS``: a test gets the plugins it adds.

``check_reward(fn, **columns)`` calls a reward the way TRL does and fails (``AssertionError``) with a message
saying what to fix unless it returns one number or ``None`` per completion (no NaN or infinity), accepts columns
and TRL arguments it does not use, works on a batch of one (rewardkit re-runs single samples to find a fault)
and survives pickling (multi-process training and worker pools pickle rewards).
"""

from __future__ import annotations

import inspect
import pickle
from types import SimpleNamespace
from typing import Callable

import pytest

from rewardkit import registry as _reg
from rewardkit.errors import RewardError
from rewardkit.factories import is_reward_function
from rewardkit.reward_checks import check_rewards

PROMPTS = ["What is 2+2?", "Name a colour.", "Say hi.", "3+5="]
COMPLETIONS = ["4", "blue", "hello there", "8"]


@pytest.fixture
def fresh_registry():
    """An empty registry installed as the process default, restored afterwards."""
    r = _reg.Registry(entry_points=False, disabled=())
    previous = _reg.set_registry(r)
    yield r
    _reg.set_registry(previous)


@pytest.fixture
def builtin_registry():
    """A registry holding only rewardkit's built-in components, installed as the process default."""
    from rewardkit import builtin  # noqa: PLC0415

    r = _reg.Registry(entry_points=False, disabled=())
    r.add_plugin(builtin, "builtin", dist="rewardkit")
    previous = _reg.set_registry(r)
    yield r
    _reg.set_registry(previous)


def _trl_extras(n: int) -> dict:
    """What GRPOTrainer passes besides prompts, completions and the dataset's columns."""
    return {"completion_ids": [[1, 2, 3] for _ in range(n)],
            "trainer_state": SimpleNamespace(global_step=0, max_steps=10, epoch=0.0),
            "log_extra": lambda column, values: None, "log_metric": lambda name, value: None}


def _call(fn, prompts, completions, columns, what: str):
    try:
        return fn(prompts=prompts, completions=completions, **columns)
    except Exception as exc:  # noqa: BLE001 - turned into a test failure that says what happened
        raise AssertionError(f"reward {_name(fn)} raised {type(exc).__name__}: {exc} ({what})") from exc


def _name(fn) -> str:
    return repr(getattr(fn, "__name__", None) or type(fn).__name__)


def _checked(values, n: int, fn, what: str) -> list:
    try:
        return check_rewards(values, n, _name(fn).strip("'"), "the reward under test")
    except RewardError as exc:
        raise AssertionError(f"{exc} ({what})") from None


def check_reward(fn: Callable, prompts: list | None = None, completions: list | None = None, *,
                 conversational: bool = False, deterministic: bool = True, **columns: list) -> list:
    """Check that ``fn`` keeps the reward contract; return its values for the sample batch.

    ``prompts``/``completions`` default to a small batch of four; pass the dataset columns your reward reads
    as keyword arguments (one list per column, aligned with the completions). With ``conversational=True``
    prompts and completions are sent as chat messages. ``deterministic=False`` skips comparing the values of
    the unpickled copy with the original's.
    """
    if inspect.isclass(fn):
        raise AssertionError(f"check_reward got the class {fn.__name__}; pass a reward function, e.g. "
                             f"check_reward({fn.__name__}(...))")
    if not callable(fn):
        raise AssertionError(f"check_reward got {type(fn).__name__}, not a callable reward")
    if not is_reward_function(fn):
        raise AssertionError(f"reward {_name(fn)} has no 'completions' parameter; a reward is called as "
                             f"fn(prompts=..., completions=..., **columns)")
    prompts = list(prompts if prompts is not None else PROMPTS)
    completions = list(completions if completions is not None else COMPLETIONS[:len(prompts)])
    n = len(completions)
    if len(prompts) != n:
        raise AssertionError(f"{len(prompts)} prompts for {n} completions")
    for col, values in columns.items():
        if not isinstance(values, (list, tuple)) or len(values) != n:
            raise AssertionError(f"column '{col}' must be a list of {n} values (one per completion)")
    if conversational:
        prompts = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
        completions = [[{"role": "assistant", "content": c}] if isinstance(c, str) else c for c in completions]
    columns = {k: list(v) for k, v in columns.items()}

    values = _checked(_call(fn, prompts, completions, columns, "called with your columns only"), n, fn,
                      "called with your columns only")

    extras = {**columns, "rewardkit_unused_column": [f"x{i}" for i in range(n)], **_trl_extras(n)}
    try:
        with_extras = fn(prompts=prompts, completions=completions, **extras)
    except TypeError as exc:
        raise AssertionError(f"reward {_name(fn)} rejects arguments it does not use ({exc}); TRL passes every "
                             f"dataset column and completion_ids, trainer_state, log_extra, log_metric: add "
                             f"**kwargs to its signature") from None
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"reward {_name(fn)} raised {type(exc).__name__}: {exc} when given an extra "
                             f"column and TRL's arguments") from exc
    _checked(with_extras, n, fn, "called with an extra column and TRL's arguments")

    one = {k: [v[0]] for k, v in columns.items()}
    _checked(_call(fn, prompts[:1], completions[:1], one, "on a batch of one"), 1, fn, "on a batch of one")

    try:
        copy = pickle.loads(pickle.dumps(fn))
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"reward {_name(fn)} cannot be pickled ({type(exc).__name__}: {exc}); "
                             f"multi-process training and worker pools need picklable rewards: open "
                             f"pools, sockets or models lazily on first call, not in __init__") from None
    again = _checked(_call(copy, prompts, completions, columns, "unpickled copy"), n, fn, "unpickled copy")
    if deterministic and again != values:
        raise AssertionError(f"reward {_name(fn)}: the unpickled copy returns {again}, the original {values}; "
                             f"pass deterministic=False if the reward is random by design")
    return values

