"""``rewardkit probe`` on a stage with an environment (rewardkit.probe_episodes): adversarial tool calls against the
environment, scripted episodes against the stage's rewards."""

from __future__ import annotations

import subprocess
import sys
import time
import types

from rewardkit import environments as envs
from rewardkit.builtin.tools import Calculator
from rewardkit.probe_episodes import adversarial_calls, check_tools, probe_environment
from rewardkit.registry import Registry


class Hangs(envs.Environment):
    def reset(self, **row):
        return None

    def wait(self, seconds: int) -> str:
        """Wait.

        Args:
            seconds: how long
        """
        time.sleep(3)
        return "done"


class BlamesItself(envs.Environment):
    def reset(self, **row):
        return None

    def parse(self, text: str) -> str:
        """Parse a text.

        Args:
            text: what to parse
        """
        if not text:
            raise envs.EnvironmentFault("empty input")  # a bad argument is the model's fault, not the environment's
        return text


def reads_tool_results(prompts, completions, answer, **kw):
    """A reward that takes any message's content as the answer (what a tool returned included)."""
    return [float(any(m.get("content") == a for m in c)) for c, a in zip(completions, answer)]


def test_adversarial_calls_cover_missing_and_extreme_arguments():
    calls = adversarial_calls(Calculator().mul)
    assert calls[0] == {} and {"a": 10 ** 30, "b": 0} in calls and {"a": -1, "b": 0} in calls


def test_a_calculator_raises_on_bad_arguments_and_never_hangs():
    assert check_tools(Calculator(), {}) == []


def test_a_hanging_tool_and_a_fault_for_a_bad_argument_are_findings():
    (hang,) = check_tools(Hangs(), {}, deadline=0.5)
    assert "wait(" in hang and "did not return within 0.5s" in hang
    found = check_tools(BlamesItself(), {})
    assert any("parse(" in f and "marked the episode unjudged" in f and "empty input" in f for f in found)


FOREVER = """
import threading, time
from rewardkit import environments as envs
from rewardkit.probe_episodes import check_tools

class SleepsForever(envs.Environment):
    def block(self, seconds: int) -> str:
        \"\"\"Block.

        Args:
            seconds: ignored
        \"\"\"
        threading.Event().wait()
        return "never"

print(check_tools(SleepsForever(), {}, deadline=0.5))
"""


def test_a_tool_that_never_returns_is_reported_and_the_probe_process_still_exits():
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", FOREVER], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "did not return within 0.5s" in done.stdout and "block(" in done.stdout
    assert time.monotonic() - started < 60


def _spec(reward: str):
    block = types.SimpleNamespace(name=reward, alias=reward, params={}, weight=1.0)
    return types.SimpleNamespace(name="grpo", environment={"name": "calculator"}, trainer_args={}, rewards=[block],
                                 reward_faults={"policy": "skip", "max_rate": 1.0, "fail_fast_first_step": False})


def _registry():
    import rewardkit.builtin

    reg = Registry(entry_points=False)
    reg.add_plugin(rewardkit.builtin, "builtin", dist="rewardkit")
    reg.add("rewards", "reads_tool_results", reads_tool_results)
    return reg


ROWS = [{"prompt": [{"role": "user", "content": f"{a}*7="}], "answer": str(a * 7)} for a in range(100, 106)]


def test_exact_match_on_episodes_has_no_finding():
    (report,) = probe_environment(_spec("exact_match"), _registry(), ROWS, "answer")
    assert report.control("gold") == 1.0 and report.control("wrong") == 0.0
    assert report.findings == []
    left = next(r for r in report.results if r.probe == "answer left in the tool result")
    assert left.score == 0.0  # the guard appends an empty answer to an episode ending on a tool result


def test_a_reward_that_reads_tool_results_is_a_finding():
    (report,) = probe_environment(_spec("reads_tool_results"), _registry(), ROWS, "answer")
    assert [r.probe for r in report.findings] == ["check: judges the model's answer"]


# --------------------------------------------------------------------------- the health monitor on tool use
def test_monitor_alarms_on_rising_tool_errors_and_drifting_tool_calls():
    from rewardkit import monitor as m

    assert m.tool_errors([0.0, 0.1, 0.5, 0.6], 2, 0.3)["now"] == 0.55
    assert m.tool_errors([0.0, 0.1, 0.2, 0.3], 2, 0.3) is None
    assert m.tool_calls_drift([1.0, 1.0, 0.4, 0.4], 2, 2.0)["now"] == 0.4  # the model stopped calling its tool
    assert m.tool_calls_drift([1.0, 1.0, 1.2, 1.3], 2, 2.0) is None
    assert m.tool_calls_drift([0.0, 0.0, 1.0, 2.0], 2, 2.0)["start"] == 0.0  # from none to several


def test_monitor_watches_tool_metrics_only_where_tools_are_logged():
    from rewardkit import monitor as m

    mon = m.HealthMonitor(m.resolve({}), {"correct": 1.0})
    fired = []
    for step, (fail, calls) in enumerate([(0.0, 1.0), (0.0, 1.0), (0.5, 1.0), (0.6, 1.5)], 1):
        fired += mon.observe(step, {"reward": 0.5, "completions/mean_length": 20.0, "tools/failure_frequency": fail,
                                    "tools/call_frequency": calls})
    assert [a["alarm"] for a in fired] == ["tool_errors"]
    assert mon.watched()["tool_calls_drift"] == "watched"
    plain = m.HealthMonitor(m.resolve({}), {"correct": 1.0})
    plain.observe(1, {"reward": 0.5, "completions/mean_length": 20.0})
    assert plain.watched()["tool_errors"] == "not logged"
