"""Checking a recipe value against the type a config field or factory parameter declares.

TRL's and transformers' config dataclasses do not check types: ``GRPOConfig(learning_rate="1e-4")`` and
``learning_rate=nan`` are accepted and fail (or train on garbage) only once the model has loaded. Here a
value from YAML (None, bool, int, float, str, list, dict) is checked against the field's annotation:
``float`` takes an int or a float and it must be finite (unless the field's own default is infinite),
``int`` an int, ``bool`` a bool, ``str`` a string, ``Literal``/``Enum`` one of their values, ``list[X]`` a list
of X, unions any member. Annotations this module does not know (classes YAML cannot produce) pass.
"""

from __future__ import annotations

import dataclasses
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
    if isinstance(value, float) and not math.isfinite(value):
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
