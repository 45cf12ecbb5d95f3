"""rewardkit's own recipe sections: declared once (rewardkit.recipe_schema), checked by one checker
(rewardkit.values.check_section)."""

import dataclasses
import typing

import pytest

from rewardkit import recipe_schema as rs
from rewardkit.values import check_keys, check_section, given, section_help

# Numbers whose range depends on the rest of the recipe, checked by validate against the registry.
RANGE_FROM_CONTEXT = {("Eval", "correct_at"): "inside the eval reward's score_range (evaluate.check_threshold)",
                      ("EarlyStop", "target"): "at most the eval reward's score_range top (stopping.check_scores)",
                      ("Reward", "weight"): "any finite weight (a negative one is a penalty)"}


def _numeric(annotation) -> bool:
    args = typing.get_args(annotation) or (annotation,)
    return any(a in (int, float) for a in args) and bool not in args


@pytest.mark.parametrize("section", list(rs.SECTIONS.values()), ids=lambda c: c.__name__)
def test_every_field_has_help_and_every_number_a_range(section):
    hints = typing.get_type_hints(section)
    for f in dataclasses.fields(section):
        assert f.metadata.get("help"), f"{section.__name__}.{f.name} has no help"
        if _numeric(hints[f.name]) and (section.__name__, f.name) not in RANGE_FROM_CONTEXT:
            assert f.metadata.get("range") or f.metadata.get("check"), f"{section.__name__}.{f.name}: no range"
        if typing.get_origin(hints[f.name]) is tuple and _numeric(typing.get_args(hints[f.name])[0]):
            assert f.metadata.get("each"), f"{section.__name__}.{f.name}: no range for its elements"


def test_every_problem_of_a_section_at_once_each_naming_its_key():
    problems = []
    monitor = check_section(rs.Monitor, {"windw": 3, "window": 0, "dominance": "high", "kl_min": float("nan"),
                                         "stop_on": ["kl_acceleration", "entropy"]}, "stages.a.monitor", problems)
    assert problems == [
        "stages.a.monitor.windw: unknown key (did you mean 'window'?)",
        "stages.a.monitor.window: must be at least 1, got 0",
        "stages.a.monitor.dominance: expected a number, got str 'high'",
        "stages.a.monitor.kl_min: expected a number, a finite one, got nan",
        "stages.a.monitor.stop_on[1]: must be one of " + ", ".join(rs.ALARMS) + ", got 'entropy' (did you mean "
        "'entropy_collapse'?)"]
    assert monitor == rs.Monitor()  # what was refused is left out: the defaults stand


def test_a_stage_section_is_the_recipe_one_with_the_keys_it_gives():
    problems = []
    recipe_wide = check_section(rs.FaultPolicy, {"policy": "skip", "max_rate": 0.2}, "reward_faults", problems)
    stage = check_section(rs.FaultPolicy, {"max_rate": 0.05, "fail_fast_first_step": None}, "stages.a.reward_faults",
                          problems, base=recipe_wide)
    assert problems == [] and stage == rs.FaultPolicy("skip", 0.05, True)
    assert given(stage) == {"policy": "skip", "max_rate": 0.05}  # what the recipe wrote (null: the default)


def test_a_nested_section_takes_a_name_or_a_mapping_and_is_parsed_once():
    problems = []
    short = check_section(rs.Eval, {"reward": "exact_match", "split": "test"}, "eval", problems)
    full = check_section(rs.Eval, {"reward": {"name": "exact_match", "params": {"column": "gold"}}}, "eval", problems)
    assert problems == []
    assert short.reward == rs.EvalReward(name="exact_match") and full.reward.params == {"column": "gold"}
    assert given(short) == {"reward": "exact_match", "split": "test"}  # fingerprints hash the recipe's words
    check_section(rs.Eval, {"reward": {"nme": "x"}, "samples": -1, "maj_k": [4]}, "eval", problems)
    assert problems == ["eval.reward.nme: unknown key (did you mean 'name'?)",
                        "eval.reward.name: missing (registered reward name)",
                        "eval.samples: must be at least 0 (0: greedy only), got -1"]  # no maj_k > refused samples


def test_required_keys_and_cross_field_rules():
    problems = []
    check_section(rs.EarlyStop, {"every": None, "split": "validation"}, "early_stop", problems)
    assert problems == ["early_stop.every: missing (evaluate every N optimizer steps)",
                        "early_stop.target: give target (stop at a score) or patience (stop when it stops improving)"]
    problems = []
    assert check_keys(rs.Data, "data.jsonl", "data", problems) == {}
    assert problems == ["data: expected a mapping, got str"]


def test_every_declared_key_has_its_help():
    assert set(section_help(rs.RolloutLog)) == {"enabled", "every", "groups", "max_mb"}
    assert all(section_help(rs.Eval).values())
