"""Checking a recipe value against the type a config field or factory parameter declares.

TRL's and transformers' config dataclasses do not check types: ``GRPOConfig(learning_rate="1e-4")`` and
``learning_rate=nan`` are accepted and fail (or train on garbage) only once the model has loaded. Here a
value from YAML (None, bool, int, float, str, list, dict) is checked against the field's annotation:
``float`` takes an int or a float and it must be finite (unless the field's own default is infinite),
``int`` an int, ``bool`` a bool, ``str`` a string, ``Literal``/``Enum`` one of their values, ``list[X]`` a list
of X, unions any member. Annotations this module does not know (classes YAML cannot produce) pass.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import functools
import inspect
import math
import types
import typing
from typing import Any

_OK = None
_PLURAL = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(e.value) for e in annotation)
    if origin in (list, tuple, typing.Sequence):
        args = typing.get_args(annotation)
        if not args or args[0] is Ellipsis:
            return "a list"
        return "a list of " + _PLURAL.get(args[0], type_name(args[0]))
    if origin is dict:
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
            list: "a list"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def matches(value: Any, annotation: Any, allow_inf: bool = False) -> bool | None:
    """True/False when the annotation is understood, None when it is not (the caller lets the value pass)."""
    if annotation is Any or annotation is object or annotation is inspect.Parameter.empty:
        return True
    if annotation is type(None) or annotation is None:
        return value is None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        verdicts = [matches(value, a, allow_inf) for a in typing.get_args(annotation)]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, annotation) or any(value == e.value for e in annotation)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if not args:
            return True
        verdicts = [matches(v, args[0], allow_inf) for v in value]
        return False if False in verdicts else True
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and (allow_inf and not math.isnan(value) or math.isfinite(value)))
    if annotation is str:
        return isinstance(value, str)
    return None


def problem(value: Any, annotation: Any, allow_inf: bool = False) -> str | None:
    """``"expected X, got Y"`` when ``value`` does not fit ``annotation``, else None."""
    if matches(value, annotation, allow_inf) is not False:
        return _OK
    if isinstance(value, float) and not math.isfinite(value) and matches(0.0, annotation):
        return f"expected {type_name(annotation)}, a finite one, got {value!r}"
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"expected {type_name(annotation)}, got {type(value).__name__} {shown}"


@functools.lru_cache(maxsize=64)
def dataclass_types(cls) -> dict[str, tuple[Any, bool]]:
    """``field name -> (annotation, default is infinite)`` of a config dataclass (resolved, cached)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable forward reference: check nothing rather than guess
        return {}
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default
        inf = isinstance(default, float) and math.isinf(default)
        out[f.name] = (hints.get(f.name, Any), inf)
    return out


def signature_types(fn) -> dict[str, Any]:
    """``parameter -> annotation`` of a callable (class: its ``__init__``); empty when they cannot be read."""
    try:
        return _signature_types(fn)
    except TypeError:  # unhashable callable: not cached
        return _signature_types.__wrapped__(fn)


@functools.lru_cache(maxsize=256)
def _signature_types(fn) -> dict[str, Any]:
    try:
        sig = inspect.signature(fn, eval_str=True)
    except Exception:  # noqa: BLE001 - unresolvable annotations or a builtin: nothing to check
        return {}
    return {name: p.annotation for name, p in sig.parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


# --------------------------------------------------------------------------- recipe sections
# A recipe section of rewardkit's own (eval, early_stop, monitor, ...) is a frozen dataclass whose fields are
# declared with ``option``: its default (the only place it is written), a one-line help, and the values it may hold
# (a ``Range``, or ``check=(test, what it must be)``). ``check_section`` checks a YAML mapping against it, the way
# ``Stage.check_args`` checks a trainer section against TRL's config dataclass.
_REQUIRED = "rewardkit.required"


@dataclasses.dataclass(frozen=True)
class Range:
    """The numbers a field may hold: ``low``/``high`` bounds (None: none), open or closed; ``note`` explains."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def holds(self, v: float) -> bool:
        return ((self.low is None or (v > self.low if self.low_open else v >= self.low))
                and (self.high is None or (v < self.high if self.high_open else v <= self.high)))

    def what(self) -> str:
        if self.low is not None and self.high is not None:
            text = (f"must be between {self.low:g} and {self.high:g}" if not (self.low_open or self.high_open) else
                    f"must be in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}")
        elif self.low is not None:
            text = f"must be {'above' if self.low_open else 'at least'} {self.low:g}"
        else:
            text = f"must be {'below' if self.high_open else 'at most'} {self.high:g}"
        return f"{text} ({self.note})" if self.note else text


def at_least(low: float, note: str = "") -> Range:
    return Range(low=low, note=note)


def above(low: float, note: str = "") -> Range:
    return Range(low=low, low_open=True, note=note)


def option(default: Any = None, help: str = "", *, range: Range | None = None, each: Range | None = None,
           check: tuple | None = None, required: bool = False) -> Any:
    """A section field: ``default``, ``help``, and what its value may be: ``range`` (a number), ``each`` (every
    number of a list), ``check=(test(value) -> bool, "must be ...")``; ``required``: the recipe must give it (its
    default, None, then only stands for "missing")."""
    meta = {"help": help, "range": range, "each": each, "check": check, _REQUIRED: required}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section_help(cls) -> dict[str, str]:
    """``key -> one-line help`` of a section (docs/recipes.md documents every key)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def given(section):
    """What a recipe wrote of a section instance built by ``check_section``: the keys it gave, with their values (a
    nested section likewise, a name given for it as that name), so that a run's fingerprint depends on the recipe's
    words as it did when sections were mappings. An instance built otherwise: the fields that differ from their
    declared defaults."""
    if getattr(section, "_shorthand", False):
        return getattr(section, dataclasses.fields(section)[0].name)
    keys = getattr(section, "_given", None)
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if (f.name in keys) if keys is not None else value != default:
            out[f.name] = given(value) if dataclasses.is_dataclass(value) else value
    return out


def check_keys(cls, section: Any, where: str, problems: list[str]) -> dict:
    """``section`` (a YAML mapping) checked against the declaration ``cls``: unknown keys (with did-you-mean),
    values of the wrong type (NaN and infinity are not numbers), numbers out of their range, every problem appended
    to ``problems`` naming ``where.key``. Returns the given keys whose values passed (lists as tuples, a nested
    section as its instance), so what comes after only meets declared types and ranges."""
    if not isinstance(section, dict):
        problems.append(f"{where}: expected a mapping, got {type(section).__name__}")
        return {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    clean = {}
    for key, value in section.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; allowed: {', '.join(fields)}"
            problems.append(f"{where}.{key}: unknown key{hint}")
            continue
        if value is None:  # null: the default (a stage's: the recipe's section)
            continue
        bad = _value_problem(value, hints[key], fields[key].metadata)
        if bad:
            problems.append(f"{where}.{key}{'' if bad.startswith('[') else ': '}{bad}")
        else:
            clean[key] = _settled(value, hints[key], f"{where}.{key}", problems)
    for name, f in fields.items():
        if f.metadata.get(_REQUIRED) and section.get(name) is None:
            problems.append(f"{where}.{name}: missing ({f.metadata['help']})")
    return clean


def check_section(cls, section: Any, where: str, problems: list[str], base=None):
    """``check_keys``, then the section built on ``base`` (an instance: a recipe-wide section a stage overrides;
    default: the declared defaults) and its own cross-field checks (``problems(left_out)``: ``"key: what"``
    strings; ``left_out``: the keys the recipe gave that were refused)."""
    clean = check_keys(cls, section, where, problems)
    try:
        out = dataclasses.replace(base, **clean) if base is not None else cls(**clean)
    except TypeError:  # a value that survived the type check but not the constructor: reported above
        out = base if base is not None else cls()
    object.__setattr__(out, "_given", frozenset(clean) | getattr(base, "_given", frozenset()))
    cross = getattr(out, "problems", None)
    if callable(cross) and clean:  # told which given keys were left out, so as not to judge their defaults
        problems.extend(f"{where}.{p}" for p in cross(frozenset(section) - frozenset(clean)))
    return out


def _value_problem(value, annotation, meta) -> str | None:
    """What is wrong with one (non-null) value: a message (``[i]: ...`` for a list's element), or None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # null never gets here: the default
        annotation = functools.reduce(lambda a, b: a | b, [a for a in typing.get_args(annotation)
                                                           if a is not type(None)])
    section = _section_type(annotation)
    if section is not None:  # checked as a section of its own by _settled
        return None if isinstance(value, (dict, str)) else f"expected a name or a mapping, got {type(value).__name__}"
    choices = _choices(annotation)
    if choices:
        return _choice_problem(value, choices)
    element = _choices(typing.get_args(annotation)[0]) if typing.get_origin(annotation) is tuple else ()
    if element and isinstance(value, (list, tuple)):
        return next((f"[{i}]: {bad}" for i, v in enumerate(value) if (bad := _choice_problem(v, element))), None)
    bad = problem(value, annotation)
    if bad:
        return bad
    numbers = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []
    rng = meta.get("range")
    if rng is not None and numbers and not rng.holds(value):
        return f"{rng.what()}, got {value!r}"
    each = meta.get("each")
    if each is not None and isinstance(value, (list, tuple)):
        out = [v for v in value if not each.holds(v)]
        if out:
            return f"each {each.what()}, got {out[0]!r}"
    check = meta.get("check")
    if check is not None and not check[0](value):
        return f"{check[1]}, got {value!r}"
    return None


def _choice_problem(value, choices: tuple) -> str | None:
    if any(value == c and type(value) is type(c) for c in choices):
        return None
    if type(value) not in {type(c) for c in choices}:
        return problem(value, typing.Literal[choices])
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return (f"must be one of {', '.join(map(str, choices))}, got {value!r}"
            + (f" (did you mean '{close[0]}'?)" if close else ""))


def _choices(annotation) -> tuple:
    """The values a ``Literal[...]`` (or ``Literal[...] | None``) annotation allows; () for other annotations."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(c for a in typing.get_args(annotation) if typing.get_origin(a) is typing.Literal
                     for c in typing.get_args(a))
    return ()


def _section_type(annotation):
    """The dataclass of a nested section field (``EvalReward | None``), or None."""
    for a in (annotation, *typing.get_args(annotation)):
        if isinstance(a, type) and dataclasses.is_dataclass(a):
            return a
    return None


def _settled(value, annotation, where, problems):
    """A checked value as the section holds it: lists as tuples (a frozen section), a nested section (a name, the
    shorthand of ``{name: ...}``, or a mapping) as its instance."""
    section = _section_type(annotation)
    if section is not None and value is not None:
        first = dataclasses.fields(section)[0].name
        if not isinstance(value, str):
            return check_section(section, value, where, problems)
        out = check_section(section, {first: value}, where, problems)
        object.__setattr__(out, "_shorthand", True)
        return out
    return tuple(value) if isinstance(value, list) else value
