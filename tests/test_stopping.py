"""Held-out early stopping (rewardkit.stopping): the rule, recipe checks, and a stage that stops on it."""

import json
import os
import textwrap

import pytest

from rewardkit import RecipeError
from rewardkit.recipe import load_recipe
from rewardkit.stopping import StopRule


def test_target_stops_at_the_first_score_that_reaches_it():
    rule = StopRule(target=0.5)
    assert rule.update(50, 0.1) is None and rule.update(100, 0.49) is None
    assert "target" in rule.update(150, 0.5)
    assert rule.history == [[50, 0.1], [100, 0.49], [150, 0.5]]


def test_patience_counts_evaluations_without_improvement():
    rule = StopRule(patience=2, min_delta=0.05)
    assert rule.update(1, 0.30) is None
    assert rule.update(2, 0.33) is None  # +0.03 < min_delta: stale 1
    assert rule.update(3, 0.40) is None  # improvement: stale 0
    assert rule.update(4, 0.40) is None
    assert "no improvement over 40.0%" in rule.update(5, 0.41)


def test_replay_gives_the_same_decision_as_an_uninterrupted_run():
    scores = [(10, 0.2), (20, 0.3), (30, 0.3), (40, 0.29), (50, 0.31)]
    whole = StopRule(patience=3)
    decisions = [whole.update(s, v) for s, v in scores]
    resumed = StopRule(patience=3)
    resumed.replay([list(x) for x in scores], up_to=30)  # a checkpoint at step 30, scores after it discarded
    assert [resumed.update(s, v) for s, v in scores[3:]] == decisions[3:]


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


RECIPE = """
    output_dir: {out}
    model: {{name: tiny-llama}}
    data: {{name: arithmetic, params: {{n_train: 2000, n_test: 20, n_val: 16, format: reversed}}}}
    stages:
      sft:
        trainer: {{type: sft, max_steps: 40, learning_rate: 2.0e-3, per_device_train_batch_size: 16,
                   lr_scheduler_type: constant, save_strategy: "no"}}
        early_stop: {early_stop}
    eval: {{reward: exact_match, max_new_tokens: 4, batch_size: 32}}
"""


def test_early_stop_sections_are_checked_before_anything_loads(tmp_path, builtin_registry):
    bad = write(tmp_path, RECIPE.format(out=tmp_path, early_stop="{every: 0, split: test, evry: 3}"))
    with pytest.raises(RecipeError) as exc:
        load_recipe(bad, registry=builtin_registry)
    text = str(exc.value)
    assert "stages.sft.early_stop.every: required, a positive number" in text
    assert "stages.sft.early_stop.evry: unknown key (did you mean 'every'?)" in text
    assert "give target" in text and "'test' is the split eval: reports" in text
    no_eval = write(tmp_path, RECIPE.format(out=tmp_path, early_stop="{every: 5, target: 0.5}").replace(
        "    eval: {reward: exact_match, max_new_tokens: 4, batch_size: 32}\n", ""))
    with pytest.raises(RecipeError, match="needs the recipe's eval: section"):
        load_recipe(no_eval, registry=builtin_registry)


def test_a_missing_validation_split_is_named_before_training(tmp_path, builtin_registry):
    from rewardkit.pipeline import run

    path = write(tmp_path, RECIPE.format(out=tmp_path / "o", early_stop="{every: 5, target: 0.5}")
                 .replace(", n_val: 16", ""))
    recipe = load_recipe(path, registry=builtin_registry)
    with pytest.raises(RecipeError, match="stages.sft.early_stop.split: the dataset has no 'validation' split"):
        run(recipe, builtin_registry)
    assert not os.path.exists(tmp_path / "o" / "sft" / "checkpoint-5")


def test_a_stage_stops_where_the_rule_says_and_records_why(tmp_path, builtin_registry):
    from rewardkit.pipeline import run

    # patience 1 with min_delta 2 (no score can improve by 2): the second evaluation stops the stage.
    path = write(tmp_path, RECIPE.format(out=tmp_path / "o", early_stop="{every: 5, patience: 1, min_delta: 2}"))
    summary = run(load_recipe(path, registry=builtin_registry), builtin_registry)
    stage = summary["stages"][0]
    assert stage["steps"] == 10 and stage["early_stop"]["stopped_at"] == 10
    assert [s for s, _ in stage["early_stop"]["history"]] == [5, 10]
    saved = json.loads((tmp_path / "o" / "sft" / "early_stop.json").read_text())
    assert saved["stopped"]["step"] == 10 and len(saved["history"]) == 2
