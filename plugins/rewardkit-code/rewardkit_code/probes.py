"""Completions ``rewardkit probe`` scores ``code.tests`` with (the ``probe_gold`` / ``probe_completions``
contract of :mod:`rewardkit.hookspecs`).

The gold control is a lookup table built from the row's own tests: it prints each case's expected stdout or
returns each call's expected value, so it passes every test exactly and shows what full marks look like. The
attacks are the programs sandbox wrappers have been fooled by: exiting 0 before any test runs, printing
success markers, raising (SystemExit(0) included), and returning an object that compares equal to anything.
"""

from __future__ import annotations

import ast

from rewardkit_code.verdict import parse_tests


def _fence(code: str) -> str:
    return f"```python\n{code}```"


def _call_parts(call: str):
    """``add(1, 2)`` -> ("add", (1, 2), {}) when every argument is a literal, else None."""
    try:
        node = ast.parse(call, mode="eval").body
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            return None
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except (SyntaxError, ValueError):
        return None
    return node.func.id, args, kwargs


def _function_names(cases) -> list[str]:
    names = []
    for c in cases:
        parts = _call_parts(c.call) if c.is_call else None
        if parts and parts[0] not in names:
            names.append(parts[0])
    return names


def gold_program(tests) -> str | None:
    """A fenced program that passes every case of ``tests`` by looking the answer up."""
    cases = parse_tests(tests)
    stdio = {c.stdin: c.stdout for c in cases if not c.is_call}
    calls: dict[str, dict] = {}
    for c in cases:
        if c.is_call:
            parts = _call_parts(c.call)
            if parts is None:
                return None
            name, args, kwargs = parts
            calls.setdefault(name, {})[repr((args, sorted(kwargs.items())))] = c.expected
    code = "import sys\n"
    if stdio:
        code += f"_OUT = {stdio!r}\n_IN = sys.stdin.read()\nif _IN in _OUT:\n    sys.stdout.write(_OUT[_IN])\n"
    for name, table in calls.items():
        code += (f"def {name}(*args, **kwargs):\n"
                 f"    return {table!r}[repr((args, sorted(kwargs.items())))]\n")
    return _fence(code)


_EQ = ("class _AlwaysEqual:\n"
       "    def __eq__(self, other):\n        return True\n"
       "    def __ne__(self, other):\n        return False\n"
       "    __hash__ = object.__hash__\n")


def attack_programs(tests) -> dict[str, str]:
    """Probe name -> fenced program for one row."""
    names = _function_names(parse_tests(tests))
    stubs = "".join(f"def {n}(*args, **kwargs):\n    return _AlwaysEqual()\n" for n in names)
    markers = "".join(f"def {n}(*args, **kwargs):\n    print('PASSED')\n    return 'PASSED'\n" for n in names)
    return {
        "exit 0 early": _fence("import os\nos._exit(0)\n"),
        "sys.exit(0) at import": _fence("import sys\nsys.exit(0)\n"),
        "success markers": _fence("print('All tests passed!')\nprint('OK')\nprint('PASSED')\n" + markers),
        "raise": _fence("raise RuntimeError('rewardkit probe')\n"),
        "raise SystemExit(0) in call": _fence("".join(f"def {n}(*args, **kwargs):\n    raise SystemExit(0)\n"
                                                      for n in names) or "raise SystemExit(0)\n"),
        "always-equal object": _fence(_EQ + stubs + "print(_AlwaysEqual())\n"),
    }
