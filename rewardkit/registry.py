"""The plugin registry: a typed facade between recipes/trainers and pluggy.

Trainers never touch ``pm.hook``: they ask a :class:`Registry` for a component by kind and name, and rewards
are resolved into plain TRL reward functions before any trainer is built.

One ``pluggy.PluginManager`` per registry holds every plugin. Discovery (lazy, once per registry):

- entry-point group ``rewardkit``: each entry point names a module/object with ``@hookimpl`` functions
  (see :mod:`rewardkit.hookspecs`), registered under the entry point's name with its distribution recorded.
- entry-point group ``rewardkit.rewards``: each entry point *is* a reward (entry-point name = reward name),
  registered as a small :class:`RewardEntryPoint` plugin; its target is not imported until a recipe uses it.

Then ``check_pending`` refuses hooks no spec knows, and each plugin's ``register_<kind>(register=...)`` hooks
run. Every failure (an import, a misspelt or mis-signed hook, each hook that raises, a plugin name two
distributions claim) is kept on the plugin's :class:`PluginInfo`: ``rewardkit plugins`` shows them all, and a
recipe that needs something the plugin would have provided is told which plugin failed and why.

``REWARDKIT_DISABLE_PLUGINS=a,b`` blocks (``pm.set_blocked``) plugins whose entry-point name or distribution
name is listed (``*`` blocks every third-party plugin and keeps rewardkit's built-ins).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import traceback
import types
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable

import pluggy

from rewardkit import hookimpl, hookspecs, values
from rewardkit.errors import PluginError
from rewardkit.factories import (EnvironmentFactory, bind_problems, has_method, is_reward_function,
                                 required_columns)
from rewardkit.reward_checks import AsyncCheckedReward, CheckedReward, FaultPolicy

KINDS = ("rewards", "kl_estimators", "trainers", "datasets", "models", "environments")
HOOKS = {kind: f"register_{kind}" for kind in KINDS}
HOOK_GROUP = "rewardkit"
REWARD_GROUP = "rewardkit.rewards"
BUILTIN_DIST = "rewardkit"
DISABLE_ENV = "REWARDKIT_DISABLE_PLUGINS"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def provider(plugin: str, dist: str, version: str) -> str:
    return f"plugin '{plugin}' ({dist} {version})"


def registered_twice(what: str, providers: Iterable[str]) -> str:
    """The one message for a name two providers claim (a component, or a plugin name)."""
    return (f"{what} is registered by " + " and by ".join(providers)
            + f"; uninstall one or disable it with {DISABLE_ENV}")


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
        return provider(self.plugin, self.dist, self.version)

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
    """What ``rewardkit plugins`` shows for one plugin: an entry point, or a plugin added by a test."""

    name: str
    group: str
    dist: str
    version: str
    value: str
    registered: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # every failure: import, hook validation, each failing hook
    traceback: str | None = None  # of the import failure, where there was one
    disabled: bool = False
    key: str = ""  # its name in the registry's PluginManager (blocking and registration go by it)

    @property
    def error(self) -> str | None:
        return "; ".join(self.errors) or None

    @property
    def provider(self) -> str:
        return provider(self.name, self.dist, self.version)

    def as_dict(self) -> dict:
        return {"name": self.name, "group": self.group, "distribution": self.dist, "version": self.version,
                "value": self.value, "registered": self.registered, "errors": self.errors, "error": self.error,
                "disabled": self.disabled}


class RewardEntryPoint:
    """A ``rewardkit.rewards`` entry point as a plugin: it registers one reward, named and imported (on first
    use) as the entry point says, so those rewards take the same road as every other component."""

    def __init__(self, ep: metadata.EntryPoint):
        self.ep = ep

    @hookimpl
    def register_rewards(self, register):
        register(self.ep.name, self.ep.value)

    def __repr__(self) -> str:
        return f"<{REWARD_GROUP} entry point {self.ep.name} = {self.ep.value}>"


def hashable(plugin: Any, name: str) -> Any:
    """``plugin``, or, where it cannot be hashed (a ``SimpleNamespace``: pluggy keeps plugins in sets), a module
    holding the same attributes."""
    try:
        hash(plugin)
        return plugin
    except TypeError:
        try:
            attrs = vars(plugin)
        except TypeError:
            raise TypeError(f"plugin object {plugin!r} cannot be hashed; use a module, a class or an "
                            f"instance") from None
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


class Registry:
    """Collects components from plugins through one pluggy ``PluginManager``.

    ``Registry()`` discovers installed plugins on first use; ``Registry(entry_points=False)`` starts empty
    except for what you add with :meth:`add_plugin` / :meth:`add` (fixtures do this). ``disabled`` (default: the
    ``REWARDKIT_DISABLE_PLUGINS`` list) names entry points or distributions to block; ``*`` blocks every plugin
    not shipped in rewardkit's own distribution.
    """

    def __init__(self, *, entry_points: bool = True, disabled: Iterable[str] | None = None):
        self._use_entry_points = entry_points
        if disabled is None:
            disabled = [d for d in os.environ.get(DISABLE_ENV, "").split(",") if d.strip()]
        self._disabled = {_norm(d.strip()) for d in disabled}
        self._pm = pluggy.PluginManager(HOOK_GROUP)
        self._pm.add_hookspecs(hookspecs)
        self._loaded = False
        self._components: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
        self._plugins: list[PluginInfo] = []
        self._conflicts: dict[tuple[str, str], list[Component]] = {}
        self._pending: list[tuple[Any, PluginInfo]] = []
        self._holders: dict[str, PluginInfo] = {}  # plugin manager name -> the plugin registered under it

    # ------------------------------------------------------------------ discovery
    def _block_if_disabled(self, info: PluginInfo) -> bool:
        """Block ``info`` in the plugin manager when the disabled list names it, its entry point or its
        distribution (``*``: every distribution but rewardkit's); True when it is blocked."""
        named = _norm(info.name) in self._disabled or _norm(info.dist) in self._disabled
        if named or ("*" in self._disabled and info.dist != BUILTIN_DIST):
            self._pm.set_blocked(info.key)
        info.disabled = self._pm.is_blocked(info.key)
        return info.disabled

    def _ensure_loaded(self) -> None:
        """Load every plugin once: installed entry points first (sorted by distribution), then added ones."""
        if self._loaded:
            return
        self._loaded = True
        batch = []
        if self._use_entry_points:
            eps = [ep for group in (HOOK_GROUP, REWARD_GROUP) for ep in metadata.entry_points(group=group)]
            for ep in sorted(eps, key=lambda e: (e.group != HOOK_GROUP, e.dist.name if e.dist else "", e.name)):
                batch.append(self._load_entry_point(ep))
        batch += self._pending
        self._pending.clear()
        self._register([(plugin, info) for plugin, info in batch if plugin is not None])

    def _load_entry_point(self, ep: metadata.EntryPoint) -> tuple[Any, PluginInfo]:
        """What ``pm.load_setuptools_entrypoints`` does for one entry point, except that a plugin that fails to
        import is recorded and the others still load (pluggy's stops at the first), a second distribution using
        the same plugin name is an error naming both (pluggy's skips it silently), and a ``rewardkit.rewards``
        entry point becomes a :class:`RewardEntryPoint` without importing its target."""
        dist = ep.dist.name if ep.dist else "<unknown>"
        info = PluginInfo(ep.name, ep.group, dist, ep.dist.version if ep.dist else "?", ep.value,
                          key=ep.name if ep.group == HOOK_GROUP else f"{REWARD_GROUP}:{dist}:{ep.name}")
        self._plugins.append(info)
        if self._block_if_disabled(info):
            return None, info
        if ep.group == REWARD_GROUP:
            return RewardEntryPoint(ep), info
        try:
            return ep.load(), info
        except Exception as exc:  # noqa: BLE001 - shown by `rewardkit plugins`, raised when needed
            info.errors.append(f"{type(exc).__name__}: {exc}")
            info.traceback = traceback.format_exc()
            return None, info

    def _register(self, batch: list[tuple[Any, PluginInfo]]) -> None:
        """Register each plugin with the plugin manager, refuse misspelt hooks (``check_pending``), then call the
        hooks of the plugins that remain."""
        registered = []
        for plugin, info in batch:
            if self._block_if_disabled(info):
                continue
            if self._pm.has_plugin(info.key):
                holder = self._holders[info.key]
                info.errors.append(registered_twice(f"plugin name '{info.name}'", (holder.provider, info.provider)))
                continue
            if self._pm.get_name(plugin) is not None:
                info.errors.append(f"{info.value} is already registered as "
                                   f"{self._holders[self._pm.get_name(plugin)].provider}")
                continue
            try:
                plugin = hashable(plugin, info.key)
                self._pm.register(plugin, name=info.key)
            except (TypeError, pluggy.PluginValidationError) as exc:  # unhashable; a hook's arguments not in its spec
                info.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            self._holders[info.key] = info
            registered.append((plugin, info))
        self._unregister_misspelt()
        for plugin, info in registered:
            if self._pm.is_registered(plugin):
                self._call_hooks(plugin, info)

    def _unregister_misspelt(self) -> None:
        """``pm.check_pending()`` until it passes: each plugin with a hook no spec knows (a misspelt name) gets an
        error naming the hook, with did-you-mean, and is unregistered (none of its hooks is called)."""
        while True:
            try:
                self._pm.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                info = self._holders.pop(self._pm.get_name(exc.plugin))
                for hook in [c.name for c in self._pm.get_hookcallers(exc.plugin) or [] if not c.has_spec()]:
                    close = ([h for h in HOOKS.values() if h.startswith(hook) or hook.startswith(h)]
                             or difflib.get_close_matches(hook, HOOKS.values(), n=1))
                    hint = f" (did you mean '{close[0]}'?)" if close else f"; hooks are {', '.join(HOOKS.values())}"
                    info.errors.append(f"unknown hook '{hook}'{hint}")
                self._pm.unregister(exc.plugin)

    def _call_hooks(self, plugin: Any, info: PluginInfo) -> None:
        """Each ``register_<kind>(register=...)`` of this one plugin, through ``pm.subset_hook_caller`` (the hook
        with every other plugin left out): so what it registers is credited to it, and a hook that raises is
        recorded without stopping its other hooks or any other plugin's."""
        others = [p for p in self._pm.get_plugins() if p is not plugin]
        for kind, hook_name in HOOKS.items():
            hook = self._pm.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                hook(register=self._registrar(kind, info))
            except Exception as exc:  # noqa: BLE001 - the plugin's fault: recorded, shown, raised when needed
                info.errors.append(f"{hook_name} failed: {type(exc).__name__}: {exc}")

    def _registrar(self, kind: str, info: PluginInfo) -> Callable:
        """The ``register`` callable a plugin's ``register_<kind>`` hook receives (hookspecs.py documents it)."""

        def register(name, obj, *, columns=None, description=None):
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise PluginError(f"invalid {kind[:-1]} name {name!r}")
            if obj is None or not (callable(obj) or isinstance(obj, str)):
                raise PluginError(f"{kind[:-1]} '{name}' must be callable or a 'module:attr' string")
            self._add(Component(kind, name, obj, info.name, info.dist, info.version, description, columns), info)

        return register

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
        """Register a hook module/object directly, as if an installed distribution declared it (so the disabled
        list applies to it too)."""
        name = name or getattr(plugin, "__name__", type(plugin).__name__)
        info = PluginInfo(name, HOOK_GROUP, dist, version, repr(plugin), key=name)
        self._plugins.append(info)
        if self._block_if_disabled(info):
            return info
        if self._loaded:
            self._register([(plugin, info)])
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
        return [registered_twice(f"{kind[:-1]} '{name}'", (c.provider for c in comps))
                for (kind, name), comps in self._conflicts.items()]

    def broken(self) -> list[PluginInfo]:
        self._ensure_loaded()
        return [p for p in self._plugins if p.errors]

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
            raise PluginError(registered_twice(f"{kind[:-1]} '{name}'",
                                               (c.provider for c in self._conflicts[(kind, name)])))
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
        """Dataset columns reward ``name`` needs with these params.

        The plugin's ``columns=`` (a list, a callable ``columns(params)``, or a ``"module:attr"`` string naming
        either) is the plugin's code: any failure importing or calling it is a :class:`PluginError` naming the
        reward and its plugin."""
        comp = self.get("rewards", name)
        if comp.columns is None:
            obj = comp.load()
            if is_reward_function(obj):
                return required_columns(obj)
            return list(getattr(obj, "columns", []) or [])
        try:
            cols = import_target(comp.columns) if isinstance(comp.columns, str) else comp.columns
            cols = cols(dict(params)) if callable(cols) else cols
            return list(cols)
        except Exception as exc:  # noqa: BLE001 - whatever the plugin's columns target does is its fault
            target = comp.columns if isinstance(comp.columns, str) else getattr(
                comp.columns, "__qualname__", type(comp.columns).__name__)
            raise PluginError(f"reward '{name}' from {comp.provider}: its columns= target '{target}' failed "
                              f"with params {dict(params)}: {type(exc).__name__}: {exc}") from exc

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
        declared = values.signature_types(factory)
        for key, value in params.items():
            bad = values.problem(value, declared[key]) if key in declared else None
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
