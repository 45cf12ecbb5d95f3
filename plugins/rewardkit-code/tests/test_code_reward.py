"""Extraction, verdicts, params, the bundled problems and the plugin registration."""

from __future__ import annotations

import json
import struct

import pytest

from rewardkit import completion_text
from rewardkit_code.extract import extract_code
from rewardkit_code.problems import load_problems, read_problems
from rewardkit_code.reward import CodeTests
from rewardkit_code.sandbox import Pool, SandboxConfig, SandboxUnavailable, host_problems
from rewardkit_code.verdict import Case, classify, decode_result, parse_tests, same_value

SANDBOX = host_problems("full")
needs_sandbox = pytest.mark.skipif(bool(SANDBOX), reason="SANDBOX UNAVAILABLE: " + "; ".join(SANDBOX))


# ---------------------------------------------------------------- extraction
def test_extract_last_python_block_ignores_other_languages():
    text = "a\n```python\nprint(1)\n```\n```bash\nrm -rf /\n```\n```py\nprint(2)\n```\n"
    assert extract_code(text) == "print(2)\n"
    assert extract_code(text, block="first") == "print(1)\n"
    assert extract_code(text, block="all") == "print(1)\n\nprint(2)\n"


def test_extract_unfenced_truncated_and_required():
    assert extract_code("print(3)") == "print(3)"
    assert extract_code("print(3)", require_fence=True) is None
    assert extract_code("text\n```python\nx = 1\nprint(x)") == "x = 1\nprint(x)\n"  # cut by max length
    assert extract_code("```bash\nls\n```") is None  # only another language's block
    assert extract_code("   ") is None
    with pytest.raises(ValueError, match="block"):
        extract_code("x", block="middle")


def test_completion_text_conversational():
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    assert completion_text("hi") == "hi"


# ---------------------------------------------------------------- verdicts (no sandbox needed)
def _frame(obj) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">Q", len(body)) + body


def _reply(**kw):
    base = {"setup_ok": True, "killed": None, "exit": 0, "signal": None, "stdout": b"", "stderr": "",
            "result": b"", "oom": False}
    base.update(kw)
    return base


def test_classify_stdio_and_calls():
    io_case = Case(stdin="1 2\n", stdout="3\n")
    assert classify(io_case, _reply(stdout=b"3  \n\n"))[0] == "passed"
    assert classify(io_case, _reply(stdout=b"4\n"))[0] == "wrong_answer"
    assert classify(io_case, _reply(stdout=b"3\n", exit=1))[0] == "runtime_error"  # crashed after output
    assert classify(io_case, _reply(stdout=b"3\n", killed="timeout", signal=9))[0] == "timeout"
    assert classify(io_case, _reply(signal=9, oom=True))[0] == "memory_limit"
    assert classify(io_case, _reply(killed="output_limit"))[0] == "output_limit"
    assert classify(io_case, _reply(setup_ok=False))[0] == "sandbox_error"
    assert classify(io_case, {"sandbox_error": "x"})[0] == "sandbox_error"
    call = Case(call="f()", expected=[1, 2.0])
    assert classify(call, _reply(result=_frame({"value": [1, 2.0000000001]})))[0] == "passed"
    assert classify(call, _reply(result=_frame({"value": [1, 2]}) * 2))[0] == "wrong_answer"  # two frames
    assert classify(call, _reply(result=b""))[0] == "wrong_answer"
    assert classify(call, _reply(result=_frame({"value": [1, 2], "passed": True})))[0] == "wrong_answer"


def test_same_value_is_strict_about_types():
    assert not same_value(True, 1) and not same_value(1, True)
    assert same_value(2, 2.0) and not same_value("2", 2)
    assert not same_value({"a": 1}, {"a": 1, "b": 2}) and same_value([1, [2]], (1, (2,)))
    assert not same_value(None, 0)
    assert decode_result(b"\x00" * 3)[0] is False


def test_parse_tests_errors_name_the_problem():
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_tests("{")
    with pytest.raises(ValueError, match="neither 'stdout' nor 'call'"):
        parse_tests([{"input": "x"}])
    with pytest.raises(ValueError, match="'expected'"):
        parse_tests([{"call": "f()"}])


# ---------------------------------------------------------------- params
@pytest.mark.parametrize("params,name", [({"mode": "some"}, "mode"), ({"timeout": -1}, "timeout"),
                                         ({"memory_mb": "lots"}, "memory_mb"), ({"isolation": "none"}, "isolation"),
                                         ({"language": "rust"}, "language"), ({"workers": 0}, "workers"),
                                         ({"compare": "fuzzy"}, "compare"), ({"block": 2}, "block")])
def test_bad_params_name_the_param(params, name):
    with pytest.raises(ValueError, match=f"'{name}'"):
        CodeTests(**params)


def test_factory_is_cheap_and_missing_column_is_clear():
    reward = CodeTests()  # no pool, no process started
    with pytest.raises(ValueError, match="'tests'"):
        reward(prompts=["p"], completions=["print(1)"], answer=["x"])


def test_refuses_without_isolation(monkeypatch):
    monkeypatch.setattr("rewardkit_code.sandbox.host_problems", lambda iso: ["no bwrap here"])
    with pytest.raises(SandboxUnavailable, match="no bwrap here"):
        Pool(SandboxConfig(), 1)


# ---------------------------------------------------------------- the plugin as rewardkit sees it
def test_registered_with_rewardkit():
    from rewardkit.registry import Registry

    reg = Registry()
    assert "code.tests" in reg.names("rewards") and "code.problems" in reg.names("datasets")
    assert reg.reward_columns("code.tests", {"tests_column": "cases"}) == ["cases"]
    assert "did you mean 'timeout'" in reg.reward_problems("code.tests", {"timeot": 1})[0]


def test_problems_dataset_deterministic_split():
    a, b = load_problems(test_size=0.25, seed=1), load_problems(test_size=0.25, seed=1)
    assert a["test"]["id"] == b["test"]["id"] and len(a["train"]) + len(a["test"]) == len(read_problems())
    assert set(a["train"].column_names) == {"id", "style", "question", "tests"}
    assert len(load_problems(style="call", test_size=2)["test"]) == 2
    with pytest.raises(ValueError, match="'style'"):
        load_problems(style="java")
    with pytest.raises(ValueError, match="'test_size'"):
        load_problems(test_size=100)


# ---------------------------------------------------------------- end to end through the sandbox
@needs_sandbox
def test_reference_solutions_pass_and_wrong_ones_fail():
    problems = read_problems()
    assert len(problems) >= 24 and {p["style"] for p in problems} == {"stdio", "call"}
    reward = CodeTests(timeout=2, workers=2)
    logged = {}
    tests = [json.dumps(p["tests"]) for p in problems]
    good = reward(prompts=[""] * len(problems), completions=[f"```python\n{p['solution']}```" for p in problems],
                  tests=tests, log_metric=lambda k, v: logged.__setitem__(k, v))
    assert good == [1.0] * len(problems), [d for d, g in zip(reward.last_details, good) if g != 1.0]
    assert logged["code_tests/passed"] == sum(len(p["tests"]) for p in problems)
    assert logged["code_tests/sandbox_error"] == 0
    bad = reward(prompts=[""] * len(problems), completions=[[{"role": "assistant", "content": "print(0)"}]]
                 * len(problems), tests=tests)
    assert all(score < 1.0 for score in bad)


@needs_sandbox
def test_all_mode_and_total_timeout():
    tests = json.dumps([{"stdin": "", "stdout": "1\n"}] * 4)
    slow = "import time\ntime.sleep(0.4)\nprint(1)"
    frac = CodeTests(mode="fraction", timeout=1, total_timeout=1.0, workers=1)
    score = frac(prompts=[""], completions=[slow], tests=[tests])[0]
    assert 0.0 < score < 1.0 and "timeout" in {c for c, _ in frac.last_details[0]}
    every = CodeTests(mode="all", timeout=1, workers=1)
    assert every(prompts=[""], completions=["print(1)"], tests=[tests]) == [1.0]
    half = json.dumps([{"stdin": "", "stdout": "1\n"}, {"stdin": "", "stdout": "2\n"}, {"stdin": "", "stdout": "1\n"}])
    assert every(prompts=[""], completions=["print(1)"], tests=[half]) == [0.0]
    assert len(every.last_details[0]) == 2  # stopped at the first failure


@needs_sandbox
def test_sandbox_failure_is_none_not_zero():
    import threading
    import time

    from rewardkit_code.sandbox import shared_pool

    reward = CodeTests(timeout=2, workers=1)
    one = [json.dumps([{"stdout": "1\n"}])]
    assert reward(prompts=[""], completions=["print(1)"], tests=one) == [1.0]
    slot = shared_pool(reward.config, reward.workers).slots()[0]
    # The machinery dies while the program runs: that sample cannot be judged (None), it is not wrong (0).
    killer = threading.Timer(0.3, slot.proc.kill)
    killer.start()
    t0 = time.monotonic()
    out = reward(prompts=[""], completions=["import time\ntime.sleep(1.5)\nprint(1)"], tests=one)
    killer.join()
    assert out == [None], reward.last_details
    assert reward.last_details[0][0][0] == "sandbox_error" and time.monotonic() - t0 < 1.5
    assert reward(prompts=[""], completions=["print(1)"], tests=one) == [1.0], reward.last_details  # fresh slot


@pytest.mark.skipif(bool(host_problems("weak")), reason="SANDBOX UNAVAILABLE (weak)")
def test_weak_mode_is_explicit_and_still_judges():
    reward = CodeTests(timeout=1, workers=1, isolation="weak")
    tests = [json.dumps([{"stdin": "2 3\n", "stdout": "5\n"}])]
    assert reward(prompts=[""], completions=["a, b = map(int, input().split())\nprint(a + b)"], tests=tests) == [1.0]
    assert reward(prompts=[""], completions=["x = bytearray(1 << 33)"], tests=tests) == [0.0]
    assert reward.last_details[0][0][0] == "memory_limit"
