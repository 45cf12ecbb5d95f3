"""Test cases, and the verdict on one case, decided on the host from the sandbox's raw observations.

Nothing the program prints, returns as an exit code, or writes to the result channel is taken as a claim of
success. For stdin/stdout cases the captured bytes are compared with the expected output here. For call cases
the harness sends at most one length-prefixed JSON frame of *plain* values; the host decodes it and compares
it, with its own code, to the expected value, which never enters the sandbox.
"""

from __future__ import annotations

import json
import math
import signal
import struct
from dataclasses import dataclass
from typing import Any

CLASSES = ("passed", "wrong_answer", "runtime_error", "timeout", "memory_limit", "output_limit",
           "sandbox_error")
COMPARE_CHOICES = ("lines", "tokens", "exact")


@dataclass(frozen=True)
class Case:
    stdin: str | None = None
    stdout: str | None = None
    call: str | None = None
    expected: Any = None

    @property
    def is_call(self) -> bool:
        return self.call is not None


def parse_tests(raw) -> list[Case]:
    """The ``tests`` column: a JSON string or a list of dicts, each ``{"stdin", "stdout"}`` or
    ``{"call", "expected"}``. Raises ValueError naming what is wrong."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tests column is not valid JSON: {exc}") from None
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ValueError(f"tests must be a non-empty list of cases, got {type(raw).__name__}")
    cases = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict):
            raise ValueError(f"test case {i} must be an object, got {type(t).__name__}")
        if "call" in t:
            if not isinstance(t["call"], str) or "expected" not in t:
                raise ValueError(f"test case {i}: a call case needs a string 'call' and an 'expected' value")
            cases.append(Case(call=t["call"], expected=t["expected"], stdin=t.get("stdin")))
        elif "stdout" in t:
            if not isinstance(t["stdout"], str) or not isinstance(t.get("stdin", ""), str):
                raise ValueError(f"test case {i}: 'stdin' and 'stdout' must be strings")
            cases.append(Case(stdin=t.get("stdin", ""), stdout=t["stdout"]))
        else:
            raise ValueError(f"test case {i} has neither 'stdout' nor 'call' (keys: {sorted(t)})")
    return cases


def _norm_lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def same_output(got: bytes, expected: str, compare: str) -> bool:
    try:
        text = got.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if compare == "exact":
        return text == expected
    if compare == "tokens":
        return text.split() == expected.split()
    return _norm_lines(text) == _norm_lines(expected)


def same_value(got: Any, expected: Any, rel_tol: float = 1e-9, abs_tol: float = 1e-9) -> bool:
    """Structural equality on decoded JSON values. bool is not a number; int and float compare numerically
    (floats with tolerance); lists match lists (tuples arrive as lists)."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(got) is bool and type(expected) is bool and got is expected
    if expected is None:
        return got is None
    if isinstance(expected, (int, float)):
        if type(got) not in (int, float):
            return False
        if isinstance(expected, int) and isinstance(got, int):
            return got == expected
        g, e = float(got), float(expected)
        if math.isnan(e) or math.isnan(g):
            return math.isnan(e) and math.isnan(g)
        return math.isclose(g, e, rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(expected, str):
        return type(got) is str and got == expected
    if isinstance(expected, (list, tuple)):
        return (type(got) is list and len(got) == len(expected)
                and all(same_value(g, e, rel_tol, abs_tol) for g, e in zip(got, expected)))
    if isinstance(expected, dict):
        return (type(got) is dict and set(got) == set(expected)
                and all(same_value(got[k], expected[k], rel_tol, abs_tol) for k in expected))
    return False


def decode_result(raw: bytes) -> tuple[bool, Any, str]:
    """(ok, value, why) from the result channel: exactly one frame, valid JSON, a 'value' key."""
    if len(raw) < 8:
        return False, None, "no result (the call did not return normally)"
    (n,) = struct.unpack(">Q", raw[:8])
    if len(raw) != 8 + n:
        return False, None, "result channel tampered with (not exactly one frame)"
    try:
        obj = json.loads(raw[8:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False, None, "result is not valid JSON"
    if not isinstance(obj, dict) or set(obj) != {"value"}:
        if isinstance(obj, dict) and set(obj) == {"unsupported"}:
            return False, None, str(obj["unsupported"])[:200]
        return False, None, "result frame is malformed"
    return True, obj["value"], ""


def classify(case: Case, reply: dict, *, compare: str = "lines") -> tuple[str, str]:
    """(class, detail) for one case given the zygote's reply (see sandbox.Pool.run_program)."""
    if "sandbox_error" in reply:
        return "sandbox_error", reply["sandbox_error"]
    if "skipped" in reply:
        return "timeout", "total time limit reached before this case"
    if not reply.get("setup_ok"):  # confinement did not complete: the program never ran
        return "sandbox_error", "sandbox setup failed: " + reply.get("stderr", "")[-300:]
    killed = reply.get("killed")
    sig = reply.get("signal")
    stderr = reply.get("stderr", "")
    if killed == "timeout" or sig == signal.SIGXCPU:
        return "timeout", "time limit"
    if killed == "output_limit" or sig == signal.SIGXFSZ:
        return "output_limit", "output or file size limit"
    if reply.get("oom"):
        return "memory_limit", "killed by the memory cgroup"
    if sig is not None:
        return "runtime_error", f"killed by signal {sig}"
    if reply.get("exit") != 0:
        last = stderr.strip().splitlines()[-1:] or [""]
        if last[0].startswith("MemoryError"):
            return "memory_limit", "MemoryError"
        if "[Errno 27]" in last[0] or "[Errno 28]" in last[0]:  # EFBIG (RLIMIT_FSIZE), ENOSPC (tmpfs cap)
            return "output_limit", last[0][:200]
        return "runtime_error", f"exit status {reply.get('exit')}: {last[0][:200]}"
    if case.is_call:
        ok, value, why = decode_result(reply.get("result", b""))
        if not ok:
            return "wrong_answer", why
        if same_value(value, case.expected):
            return "passed", ""
        return "wrong_answer", f"returned {json.dumps(value)[:100]}"
    if same_output(reply.get("stdout", b""), case.stdout, compare):
        return "passed", ""
    return "wrong_answer", "output differs"
