"""Params, metrics, plugin registration, the bundled dataset, and the format and length rewards."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys

import pytest

from rewardkit.errors import PluginError
from rewardkit.registry import Registry
from rewardkit_math.accuracy import MathAccuracy
from rewardkit_math.data import word_problems
from rewardkit_math.extract import extract_answer
from rewardkit_math.shaping import LengthPenalty, MathFormat


@pytest.mark.parametrize("params, named", [
    ({"extract": ["boxd"]}, "extract"), ({"extract": []}, "extract"), ({"multiple": "any"}, "multiple"),
    ({"precision": "6"}, "precision"), ({"precision": 40}, "precision"), ({"timeout": 0}, "timeout"),
    ({"timeout_verdict": "zero"}, "timeout_verdict"), ({"workers": 0}, "workers"),
    ({"partial_credit": "yes"}, "partial_credit"), ({"gold_column": ""}, "gold_column"),
    ({"warn_unchecked": 2}, "warn_unchecked"), ({"rel_tol": -1e-6}, "rel_tol"), ({"rel_tol": float("nan")}, "rel_tol"),
    ({"rel_tol": "1e-6"}, "rel_tol"), ({"rel_tol": 1}, "rel_tol"),
])
def test_bad_params_name_the_param(params, named):
    with pytest.raises(ValueError, match=named):
        MathAccuracy(**params)


def test_registry_builds_and_reports_errors():
    reg = Registry()
    assert {"math.accuracy", "math.format", "math.length_penalty"} <= set(reg.names("rewards"))
    assert reg.reward_columns("math.accuracy", {"gold_column": "solution"}) == ["solution"]
    assert reg.reward_columns("math.format", {}) == []
    with pytest.raises(PluginError, match="extract"):
        reg.build_reward("math.accuracy", {"extract": "boxxed"})
    with pytest.raises(PluginError, match="did you mean 'timeout'"):
        reg.build_reward("math.accuracy", {"timeot": 3})
    fn = reg.load("rewards", "math.accuracy")(gold_column="solution")  # build_reward minus its TRL import
    assert fn(prompts=None, completions=["#### 5"], solution=[r"\boxed{5}"]) == [1.0]


def test_listing_plugins_imports_no_math_verify():
    code = ("import sys; from rewardkit.registry import Registry; r = Registry(); r.names('rewards'); "
            "r.names('datasets'); print(sorted(m for m in ('math_verify', 'sympy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_gold_column_is_a_clear_error():
    with pytest.raises(KeyError, match="gold column 'answer'.*solution"):
        MathAccuracy()(completions=["#### 1"], solution=["1"])


def test_metrics_stats_and_unchecked_warning(caplog):
    logged = []
    reward = MathAccuracy(warn_unchecked=0.2)
    comps = [r"\boxed{1}", r"\boxed{2}", "no answer", r"\boxed{1}"] * 50
    golds = ["1", "1", "1", r"\frac{"] * 50  # every 4th gold cannot be parsed
    with caplog.at_level(logging.WARNING, logger="rewardkit_math"):
        scores = reward(completions=comps, answer=golds, log_metric=lambda k, v: logged.append((k, v)))
    assert scores[:4] == [1.0, 0.0, 0.0, None]
    metrics = dict(logged)
    assert metrics["math/unchecked_frac"] == 0.25 and metrics["math/gold_unparseable"] == 50.0
    assert metrics["math/no_answer_frac"] == 0.25
    stats = reward.stats()
    assert (stats["correct"], stats["wrong"], stats["no_answer"], stats["gold_unparseable"]) == (50, 50, 50, 50)
    assert stats["unchecked_rate"] == 0.25
    assert "could not check 25.0%" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rewardkit_math"):
        reward(completions=comps, answer=golds)  # same rate: not rising, no new warning
    assert "could not check" not in caplog.text


def test_reward_pickles():
    reward = pickle.loads(pickle.dumps(MathAccuracy(precision=3)))
    assert reward.precision == 3 and reward(completions=[r"\boxed{0.5}"], answer=["1/2"]) == [1.0]


def test_extraction_order_is_configurable():
    text = r"The answer is 4. Later: \boxed{5}"
    assert extract_answer(text, ["boxed", "answer_is"]) == "5"
    assert extract_answer(text, ["answer_is", "boxed"]) == "4"


def test_dataset_loader():
    dd = word_problems(test_size=50, seed=1)
    assert len(dd["test"]) == 50 and len(dd["train"]) == 550
    assert set(dd["train"][0]) == {"question", "answer", "solution"}
    assert not set(dd["test"]["question"]) & set(dd["train"]["question"])
    assert word_problems(test_size=50, seed=1)["test"]["question"] == dd["test"]["question"]
    with pytest.raises(ValueError, match="test_size"):
        word_problems(test_size=600)
    row = dd["train"][0]
    assert MathAccuracy()(completions=[row["solution"]], answer=[row["answer"]]) == [1.0]


@pytest.mark.parametrize("completion, score", [
    ("<think>a</think><answer>1</answer>", 1.0),
    ("  \n<think>a</think>\n<answer>1</answer>\n", 1.0),
    ("<think>a</think><answer>1</answer> extra", 0.0),
    ("<think></think><answer>1</answer>", 0.0),
    ("<think>a</think><answer> </answer>", 0.0),
    ("<answer>1</answer>", 0.0),
    ("<think>a<think>b</think><answer>1</answer>", 0.0),
    ("a</think><answer>1</answer>", 0.0),  # no <think> and the prompt does not pre-fill it
    ("<think>" + "x" * 1_000_000, 0.0),
])
def test_format(completion, score):
    assert MathFormat()(prompts=["Q"], completions=[completion]) == [score]


def test_format_prefilled_think_and_options():
    fmt = MathFormat()
    assert fmt(prompts=["Q <think>\n"], completions=["a</think><answer>1</answer>"]) == [1.0]
    chat = [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>"}]]
    assert fmt(prompts=chat, completions=[[{"role": "assistant", "content": "a</think><answer>1</answer>"}]]) == [1.0]
    assert MathFormat(prefilled_think=True)(prompts=None, completions=["a</think><answer>1</answer>"]) == [1.0]
    assert MathFormat(require_think=False)(prompts=None, completions=["<answer>1</answer>"]) == [1.0]
    assert MathFormat(allow_trailing=True)(prompts=None, completions=["<think>a</think><answer>1</answer>!"]) == [1.0]
    with pytest.raises(ValueError, match="think_tag"):
        MathFormat(think_tag="<think>")


def test_length_penalty():
    pen = LengthPenalty(max_length=10, cache_length=4)
    assert pen(completions=["x" * 6, "x" * 8, "x" * 10, "x" * 11]) == [0.0, -0.5, -1.0, -1.0]
    assert pen(completions=["", ""], completion_ids=[[1] * 6, [1] * 9]) == [0.0, -0.75]
    assert LengthPenalty(10, 4, unit="chars")(completions=["x" * 6], completion_ids=[[1] * 9]) == [0.0]
    with pytest.raises(ValueError, match="completion_ids"):
        LengthPenalty(unit="tokens")(completions=["x"])
    with pytest.raises(ValueError, match="cache_length"):
        LengthPenalty(max_length=4, cache_length=8)
    with pytest.raises(ValueError, match="unit"):
        LengthPenalty(unit="words")


def test_plain_number_shortcut_agrees_with_math_verify():
    from rewardkit_math.accuracy import plain_verdict
    from rewardkit_math.extract import normalize_gold
    from rewardkit_math.worker import Checker

    checker = Checker()
    pairs = [("18", "18"), ("18", "18.0"), ("18", "17"), ("-5", "5"), ("0", "-0"), ("007", "7"), ("3.50", "3.5"),
             ("1234", "1,234"), ("2.5", "2.50000001"), ("10", "10.5"), ("-12", "-12"), ("99999999999", "99999999998")]
    decided = 0
    for gold, answer in pairs:
        latex = normalize_gold(gold)
        fast = plain_verdict(latex, answer)
        if fast is not None:
            decided += 1
            assert fast[:2] == checker.judge(latex, answer)[:2], (gold, answer)
    assert decided == 11  # every pair of plain decimals ("1,234" has a separator, so it goes to the workers)


def test_bad_params_are_found_by_validate_before_any_model_loads(tmp_path):
    """Each factory's check_params is what rewardkit validate calls; a bad param is an error there, not after
    an earlier stage has trained."""
    from rewardkit import RecipeError
    from rewardkit.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: tiny-llama}\ndata: {name: math.word_problems}\n"
                      "trainer: {type: grpo, max_steps: 1, per_device_train_batch_size: 4, num_generations: 4}\n"
                      "rewards:\n  - {name: math.accuracy, params: {extract: [boxd], rel_tol: 0.5}}\n"
                      "  - {name: math.length_penalty, params: {max_length: 4, cache_length: 8}}\n"
                      "  - {name: math.format, params: {think_tag: answer}}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(str(recipe))
    message = str(info.value)
    assert "rewards[0].params: extract: unknown extraction mode 'boxd'" in message, message
    assert "rewards[1].params: cache_length" in message, message
    assert "rewards[2].params: think_tag and answer_tag must differ" in message, message
    assert MathAccuracy.check_params(rel_tol=1e-5) == []
