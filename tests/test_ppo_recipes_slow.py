"""End-to-end: the bundled PPO and RLHF recipes learn (CPU, tiny model). Slow: run them with -m slow.

Thresholds sit below the figures measured in docs/ppo.md, to allow for thread-count nondeterminism, not for
a recipe that stopped learning."""

import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(recipe, tmp_path, *overrides):
    from rewardkit.pipeline import run
    from rewardkit.recipe import load_recipe
    from rewardkit.registry import get_registry

    recipe = load_recipe(os.path.join(ROOT, recipe), [f"output_dir={tmp_path}", *overrides])
    summary = run(recipe, get_registry())
    return summary, {row["after"]: row["score"] for row in summary["eval"]}


def _scores(path):
    rows = [json.loads(line) for line in open(path)]
    return [r["ppo/score"] for r in rows if "ppo/score" in r]


@pytest.mark.slow
def test_rlhf_reverse_reward_model_and_ppo_learn(tmp_path):
    summary, acc = _run("recipes/rlhf/reverse.yaml", tmp_path)
    rm = next(s for s in summary["stages"] if s["name"] == "rm")
    assert rm["heldout_accuracy"] >= 0.90, rm
    assert acc["ppo"] > acc["sft"], acc  # the task metric rises
    scores = _scores(tmp_path / "ppo" / "log.jsonl")
    assert sum(scores[-4:]) / 4 > sum(scores[:4]) / 4, scores  # and so does the reward model's score


@pytest.mark.slow
def test_ppo_reverse_exact_match_learns(tmp_path):
    _, acc = _run("recipes/ppo/reverse.yaml", tmp_path)
    assert acc["ppo"] - acc["sft"] >= THRESHOLD_PPO_POINTS / 100, acc


THRESHOLD_PPO_POINTS = 10
