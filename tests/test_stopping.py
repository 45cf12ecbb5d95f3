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
    assert "stages.sft.early_stop.every: must be at least 1, got 0" in text
    assert "stages.sft.early_stop.evry: unknown key (did you mean 'every'?)" in text
    assert "give target" in text and "'test' is the split eval: reports" in text
    no_eval = write(tmp_path, RECIPE.format(out=tmp_path, early_stop="{every: 5, target: 0.5}").replace(
        "    eval: {reward: exact_match, max_new_tokens: 4, batch_size: 32}\n", ""))
    with pytest.raises(RecipeError, match="needs the recipe's eval: section"):
        load_recipe(no_eval, registry=builtin_registry)


def test_a_missing_validation_split_is_named_before_any_model_loads(tmp_path, builtin_registry):
    # arithmetic declares its splits (validation only with n_val), so validation finds it, not the run.
    path = write(tmp_path, RECIPE.format(out=tmp_path / "o", early_stop="{every: 5, target: 0.5}")
                 .replace(", n_val: 16", ""))
    with pytest.raises(RecipeError, match="stages.sft.early_stop.split: the dataset has no 'validation' split"):
        load_recipe(path, registry=builtin_registry)
    assert not os.path.exists(tmp_path / "o")


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


def test_anneal_steps_decays_the_learning_rate_to_zero_then_stops(tmp_path, builtin_registry):
    from rewardkit.pipeline import run

    # target 0 fires at the first evaluation (step 5); then 10 steps of linear decay from lr 2e-3 to 0.
    recipe = RECIPE.replace("save_strategy", "logging_steps: 1, save_strategy")
    path = write(tmp_path, recipe.format(out=tmp_path / "o", early_stop="{every: 5, target: 0.0, anneal_steps: 10}"))
    summary = run(load_recipe(path, registry=builtin_registry), builtin_registry)
    stage = summary["stages"][0]
    assert stage["steps"] == 15 and stage["early_stop"]["stopped_at"] == 15
    assert stage["early_stop"]["annealed_from"] == 5 and "annealed over 10 steps" in stage["early_stop"]["reason"]
    assert [s for s, _ in stage["early_stop"]["history"]] == [5]  # no evaluation while annealing
    with open(tmp_path / "o" / "sft" / "log.jsonl") as f:
        lr = {r["step"]: r["learning_rate"] for r in map(json.loads, f) if "learning_rate" in r}
    # The lr logged at step s is the one step s used (the factor at s - 1): 2e-3 at step 6, then 10% less per
    # step down to 2e-4 at step 15, the last.
    assert lr[6] == pytest.approx(2e-3) and lr[11] == pytest.approx(1e-3) and lr[15] == pytest.approx(2e-4)
    assert all(lr[s] > lr[s + 1] for s in range(6, 15))


def test_a_resumed_stage_keeps_annealing_from_where_the_criterion_fired(tmp_path):
    import torch

    from rewardkit.stopping import callback

    state = tmp_path / "early_stop.json"
    state.write_text(json.dumps({"history": [[5, 0.9]], "annealing": {"step": 5, "reason": "target"}}))
    cb = callback({"every": 5, "target": 0.5, "anneal_steps": 10}, lambda m: 1.0, lambda m: None, str(state),
                  resume_step=8)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)  # as restored: the original lambdas
    cb.on_train_begin(None, None, None, lr_scheduler=sched)
    assert [f(s) for f in sched.lr_lambdas for s in (5, 10, 15, 20)] == [1.0, 0.5, 0.0, 0.0]
