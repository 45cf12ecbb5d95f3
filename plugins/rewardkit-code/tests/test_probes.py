"""What ``rewardkit probe`` runs against ``code.tests``: a lookup-table gold passes, the attacks score 0."""

from __future__ import annotations

import json

import pytest

from rewardkit_code.probes import _call_parts, gold_program
from rewardkit_code.problems import read_problems
from rewardkit_code.reward import CodeTests
from rewardkit_code.sandbox import host_problems

SANDBOX = host_problems("full")
needs_sandbox = pytest.mark.skipif(bool(SANDBOX), reason="SANDBOX UNAVAILABLE: " + "; ".join(SANDBOX))


def test_call_parts_only_for_literal_arguments():
    assert _call_parts("add(1, b=[2, 'x'])") == ("add", (1,), {"b": [2, "x"]})
    assert _call_parts("add(x)") is None and _call_parts("obj.f(1)") is None


def test_gold_program_is_a_lookup_table_of_the_tests():
    program = gold_program([{"call": "add(1, 2)", "expected": 3}, {"stdin": "a\n", "stdout": "A\n"}])
    assert program.startswith("```python\n") and "def add(" in program and "'a\\n': 'A\\n'" in program


@needs_sandbox
def test_gold_passes_every_bundled_problem_and_every_attack_scores_zero():
    reward = CodeTests(mode="fraction", timeout=2)
    rows = [{"tests": json.dumps(p["tests"])} for p in read_problems()]
    assert reward(completions=[reward.probe_gold(r) for r in rows], tests=[r["tests"] for r in rows]) \
        == [1.0] * len(rows)
    for name, programs in reward.probe_completions(rows).items():
        scores = reward(completions=programs, tests=[r["tests"] for r in rows])
        assert scores == [0.0] * len(rows), name
