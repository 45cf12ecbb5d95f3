"""The plugin registry: a typed facade between recipes/trainers and pluggy.

Trainers never touch ``pm.hook``: they ask a :class:`Registry` for a component by kind and name, and rewards
are resolved into plain TRL reward functions before any trainer is built.

Discovery (lazy, once per registry):

- entry-point group ``rewardkit``: each entry point names a module/object with ``@hookimpl`` functions
  (see :mod:`rewardkit.hookspecs`). The module is imported to learn what it registers.
- entry-point group ``rewardkit.rewards``: each entry point *is* a reward (entry-point name = reward name);
  it is not imported until a recipe uses it.

``REWARDKIT_DISABLE_PLUGINS=a,b`` skips plugins whose entry-point name or distribution name is listed
(``*`` skips every third-party plugin and keeps rewardkit's built-ins).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable

import pluggy

from rewardkit import hookspecs, values
from rewardkit.errors import PluginError
from rewardkit.reward_checks import AsyncCheckedReward, CheckedReward, FaultPolicy

KINDS = ("rewards", "kl_estimators", "trainers", "datasets", "models", "environments")
HOOKS = {kind: f"register_{kind}" for kind in KINDS}
HOOK_GROUP = "rewardkit"
REWARD_GROUP = "rewardkit.rewards"
BUILTIN_DIST = "rewardkit"
DISABLE_ENV = "REWARDKIT_DISABLE_PLUGINS"
# Keyword arguments TRL passes to every reward function that are not dataset columns.
TRL_REWARD_EXTRAS = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
                     "environments"}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def import_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


@dataclass
class Component:
    """One registered thing: a reward, KL estimator, trainer, dataset, model or environment, and who provided it."""

    kind: str
    name: str
    target: Any  # the object, or a "module:attribute" string imported on first use
    plugin: str  # entry-point (plugin) name
    dist: str  # distribution that provides it
    version: str
    description: str | None = None
    columns: Any = None
    _obj: Any = field(default=None, repr=False)

    @property
    def provider(self) -> str:
        return f"plugin '{self.plugin}' ({self.dist} {self.version})"

    def load(self) -> Any:
        """Import (once) and return the registered object; a failure names the plugin at fault."""
        if self._obj is None:
            if isinstance(self.target, str):
                try:
                    self._obj = import_target(self.target)
                except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's fault
                    raise PluginError(
                        f"{self.kind[:-1]} '{self.name}' from {self.provider} could not be imported from "
                        f"'{self.target}': {type(exc).__name__}: {exc}"
                    ) from exc
            else:
                self._obj = self.target
        return self._obj


@dataclass
class PluginInfo:
    """What ``rewardkit plugins`` shows for one entry point."""

    name: str
    group: str
    dist: str
    version: str
    value: str
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    disabled: bool = False

    def as_dict(self) -> dict:
        return {"name": self.name, "group": self.group, "distribution": self.dist, "version": self.version,
                "value": self.value, "registered": self.registered, "error": self.error,
                "disabled": self.disabled}


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


class Registry:
    """Collects components from entry points (and from explicitly added plugins, for tests).

    ``Registry()`` discovers installed plugins on first use; ``Registry(entry_points=False)`` starts empty
    except for what you add with :meth:`add_plugin` / :meth:`add` (fixtures do this).
    """

    def __init__(self, *, entry_points: bool = True, disabled: Iterable[str] | None = None):
        self._use_entry_points = entry_points
        if disabled is None:
            disabled = [d for d in os.environ.get(DISABLE_ENV, "").split(",") if d.strip()]
        self._disabled = {_norm(d.strip()) for d in disabled}
        self._loaded = False
        self._components: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
        self._plugins: list[PluginInfo] = []
        self._conflicts: dict[tuple[str, str], list[Component]] = {}
        self._pending: list[tuple[Any, PluginInfo]] = []

    # ------------------------------------------------------------------ discovery
    def _is_disabled(self, ep_name: str, dist: str) -> bool:
        if not self._disabled:
            return False
        if "*" in self._disabled and dist != BUILTIN_DIST:
            return True
        return _norm(ep_name) in self._disabled or _norm(dist) in self._disabled

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._use_entry_points:
            for group in (HOOK_GROUP, REWARD_GROUP):
                for ep in sorted(metadata.entry_points(group=group), key=lambda e: (e.dist.name if e.dist else "", e.name)):
                    self._load_entry_point(ep, group)
        for plugin, info in self._pending:
            self._register_hooks(plugin, info)
        self._pending.clear()

    def _load_entry_point(self, ep: metadata.EntryPoint, group: str) -> None:
        dist = ep.dist.name if ep.dist else "<unknown>"
        version = ep.dist.version if ep.dist else "?"
        info = PluginInfo(ep.name, group, dist, version, ep.value)
        self._plugins.append(info)
        if self._is_disabled(ep.name, dist):
            info.disabled = True
            return
        if group == REWARD_GROUP:
            # The short road: the entry point is the reward. Not imported until used.
            self._add(Component("rewards", ep.name, ep.value, ep.name, dist, version), info)
            return
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - shown by `rewardkit plugins`, raised when needed
            info.error = f"{type(exc).__name__}: {exc}"
            info.traceback = traceback.format_exc()
            return
        self._register_hooks(plugin, info)

    def _register_hooks(self, plugin: Any, info: PluginInfo) -> None:
        pm = pluggy.PluginManager("rewardkit")
        pm.add_hookspecs(hookspecs)
        try:
            pm.register(plugin, name=info.name)
            pm.check_pending()  # a misspelt hook name fails loudly instead of being ignored
        except Exception as exc:  # noqa: BLE001
            info.error = f"{type(exc).__name__}: {exc}"
            return
        for kind, hook_name in HOOKS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                def register(name, obj, *, columns=None, description=None, _kind=kind):
                    if not isinstance(name, str) or not _NAME_RE.match(name):
                        raise PluginError(f"invalid {_kind[:-1]} name {name!r}")
                    if obj is None or not (callable(obj) or isinstance(obj, str)):
                        raise PluginError(f"{_kind[:-1]} '{name}' must be callable or a 'module:attr' string")
                    self._add(Component(_kind, name, obj, info.name, info.dist, info.version, description,
                                        columns), info)
                try:
                    impl.function(*[{"register": register}[a] for a in impl.argnames])
                except Exception as exc:  # noqa: BLE001
                    info.error = f"{hook_name} failed: {type(exc).__name__}: {exc}"

    def _add(self, comp: Component, info: PluginInfo) -> None:
        info.registered.setdefault(comp.kind, []).append(comp.name)
        existing = self._components[comp.kind].get(comp.name)
        if existing is None:
            self._components[comp.kind][comp.name] = comp
        else:
            self._conflicts.setdefault((comp.kind, comp.name), [existing]).append(comp)

    # ------------------------------------------------------------------ explicit registration (tests, fixtures)
    def add_plugin(self, plugin: Any, name: str | None = None, *, dist: str = "<local>",
                   version: str = "0") -> PluginInfo:
        """Register a hook module/object directly, as if an installed distribution declared it."""
        name = name or getattr(plugin, "__name__", type(plugin).__name__)
        info = PluginInfo(name, HOOK_GROUP, dist, version, repr(plugin))
        self._plugins.append(info)
        if self._loaded:
            self._register_hooks(plugin, info)
        else:
            self._pending.append((plugin, info))
        return info

    def add(self, kind: str, name: str, obj: Any, *, columns=None, description=None, plugin: str = "<local>",
            dist: str = "<local>") -> None:
        """Register one component directly (tests and scripts)."""
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; kinds are {KINDS}")
        info = PluginInfo(plugin, HOOK_GROUP, dist, "0", repr(obj))
        self._plugins.append(info)
        self._add(Component(kind, name, obj, plugin, dist, "0", description, columns), info)

    # ------------------------------------------------------------------ queries
    def plugins(self) -> list[PluginInfo]:
        self._ensure_loaded()
        return list(self._plugins)

    def names(self, kind: str) -> list[str]:
        self._ensure_loaded()
        return sorted(self._components[kind])

    def conflicts(self) -> list[str]:
        """One message per name registered more than once, naming every provider."""
        self._ensure_loaded()
        return [f"{kind[:-1]} '{name}' is registered by " + " and by ".join(c.provider for c in comps)
                + f"; uninstall one or disable it with {DISABLE_ENV}"
                for (kind, name), comps in self._conflicts.items()]

    def broken(self) -> list[PluginInfo]:
        self._ensure_loaded()
        return [p for p in self._plugins if p.error]

    def unknown_message(self, kind: str, name: str) -> str:
        """'reward 'x' is not registered' with did-you-mean, what is installed, and broken/disabled plugins."""
        known = self.names(kind)
        msg = f"unknown {kind[:-1]} '{name}'"
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        if close:
            msg += f" (did you mean {', '.join(repr(c) for c in close)}?)"
        msg += f"; installed: {', '.join(known) if known else 'none'}"
        for p in self.broken():
            msg += f"; plugin '{p.name}' ({p.dist}) failed to load: {p.error}"
        disabled = [p.name for p in self._plugins if p.disabled]
        if disabled:
            msg += f"; disabled by {DISABLE_ENV}: {', '.join(disabled)}"
        return msg

    def get(self, kind: str, name: str) -> Component:
        """The component registered under ``name``; PluginError if missing or registered twice."""
        self._ensure_loaded()
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; kinds are {KINDS}")
        if (kind, name) in self._conflicts:
            comps = self._conflicts[(kind, name)]
            raise PluginError(f"{kind[:-1]} '{name}' is registered by "
                              + " and by ".join(c.provider for c in comps)
                              + f"; uninstall one or disable it with {DISABLE_ENV}")
        comp = self._components[kind].get(name)
        if comp is None:
            raise PluginError(self.unknown_message(kind, name))
        return comp

    def load(self, kind: str, name: str) -> Any:
        return self.get(kind, name).load()

    # ------------------------------------------------------------------ rewards
    def reward_problems(self, name: str, params: dict) -> list[str]:
        """Everything wrong with using reward ``name`` with ``params``, without calling the factory."""
        obj = self.load("rewards", name)
        comp = self.get("rewards", name)
        if is_reward_function(obj):
            if params:
                return [f"reward '{name}' from {comp.provider} is a reward function and takes no params "
                        f"(got {', '.join(sorted(params))})"]
            return []
        return bind_problems(obj, params, f"reward '{name}' from {comp.provider}")

    def reward_columns(self, name: str, params: dict) -> list[str]:
        """Dataset columns reward ``name`` needs with these params."""
        comp = self.get("rewards", name)
        cols = comp.columns
        if isinstance(cols, str):
            cols = import_target(cols)
        if callable(cols):
            return list(cols(dict(params)))
        if cols is not None:
            return list(cols)
        obj = comp.load()
        if is_reward_function(obj):
            return required_columns(obj)
        return list(getattr(obj, "columns", []) or [])

    def build_reward(self, name: str, params: dict | None = None, alias: str | None = None,
                     faults: "FaultPolicy | dict | None" = None) -> Callable:
        """Resolve a recipe reward block into a plain TRL reward function named ``alias or name``.

        The returned callable checks the reward's output (length, numbers, no NaN) and applies the fault
        policy ``faults`` (a recipe's ``reward_faults``; default: fail): a fault raises :class:`RewardError`
        naming the reward, its distribution and the sample, or under ``skip`` becomes ``None`` and is counted.
        """
        params = dict(params or {})
        problems = self.reward_problems(name, params)
        if problems:
            raise PluginError(problems[0])
        comp = self.get("rewards", name)
        obj = comp.load()
        if is_reward_function(obj):
            fn = obj
        else:
            try:
                fn = obj(**params)
            except Exception as exc:
                raise PluginError(f"reward '{name}' from {comp.provider} failed to build with params "
                                  f"{params}: {type(exc).__name__}: {exc}") from exc
            if not callable(fn):
                raise PluginError(f"reward factory '{name}' from {comp.provider} returned "
                                  f"{type(fn).__name__}, not a reward function")
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))
        cls = AsyncCheckedReward if is_async else CheckedReward
        return cls(fn, alias or name, comp.provider, faults)

    # ------------------------------------------------------------------ KL estimators
    def kl_estimator(self, name: str) -> Callable:
        return self.load("kl_estimators", name)

    # ------------------------------------------------------------------ environments
    def environment_problems(self, name: str, params: dict) -> list[str]:
        """Everything wrong with using environment ``name`` with ``params``, without building one: not registered
        (did-you-mean), not importable, params that do not bind to the factory's signature or do not fit its
        annotations, a class without ``reset``."""
        try:
            comp = self.get("environments", name)
            factory = comp.load()
        except PluginError as exc:
            return [str(exc)]
        what = f"environment '{name}' from {comp.provider}"
        problems = bind_problems(factory, params, what)
        types = values.signature_types(factory)
        for key, value in params.items():
            bad = values.problem(value, types[key]) if key in types else None
            if bad:
                problems.append(f"{what}: param '{key}': {bad}")
        if inspect.isclass(factory) and not has_method(factory, "reset"):
            problems.append(f"{what}: class {factory.__name__} has no reset method; TRL's environment_factory "
                            f"needs reset(**row) -> str | None")
        return problems

    def build_environment(self, name: str, params: dict | None = None) -> EnvironmentFactory:
        """A zero-argument factory of environment ``name`` with ``params`` bound, for TRL's ``environment_factory``;
        PluginError listing every problem :meth:`environment_problems` finds."""
        params = dict(params or {})
        problems = self.environment_problems(name, params)
        if problems:
            raise PluginError("; ".join(problems))
        comp = self.get("environments", name)
        return EnvironmentFactory(comp.load(), params, name, comp.provider)


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry of installed plugins (discovered on first use)."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def set_registry(registry: Registry | None) -> Registry | None:
    """Swap the process-wide registry (tests); returns the previous one."""
    global _default
    previous, _default = _default, registry
    return previous
