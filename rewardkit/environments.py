"""Environments and tools: multi-turn episodes in which the model calls tools, on TRL 1.16's tool loop.

A recipe stage of a ``grpo`` or ``grpo_is`` trainer may give the model tools in two ways::

    environment: {name: python, params: {timeout: 2}, max_output_chars: 1000}   # a registered environment
    tools: ["my_package.tools:lookup"]                                          # plain functions

``environment`` names something registered through ``register_environments`` (rewardkit.hookspecs); rewardkit
hands TRL ``GRPOTrainer(environment_factory=...)`` a zero-argument factory of it (one instance per concurrent
rollout, ``reset(**row)`` before each). ``tools`` are ``"module:function"`` strings handed to ``GRPOTrainer(tools=
...)``. Either way TRL runs the episode: generate, parse tool calls with the tokenizer's ``response_template``, call
the tools, append their results as ``tool`` messages, generate again, until a turn calls no tool or a limit is hit.

**Limits per episode** (defaults stated here, validated before any model loads):

- tool-calling turns: the trainer field ``max_tool_calling_iterations`` (TRL's default, None, is unbounded: an
  episode whose every turn calls a tool would never stop); rewardkit sets :data:`DEFAULT_MAX_TOOL_CALLS` when a
  stage has tools and the field is unset, and accepts 1 to :data:`MAX_TOOL_CALLS_LIMIT`.
- tokens: the trainer field ``max_completion_length`` bounds the whole episode, the model's turns and the tool
  results together (TRL drops a tool result that would cross it and ends the episode there).
- tool output: ``environment.max_output_chars`` (default :data:`DEFAULT_MAX_OUTPUT_CHARS`) per tool result; longer
  results are cut, with a note the model reads.

**What an episode provides** (:class:`Environment`, the base class a plugin's environment should derive from; any
class with ``reset`` works with TRL, but only a subclass gets the guarantees below):

- ``reset(**row)`` starts an episode (the dataset row's columns as keyword arguments).
- public methods are tools: typed arguments, a return type and a Google-style docstring with ``Args:``, from which
  transformers builds the JSON schema (``validate`` checks each with transformers' own schema builder).
- an exception a tool raises is the *model's* fault (its program crashed, it passed a bad argument): TRL shows
  ``{'error': ...}`` to the model as the tool's result, and the episode goes on.
- :class:`EnvironmentFault` is the *environment's* fault (its sandbox could not start, a worker died): the base
  class records it in ``episode.fault`` and never lets it reach the model. It returns a result longer than the
  episode's token budget, which TRL's loop removes again (rolled back) and ends the episode on; every reward of
  the stage then raises for that rollout (:class:`FaultAwareReward`), so the recipe's fault policy
  (``reward_faults``: fail stops the run, skip leaves it unjudged and counted) decides, never a wrong-answer score.
- counters for the monitor and transcripts: ``tool_calls``, ``tool_errors``, ``fault``, ``transcript``.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
from typing import Any, Callable

DEFAULT_MAX_TOOL_CALLS = 4  # tool-calling turns per episode when the trainer section does not say
MAX_TOOL_CALLS_LIMIT = 64
DEFAULT_MAX_OUTPUT_CHARS = 1000  # characters of one tool result the model reads
TRAINERS = ("grpo", "grpo_is")  # the stages whose rollouts run TRL's tool loop
ENVIRONMENT_KEYS = {
    "name": (str, "a registered environment (rewardkit plugins)"),
    "params": (dict, "arguments of the environment's factory, bound to its signature"),
    "max_output_chars": (int, f"characters of one tool result the model reads (default {DEFAULT_MAX_OUTPUT_CHARS})"),
}
_NOT_TOOLS = ("reset", "get_reward")
_CUT_NOTE = "\n[tool output cut at {n} characters]"


class EnvironmentFault(Exception):
    """A fault of the environment itself (a sandbox that cannot start, a dead worker), not of what the model
    asked it to do. Raised by a tool of an :class:`Environment`; never shown to the model (module docstring)."""


# --------------------------------------------------------------------------- the episode object
def tool_names(cls: type) -> list[str]:
    """The methods of ``cls`` TRL offers as tools: public functions other than reset and get_reward."""
    return [n for n, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
            if not n.startswith("_") and n not in _NOT_TOOLS]


def rollback_text(episode_tokens: int) -> str:
    """A tool result longer than ``episode_tokens`` tokens under any tokenizer (one short line per token at least),
    so TRL's tool loop rolls it back and ends the episode instead of showing it."""
    return "\n".join(f"#{i}" for i in range(4 * max(1, episode_tokens) + 16))


def _record(env, entry: dict) -> None:
    env.__dict__.setdefault("transcript", []).append(entry)


def _guard_tool(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def tool(self, *args, **kwargs):
        kwargs = {**inspect.signature(fn).bind_partial(self, *args).arguments, **kwargs}
        kwargs.pop(next(iter(inspect.signature(fn).parameters)), None)  # self
        if self.fault is not None:  # the episode is already unjudged; nothing more runs
            return rollback_text(self.episode_tokens)
        self.tool_calls += 1
        try:
            out = fn(self, **kwargs)
        except EnvironmentFault as exc:
            self.fault = f"{type(self).__name__}.{fn.__name__}: {exc}"
            _record(self, {"tool": fn.__name__, "arguments": kwargs, "fault": str(exc)})
            return rollback_text(self.episode_tokens)
        except Exception as exc:  # the model's fault: TRL shows it as the tool's error text
            self.tool_errors += 1
            _record(self, {"tool": fn.__name__, "arguments": kwargs, "error": f"{exc}"})
            raise
        text = out if isinstance(out, str) else str(out)
        limit = self.max_output_chars
        if len(text) > limit:
            text = text[:limit] + _CUT_NOTE.format(n=limit)
        _record(self, {"tool": fn.__name__, "arguments": kwargs, "result": text})
        return text

    return tool


def _guard_reset(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def reset(self, **row):
        self.fault, self.tool_calls, self.tool_errors, self.transcript = None, 0, 0, []
        return fn(self, **row)

    return reset


class Environment:
    """Base class of a rewardkit environment (module docstring: the contract). Subclasses define ``reset`` and
    tool methods; the base wraps them (on subclass creation) with the fault guard, the output cut and counters."""

    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    episode_tokens: int = 256  # the stage's max_completion_length, set by EpisodeFactory
    # per episode (reset clears them; class defaults for a subclass whose __init__ skips super().__init__())
    fault: str | None = None
    tool_calls: int = 0
    tool_errors: int = 0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in tool_names(cls):
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_rewardkit_guarded", False):
                wrapped = _guard_tool(fn)
                wrapped._rewardkit_guarded = True
                setattr(cls, name, wrapped)
        if "reset" in cls.__dict__:
            setattr(cls, "reset", _guard_reset(cls.__dict__["reset"]))

    def __init__(self):
        self.fault: str | None = None
        self.tool_calls = 0
        self.tool_errors = 0
        self.transcript: list[dict] = []

    def reset(self, **row) -> str | None:
        """Start an episode on dataset row ``row``; a returned string is appended to the prompt."""
        return None


Environment.reset = _guard_reset(Environment.reset)


class EpisodeFactory:
    """What TRL's ``environment_factory`` gets: the registry's zero-argument factory, plus the stage's limits set
    on each :class:`Environment` it builds (token budget for the fault rollback, tool output cut)."""

    def __init__(self, factory: Callable, episode_tokens: int, max_output_chars: int | None):
        self.factory, self.episode_tokens, self.max_output_chars = factory, episode_tokens, max_output_chars

    def __call__(self):
        env = self.factory()
        if isinstance(env, Environment):
            env.episode_tokens = self.episode_tokens
            if self.max_output_chars is not None:
                env.max_output_chars = self.max_output_chars
        return env


class FaultAwareReward:
    """A reward function that raises :class:`EnvironmentFault` for the rollouts whose environment had a fault, so
    that ``CheckedReward`` (which re-runs a raising batch sample by sample) applies the fault policy to exactly
    those rollouts; the others are scored by ``fn`` as usual. An episode that ends on a tool result (TRL drops a
    final turn cut to nothing) is scored with an empty final answer appended: what a tool returned is never read
    as the model's answer (a reward reads the last message)."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, prompts=None, completions=None, environments=None, **kwargs):
        for env in environments or []:
            fault = getattr(env, "fault", None)
            if fault:
                raise EnvironmentFault(f"the environment failed in this episode (unjudged): {fault}")
        completions = [c + [{"role": "assistant", "content": ""}] if _ends_on_tool(c) else c for c in completions]
        return self.fn(prompts=prompts, completions=completions, environments=environments, **kwargs)

    def __getattr__(self, name):  # probe_gold, extract_answer, score_range, ... of the wrapped reward
        if name == "fn":
            raise AttributeError(name)
        return getattr(self.fn, name)


def _ends_on_tool(completion) -> bool:
    return isinstance(completion, list) and bool(completion) and isinstance(completion[-1], dict) \
        and completion[-1].get("role") == "tool"


def guard_rewards(rewards: list) -> list:
    """Wrap each built reward (a ``CheckedReward``: its inner function) so environment faults reach the fault
    policy instead of being scored."""
    for reward in rewards:
        if hasattr(reward, "fn") and not isinstance(reward.fn, FaultAwareReward):
            reward.fn = FaultAwareReward(reward.fn)
    return rewards


# --------------------------------------------------------------------------- validation (before any model loads)
def tool_problems(fn: Callable, what: str) -> list[str]:
    """Why transformers cannot build ``fn``'s tool schema (missing type hints, no docstring, no ``Args:``), or why
    rewardkit cannot run it (an ``async def`` tool: the episode guard and the evaluation loop call tools
    synchronously, so the model would read a coroutine object instead of a result)."""
    from transformers.utils import get_json_schema  # noqa: PLC0415

    if inspect.iscoroutinefunction(inspect.unwrap(getattr(fn, "__func__", fn))):
        return [f"{what}: is an async def function; rewardkit runs tools synchronously (the environment guard and "
                f"evaluation episodes call them directly), so define it with plain def"]

    try:
        get_json_schema(fn)
    except Exception as exc:  # noqa: BLE001 - DocstringParsingException, TypeHintParsingException, ...
        return [f"{what}: {exc} (a tool needs type hints on every argument and its return value and a Google-style "
                f"docstring with an Args: section; transformers builds the schema the model reads from them)"]
    return []


def _method_problems(cls: type, where: str) -> list[str]:
    """Each tool method of environment class ``cls``, checked as TRL will see it (bound to an instance)."""
    import types  # noqa: PLC0415

    problems = []
    for name in tool_names(cls):
        bound = types.MethodType(getattr(cls, name), object.__new__(cls))
        problems += tool_problems(bound, f"{where}: tool {cls.__name__}.{name}")
    return problems


def _environment_problems(block: Any, registry, where: str) -> tuple[list[str], int | None]:
    """Problems of the ``environment`` block; and how many tools its class offers (None: unknown)."""
    if not isinstance(block, dict):
        return [f"{where}: expected a mapping {{name, params}}, got {type(block).__name__}"], None
    problems = []
    for key in block:
        if key not in ENVIRONMENT_KEYS:
            close = difflib.get_close_matches(str(key), list(ENVIRONMENT_KEYS), n=1, cutoff=0.6)
            problems.append(f"{where}.{key}: unknown key{f' (did you mean {close[0]!r}?)' if close else ''}; "
                            f"keys are {', '.join(ENVIRONMENT_KEYS)}")
    name, params, cut = block.get("name"), block.get("params") or {}, block.get("max_output_chars")
    if not isinstance(name, str) or not name:
        return problems + [f"{where}.name: missing (a registered environment; `rewardkit plugins` lists them)"], None
    if not isinstance(params, dict):
        return problems + [f"{where}.params: expected a mapping, got {type(params).__name__}"], None
    if cut is not None and (isinstance(cut, bool) or not isinstance(cut, int) or cut < 1):
        problems.append(f"{where}.max_output_chars: must be an integer of at least 1, got {cut!r}")
    found = registry.environment_problems(name, params)
    problems += [f"{where}: {p}" for p in found]
    if found:
        return problems, None
    factory = registry.load("environments", name)
    if not inspect.isclass(factory):
        return problems, None
    return problems + _method_problems(factory, where), len(tool_names(factory))


def load_tool(target: str) -> Callable:
    """A plain tool named ``"module:function"``; PluginError naming it when it cannot be imported."""
    from rewardkit.errors import PluginError  # noqa: PLC0415
    from rewardkit.registry import import_target  # noqa: PLC0415

    if not isinstance(target, str) or ":" not in target:
        raise PluginError(f"expected 'module:function', got {target!r}")
    try:
        fn = import_target(target)
    except Exception as exc:  # noqa: BLE001
        raise PluginError(f"cannot import {target!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(fn):
        raise PluginError(f"{target!r} is a {type(fn).__name__}, not a function")
    return fn


def _tools_problems(tools: Any, where: str) -> list[str]:
    from rewardkit.errors import PluginError  # noqa: PLC0415

    if not isinstance(tools, list):
        return [f"{where}: expected a list of 'module:function' strings, got {type(tools).__name__}"]
    problems = []
    for i, target in enumerate(tools):
        try:
            fn = load_tool(target)
        except PluginError as exc:
            problems.append(f"{where}[{i}]: {exc}")
            continue
        problems += tool_problems(fn, f"{where}[{i}] {target}")
    return problems


def _limit_problems(args: dict, where: str) -> list[str]:
    if "max_tool_calling_iterations" in args and args["max_tool_calling_iterations"] is None:
        return [f"{where}.max_tool_calling_iterations: null leaves tool-calling turns unbounded (an episode that calls "
                f"a tool every turn would only stop at max_completion_length); give 1 to {MAX_TOOL_CALLS_LIMIT} or "
                f"leave it out ({DEFAULT_MAX_TOOL_CALLS})"]
    calls = args.get("max_tool_calling_iterations")
    if isinstance(calls, int) and not 1 <= calls <= MAX_TOOL_CALLS_LIMIT:
        return [f"{where}.max_tool_calling_iterations: tool-calling turns per episode must be between 1 and "
                f"{MAX_TOOL_CALLS_LIMIT}, got {calls} (unset: {DEFAULT_MAX_TOOL_CALLS})"]
    return []


def stage_problems(spec, registry, where: str, model_dir: str | None = None) -> list[str]:
    """Everything wrong with a stage's ``environment``/``tools`` (``where`` prefixes locations: ``stages.x.`` or
    empty); ``model_dir``, when the stage's tokenizer is already on disk, is checked for tool support."""
    if not spec.environment and not spec.tools:
        return []
    problems = []
    if spec.trainer_type not in TRAINERS:
        why = (" (its critic and GAE run over every completion token, and the tool results inside an episode "
               "are not the policy's actions: the value targets would be wrong)" if spec.trainer_type == "ppo" else
               " (only RL stages whose rollouts run TRL's tool loop do)")
        problems.append(f"{where}environment: trainer '{spec.trainer_type}' cannot run tool-calling episodes{why}; "
                        f"use one of {', '.join(TRAINERS)}")
    n_tools: int | None = 0  # None: unknown (an environment that could not be loaded is reported already)
    if spec.environment:
        env_problems, n_tools = _environment_problems(spec.environment, registry, f"{where}environment")
        problems += env_problems
    if spec.tools:
        problems += _tools_problems(spec.tools, f"{where}tools")
        if n_tools is not None and isinstance(spec.tools, list):
            n_tools += len(spec.tools)
    if n_tools == 0:
        problems.append(f"{where}environment: offers the model no tool (no public method besides reset and "
                        f"get_reward, and no tools:)")
    problems += _limit_problems(spec.trainer_args, f"{where}trainer")
    if model_dir is not None:
        problems += template_problems(model_dir, f"{where}model")
    return problems


def template_problems(model_dir: str, where: str) -> list[str]:
    """The tokenizer in ``model_dir`` can render a tool-calling conversation and parse a tool call back (a
    ``response_template``, or a chat template TRL knows the parser of)."""
    import copy  # noqa: PLC0415

    from transformers import AutoTokenizer  # noqa: PLC0415
    from trl.chat_template_utils import add_response_schema, supports_tool_calling  # noqa: PLC0415

    try:
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception:  # noqa: BLE001 - not on disk yet: TRL checks it when the trainer is built
        return []
    if not supports_tool_calling(tok):
        return [f"{where}: the chat template of {model_dir} cannot render a tool-calling conversation (user -> "
                f"assistant with tool_calls -> tool); use a tool-calling model (e.g. tiny-llama-tools)"]
    if getattr(tok, "response_template", None) is None and getattr(tok, "response_schema", None) is None:
        try:
            add_response_schema(copy.deepcopy(tok))
        except ValueError:
            return [f"{where}: the tokenizer of {model_dir} has no response_template and TRL knows no parser for "
                    f"its chat template, so tool calls could not be read from completions"]
    return []


def model_dir(name: str | None, registry, recipe=None) -> str | None:
    """Where the stage model's tokenizer already is, without building or downloading anything (None: unknown)."""
    from rewardkit import models  # noqa: PLC0415

    if not name:
        return None
    if name in registry.names("models"):
        path = models.cached_path(name, registry)
    elif recipe is not None:
        path = recipe.resolve_path(name)
    else:
        path = name
    return path if os.path.isdir(path) else None


# --------------------------------------------------------------------------- what the trainer gets
def config_defaults(spec) -> dict:
    """Trainer config values rewardkit sets for a stage with tools unless its trainer section does."""
    if (spec.environment or spec.tools) and "max_tool_calling_iterations" not in spec.trainer_args:
        return {"max_tool_calling_iterations": DEFAULT_MAX_TOOL_CALLS}
    return {}


def trainer_kwargs(ctx) -> dict:
    """``tools=`` and ``environment_factory=`` of TRL's GRPOTrainer for the stage in ``ctx`` (empty without);
    the stage's rewards are made fault-aware (:func:`guard_rewards`)."""
    spec = ctx.spec
    if not spec.environment and not spec.tools:
        return {}
    out = {}
    if spec.tools:
        out["tools"] = [load_tool(t) for t in spec.tools]
    if spec.environment:
        out["environment_factory"] = episode_factory(spec, ctx.registry, episode_tokens(spec))
    guard_rewards(ctx.rewards)
    return out


def episode_tokens(spec) -> int:
    """Tokens one training episode of ``spec`` may use: its ``max_completion_length`` (TRL's default when unset)."""
    from trl import GRPOConfig  # noqa: PLC0415

    return spec.trainer_args.get("max_completion_length",
                                 GRPOConfig.__dataclass_fields__["max_completion_length"].default)


def evaluation_stage(recipe):
    """The stage whose environment held-out evaluation and early stopping play episodes in: the first with an
    ``environment``; None when no stage has one (single-turn evaluation)."""
    return next((s for s in recipe.stages if getattr(s, "environment", None)), None)


def tool_call_limit(spec) -> int:
    """Tool-calling turns per episode of ``spec`` (validation refuses an explicit null; unset: the default)."""
    return spec.trainer_args.get("max_tool_calling_iterations") or DEFAULT_MAX_TOOL_CALLS


def episode_factory(spec, registry, tokens: int) -> EpisodeFactory:
    """The :class:`EpisodeFactory` of ``spec``'s environment with a budget of ``tokens`` per episode (training, the
    probe and held-out evaluation all build it here)."""
    block = spec.environment
    factory = registry.build_environment(block["name"], block.get("params") or {})
    return EpisodeFactory(factory, tokens, block.get("max_output_chars"))
