"""rewardkit.testing: check_reward catches each broken contract; the pytest plugin provides the fixtures."""

import os
import random
import subprocess
import sys
import threading

import pytest

from rewardkit.testing import check_reward


def good(prompts, completions, answer, **kwargs):
    return [1.0 if c == a else (None if a is None else 0.0) for c, a in zip(completions, answer)]


class Pooled:
    """Opens its 'pool' lazily: pickles before first use and after."""

    def __init__(self):
        self.pool = None

    def __call__(self, prompts, completions, **kwargs):
        if self.pool is None:
            self.pool = "opened"
        return [float(len(c)) for c in completions]

    def __getstate__(self):
        return {"pool": None}


class HoldsALock:
    def __init__(self):
        self.lock = threading.Lock()  # a pool/socket opened in __init__: cannot be pickled

    def __call__(self, prompts, completions, **kwargs):
        return [0.0] * len(completions)


def test_good_rewards_pass():
    assert check_reward(good, answer=["4", "x", None, "8"]) == [1.0, 0.0, None, 1.0]
    assert check_reward(Pooled()) == [1.0, 4.0, 11.0, 1.0]
    assert check_reward(Pooled(), ["a"], ["xyz"]) == [3.0]
    assert check_reward(good, conversational=True, answer=[None] * 4) == [None] * 4


@pytest.mark.parametrize("fn, message", [
    (lambda prompts, completions, **kw: [1.0], "returned 1 values for 4 completions"),
    (lambda prompts, completions, **kw: [float("nan")] * len(completions), "returned nan for sample 0"),
    (lambda prompts, completions, **kw: ["1"] * len(completions), "returned str"),
    (lambda prompts, completions: [0.0] * len(completions), "add **kwargs"),
    (lambda prompts, completions, **kw: [0.0] * 4, "on a batch of one"),
    (HoldsALock(), "cannot be pickled"),
    (Pooled, "pass a reward function, e.g. check_reward(Pooled(...))"),
    (lambda text: [0.0], "has no 'completions' parameter"),
])
def test_broken_contracts_fail_with_what_to_fix(fn, message):
    with pytest.raises(AssertionError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        check_reward(fn)


def noisy(prompts, completions, **kwargs):
    return [random.random() for _ in completions]


def test_random_reward_needs_deterministic_false():
    with pytest.raises(AssertionError, match="deterministic=False"):
        check_reward(noisy)
    assert len(check_reward(noisy, deterministic=False)) == 4


def test_pytest_plugin_is_installed_and_gives_fixtures(tmp_path):
    """The fixtures hold what a test adds, whatever the developer's REWARDKIT_DISABLE_PLUGINS says."""
    (tmp_path / "test_inner.py").write_text(
        "from rewardkit import registry\n"
        "def test_fresh(fresh_registry):\n"
        "    assert fresh_registry.names('rewards') == [] and registry.get_registry() is fresh_registry\n"
        "def test_builtin(builtin_registry):\n"
        "    assert 'exact_match' in builtin_registry.names('rewards')\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                          f"--basetemp={tmp_path / 'inner'}", str(tmp_path / "test_inner.py")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "REWARDKIT_DISABLE_PLUGINS": "builtin"})
    assert out.returncode == 0, out.stdout[-2000:]
    assert "2 passed" in out.stdout
