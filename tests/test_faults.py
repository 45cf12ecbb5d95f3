"""Reward fault policy: every fault names the reward, its distribution and the sample; never a silent zero."""

import asyncio
import json
import os
import pickle
import re

import pytest
import yaml

from rewardkit import RewardError
from rewardkit.recipe import load_recipe
from rewardkit.reward_checks import CheckedReward, FaultPolicy
from rewardkit.values import section_help

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = {"policy": "skip", "max_rate": 0.5, "fail_fast_first_step": False}


def raises_on_b(prompts, completions, **kwargs):
    if "b" in completions:
        raise ValueError("cannot parse 'b'")
    return [1.0] * len(completions)


def raises_on_batches(prompts, completions, **kwargs):
    if len(completions) > 1:
        raise RuntimeError("pool exhausted")
    return [1.0]


def nan_at_1(prompts, completions, **kwargs):
    return [0.5, float("nan"), 0.5][:len(completions)]


def build(registry, fn, faults=None, name="r"):
    registry.add("rewards", name, fn, dist="dist-r")
    return registry.build_reward(name, faults=faults)


def call(fn, completions=("a", "b", "c"), **kwargs):
    completions = list(completions)
    return fn(prompts=["p"] * len(completions), completions=completions, answer=list(completions), **kwargs)


def test_raise_is_located_to_its_sample(fresh_registry):
    fn = build(fresh_registry, raises_on_b)
    with pytest.raises(RewardError) as exc:
        call(fn)
    msg = str(exc.value)
    assert "reward 'r'" in msg and "dist-r" in msg and "sample 1" in msg and "cannot parse 'b'" in msg


def test_batch_level_raise_is_reported_as_such(fresh_registry):
    fn = build(fresh_registry, raises_on_batches, {**SKIP, "max_rate": 1.0})
    values = call(fn, ["a", "b"])  # no single sample raises: the whole batch is skipped, never zeros
    assert values == [None, None] and fn.skipped == 2
    fn2 = build(fresh_registry, raises_on_batches, name="r2")
    with pytest.raises(RewardError, match="pool exhausted on a batch of 2"):
        call(fn2, ["a", "b"])


def test_skip_turns_faults_into_none_counts_and_logs(fresh_registry):
    logged = []
    fn = build(fresh_registry, raises_on_b, SKIP)
    assert call(fn, log_metric=lambda name, value: logged.append((name, value))) == [1.0, None, 1.0]
    assert call(fn, ["a", "c"], log_metric=lambda name, value: logged.append((name, value))) == [1.0, 1.0]
    assert logged == [("reward_faults/r/skipped", 1.0), ("reward_faults/r/skipped", 0.0)]
    assert fn.fault_counts() == {"policy": "skip", "calls": 2, "samples": 5, "skipped": 1}


@pytest.mark.parametrize("output, fault", [
    ([1.0, float("nan"), 1.0], "returned nan for sample 1"),
    ([1.0, "yes", 1.0], "returned str ('yes') for sample 1"),
    ([1.0, 1.0], "returned 2 values for 3 completions"),
])
def test_each_fault_kind_fails_or_skips(fresh_registry, output, fault):
    bad = lambda prompts, completions, **kw: output  # noqa: E731
    with pytest.raises(RewardError, match=re.escape(fault)):
        call(build(fresh_registry, bad, name="f1"))
    skipped = build(fresh_registry, bad, {**SKIP, "max_rate": 1.0}, name="f2")
    values = call(skipped)
    assert None in values and 0.0 not in values
    assert skipped.skipped == (3 if "values for" in fault else 1)


def test_first_step_fails_fast_even_when_skipping(fresh_registry):
    fn = build(fresh_registry, nan_at_1, {"policy": "skip", "max_rate": 1.0})
    with pytest.raises(RewardError, match="first step"):
        call(fn)
    fn = build(fresh_registry, nan_at_1, {"policy": "skip", "max_rate": 1.0}, name="later")
    assert call(fn, ["a"]) == [0.5]  # a clean first call...
    assert call(fn) == [0.5, None, 0.5]  # ...then faults are skipped


def test_fault_rate_above_threshold_aborts(fresh_registry):
    fn = build(fresh_registry, raises_on_b, {**SKIP, "max_rate": 0.2})
    assert call(fn, ["a", "c", "d", "e", "b"]) == [1.0, 1.0, 1.0, 1.0, None]  # 1 of 5: 20%, at the limit
    with pytest.raises(RewardError, match=r"2 of 8 samples skipped \(25.0%\), above reward_faults.max_rate 20.0%"):
        call(fn, ["a", "b", "c"])


def test_async_reward_follows_the_policy(fresh_registry):
    async def flaky(prompts, completions, **kwargs):
        if "b" in completions:
            raise ValueError("boom")
        return [2.0] * len(completions)

    fn = build(fresh_registry, flaky, SKIP)
    assert asyncio.run(call(fn)) == [2.0, None, 2.0]


def test_checked_reward_pickles_with_its_policy():
    fn = CheckedReward(nan_at_1, "n", "plugin 'p' (d 1)", FaultPolicy("skip", 0.5, False))
    copy = pickle.loads(pickle.dumps(fn))
    assert copy.faults == fn.faults and copy(prompts=["p"] * 3, completions=["a", "b", "c"]) == [0.5, None, 0.5]


def test_recipe_reward_faults_is_validated_and_merged(tmp_path, builtin_registry):
    body = {"model": {"name": "tiny-llama"}, "data": {"name": "arithmetic"},
            "reward_faults": {"policy": "skip", "max_rate": 0.05},
            "stages": {"a": {"trainer": {"type": "grpo"}, "rewards": ["exact_match"],
                             "reward_faults": {"max_rate": 0.2}},
                       "b": {"trainer": {"type": "grpo"}, "rewards": ["exact_match"]}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(body))
    recipe = load_recipe(str(path))
    assert recipe.stages[0].reward_faults == FaultPolicy("skip", 0.2)
    assert recipe.stages[1].reward_faults == FaultPolicy("skip", 0.05)
    with pytest.raises(Exception) as exc:
        load_recipe(str(path), ["reward_faults.policy=ignore", "stages.a.reward_faults.max_rat=2"])
    msg = str(exc.value)
    assert "reward_faults.policy: must be one of fail, skip, got 'ignore'" in msg
    assert "stages.a.reward_faults.max_rat: unknown key (did you mean 'max_rate'?)" in msg


def test_fault_keys_are_documented():
    with open(os.path.join(REPO, "docs", "recipes.md")) as f:
        doc = f.read()
    assert "`reward_faults`" in doc
    for key in section_help(FaultPolicy):
        assert f"`{key}`" in doc, key


def flaky_sevens(prompts, completions, trainer_state=None, **kwargs):
    """Climbs like 'sevens', but after the first step sample 0 of every batch is NaN."""
    values = [c.count("7") / max(len(c), 1) for c in completions]
    if trainer_state is not None and trainer_state.global_step > 0:
        values[0] = float("nan")
    return values


@pytest.mark.slow
def test_skip_policy_in_a_grpo_run(tmp_path, builtin_registry):
    from rewardkit.pipeline import run

    builtin_registry.add("rewards", "flaky", flaky_sevens, dist="tests")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "out"), "model": {"name": "tiny-llama"},
        "data": {"name": "arithmetic", "params": {"n_train": 100, "n_test": 10}},
        "reward_faults": {"policy": "skip", "max_rate": 0.2},
        "trainer": {"type": "grpo", "max_steps": 3, "per_device_train_batch_size": 8, "num_generations": 4,
                    "max_completion_length": 4, "logging_steps": 1},
        "rewards": [{"name": "flaky"}]}))
    summary = run(load_recipe(str(path)), builtin_registry)
    assert summary["stages"][0]["reward_faults"]["flaky"] == {"policy": "skip", "calls": 3, "samples": 24,
                                                              "skipped": 2}
    with open(tmp_path / "out" / "grpo" / "log.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r.get("reward_faults/flaky/skipped") for r in rows if "loss" in r] == [0.0, 1.0, 1.0]
    # 1 of 16 samples (6.2%) crosses max_rate 0.05: the run stops, naming the reward and the sample.
    with pytest.raises(RewardError, match=r"reward 'flaky' from .*tests.*above reward_faults.max_rate 5.0%.*"
                                          r"for sample 0"):
        run(load_recipe(str(path), ["reward_faults.max_rate=0.05", f"output_dir={tmp_path / 'out2'}"]),
            builtin_registry)
