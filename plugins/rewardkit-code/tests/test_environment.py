"""The ``python`` environment: its tool attacked by hostile programs (each bounded by its own deadline, so a
regression fails instead of freezing CI), and sandbox faults kept from the model."""

from __future__ import annotations

import concurrent.futures
import os

import pytest

from rewardkit.environments import EpisodeFactory, FaultAwareReward, guard_rewards, rollback_text
from rewardkit.reward_checks import CheckedReward
from rewardkit.errors import RewardError
from rewardkit_code import environment as envmod
from rewardkit_code.environment import PythonEnvironment, ProgramError
from rewardkit_code.sandbox import SandboxUnavailable, host_problems

PROBLEMS = host_problems("full")
needs_sandbox = pytest.mark.skipif(bool(PROBLEMS), reason="SANDBOX UNAVAILABLE, attacks NOT run: "
                                   + "; ".join(PROBLEMS))
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=1)


def call(env, code: str, deadline: float = 20.0):
    """env.python(code) with a deadline of its own: (result, None) or (None, exception)."""
    future = _EXECUTOR.submit(env.python, code=code)
    try:
        return future.result(timeout=deadline), None
    except concurrent.futures.TimeoutError:
        pytest.fail(f"the tool did not return within {deadline}s: {code[:60]!r}")
    except Exception as exc:  # noqa: BLE001 - what TRL would show the model
        return None, exc


@pytest.fixture(scope="module")
def env():
    e = EpisodeFactory(lambda: PythonEnvironment(timeout=1.0, memory_mb=128, max_processes=16, workers=1),
                       episode_tokens=64, max_output_chars=200)()
    e.reset(prompt="p")
    return e


@needs_sandbox
def test_a_program_runs_and_its_output_is_the_result(env):
    out, exc = call(env, "print(6 * 7)")
    assert exc is None and out == "42\n"


@needs_sandbox
@pytest.mark.parametrize("name, code, says", [
    ("exception", "raise ValueError('boom')", "ValueError: boom"),
    ("infinite_loop", "while True:\n    pass", "time limit"),
    ("sleep", "import time\ntime.sleep(100)", "time limit"),
    ("fork_bomb", "import os\nwhile True:\n    os.fork()", ""),
    ("memory", "x = bytearray(1 << 31)", "emory"),
    ("network", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)", "OSError"),
    ("read_outside", f"print(open({os.path.abspath(__file__)!r}).read())", "No such file"),
    ("read_host_secret", "print(open('/etc/shadow').read())", "No such file"),
])
def test_a_faulty_program_reaches_the_model_as_error_text(env, name, code, says):
    out, exc = call(env, code)
    assert out is None and isinstance(exc, ProgramError), (name, out)
    assert says in str(exc)
    assert env.fault is None  # the model's fault, not the environment's
    assert call(env, "print('still fine')")[0] == "still fine\n"  # the slot is reusable after every attack


@needs_sandbox
def test_huge_output_is_cut_to_what_the_model_reads(env):
    out, exc = call(env, "print('y' * 5000)")
    assert exc is None and out.startswith("y" * 200) and "cut at 200 characters" in out and len(out) < 300
    _, exc = call(env, "while True:\n    print('z' * 1000)")
    assert isinstance(exc, ProgramError) and "output limit" in str(exc)


def _unavailable(*_a, **_k):
    raise SandboxUnavailable("bubblewrap is not installed")


class _DeadPool:
    def run_program(self, cases, **_k):
        return [{"sandbox_error": "the sandbox exited"}]


@pytest.mark.parametrize("pool", [_unavailable, lambda *_a, **_k: _DeadPool()], ids=["no_bwrap", "dead_worker"])
def test_a_sandbox_fault_is_never_shown_to_the_model(monkeypatch, pool):
    monkeypatch.setattr(envmod, "shared_pool", pool)
    e = EpisodeFactory(PythonEnvironment, episode_tokens=32, max_output_chars=None)()
    e.reset(prompt="p")
    out = e.python(code="print(1)")  # no raise: TRL would show a raise to the model as {'error': ...}
    assert out == rollback_text(32) and "sandbox" not in out and out.count("\n") > 4 * 32  # longer than the budget
    assert e.fault and "sandbox" in e.fault
    e.reset(prompt="q")
    assert e.fault is None and e.tool_calls == 0  # the next episode starts clean


def test_an_unjudged_episode_goes_to_the_fault_policy_not_to_a_wrong_score(monkeypatch):
    monkeypatch.setattr(envmod, "shared_pool", _unavailable)
    ok, bad = PythonEnvironment(), PythonEnvironment()
    ok.reset(), bad.reset()
    bad.python(code="print(1)")
    score = lambda prompts, completions, **kw: [0.0 for _ in completions]  # noqa: E731 - would call it wrong
    skip = guard_rewards([CheckedReward(score, "r", "test", {"policy": "skip", "max_rate": 1.0,
                                                             "fail_fast_first_step": False})])[0]
    assert isinstance(skip.fn, FaultAwareReward)
    assert skip(prompts=["a", "b"], completions=["x", "y"], environments=[ok, bad]) == [0.0, None]
    assert skip.skipped == 1
    fail = guard_rewards([CheckedReward(score, "r", "test")])[0]
    with pytest.raises(RewardError, match="environment failed"):
        fail(prompts=["a", "b"], completions=["x", "y"], environments=[ok, bad])


def test_a_bad_param_names_the_python_environment_not_the_reward():
    with pytest.raises(ValueError, match=r"^python param 'timeout' must be between 0.01 and 60, got 0$"):
        PythonEnvironment(timeout=0)
    with pytest.raises(ValueError, match=r"^python param 'workers' must be an integer"):
        PythonEnvironment(workers=1.5)
