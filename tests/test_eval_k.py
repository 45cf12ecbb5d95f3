"""Held-out pass@k and maj@k (rewardkit.evaluate): the estimator and the vote by hand, what is not available said
as such, the recipe keys checked, and one real evaluation through the pipeline."""

import json
import re
import textwrap

import pytest

from rewardkit.errors import RecipeError
from rewardkit.evaluate import k_metrics, k_notes, maj_at_k, majority, pass_at_k
from rewardkit.recipe import load_recipe


def test_pass_at_k_is_the_unbiased_estimator_worked_by_hand():
    # n = 5 samples, c = 2 correct: 1 - C(3, k) / C(5, k).
    assert pass_at_k(5, 2, 1) == pytest.approx(1 - 3 / 5)  # 0.4, the share correct
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 0.7
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 0.9
    assert pass_at_k(5, 2, 4) == 1.0 and pass_at_k(5, 2, 5) == 1.0  # any 4 of 5 hold a correct one
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 2, 2) != pytest.approx(1 - (1 - 2 / 5) ** 2)  # not the biased 0.64
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_majority_vote_breaks_ties_for_the_answer_sampled_first():
    assert majority(["7", "5", "5", "7"]) == 0  # 2-2: "7" came first
    assert majority(["5", "7", "7", "5"]) == 0
    assert majority([None, "7", "5", "5"]) == 2  # no answer, no vote: "5" twice wins
    assert majority([None, "7", None, "5"]) == 1  # 1-1: "7" came first
    assert majority([None, None]) is None


def test_maj_at_k_judges_the_voted_answer_and_averages_disjoint_blocks():
    # Two blocks of k = 3: [7 7 5] votes 7 (correct), [5 7 5] votes 5 (wrong), so maj@3 = 1/2.
    answers = ["7", "7", "5", "5", "7", "5"]
    scores = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert maj_at_k(answers, scores, 3, 1.0) == 0.5
    assert maj_at_k(answers, scores, 6, 1.0) == 1.0  # 3-3 over all six: the tie goes to "7", sampled first
    assert maj_at_k(["5", "7", "7", "5"], [0.0, 1.0, 1.0, 0.0], 4, 1.0) == 0.0  # the tie goes to "5", sampled first
    assert maj_at_k([None, None, "7"], [0.0, 0.0, 1.0], 3, 1.0) == 1.0  # the one answer wins
    assert maj_at_k([None, None], [0.0, 0.0], 2, 1.0) == 0.0  # nobody answered: wrong
    assert maj_at_k(["7", "7"], [None, None], 2, 1.0) is None  # the winner never judged: left out, not wrong


def plain_reward(prompts, completions, answer, **kwargs):
    """A reward with neither an answer extractor nor a declared score_range."""
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


def test_no_answer_extractor_is_said_not_reported_as_zero(builtin_registry):
    from rewardkit.reward_checks import CheckedReward

    completions = ["7", "5", "7", "7", "3", "3"]  # two problems, three samples each
    scores = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    fn = CheckedReward(plain_reward, "plain", "tests")
    out = k_metrics(fn, completions, scores, 3, [1, 3], [3], correct_at=1.0)
    assert out["pass_at_k"]["1"]["value"] == pytest.approx((2 / 3 + 0) / 2)
    assert out["pass_at_k"]["3"]["value"] == pytest.approx(0.5) and out["pass_at_k"]["3"]["se"] == pytest.approx(0.5)
    assert out["maj_at_k"] is None
    assert out["maj_at_k_unavailable"] == "reward 'plain' declares no answer extractor"
    assert "  maj@k: not available (reward 'plain' declares no answer extractor)" in k_notes([out])
    json.dumps(out, allow_nan=False)  # null, never NaN or 0
    # Without correct_at, a reward declaring no score_range has no threshold: neither figure, and why.
    bare = k_metrics(fn, completions, scores, 3, [1, 3], [3])
    assert bare["pass_at_k"] is None and bare["maj_at_k"] is None
    assert "declares no score_range; set eval.correct_at" in bare["pass_at_k_unavailable"]
    # exact_match declares both: its maj@3 votes "7" (correct) on the first problem and "3" (wrong) on the second.
    em = k_metrics(builtin_registry.build_reward("exact_match", {"column": "answer"}), completions,
                   scores, 3, [1], [3])
    assert em["correct_at"] == 1.0 and em["maj_at_k"]["3"]["value"] == 0.5


def test_unjudged_samples_shrink_n_and_too_few_leave_the_problem_out():
    fn = plain_reward
    out = k_metrics(fn, ["a"] * 4, [1.0, None, 0.0, None], 2, [1, 2], [], correct_at=1.0)
    # problem 1: n = 1 judged (correct), problem 2: n = 1 judged (wrong); pass@2 needs 2 judged samples.
    assert out["pass_at_k"]["1"] == {"value": 0.5, "se": 0.5, "problems": 2, "left_out": 0}
    assert out["pass_at_k"]["2"] == {"value": None, "se": None, "problems": 0, "left_out": 2}


RECIPE = """
    output_dir: {out}
    model: {{name: tiny-llama}}
    data: {{name: arithmetic, params: {{n_train: 2000, n_test: 24, max_operand: 10, format: reversed}}}}
    stages:
      sft:
        trainer: {{type: sft, max_steps: 40, learning_rate: 3.0e-3, per_device_train_batch_size: 16,
                   lr_scheduler_type: constant, save_strategy: "no"}}
    eval: {eval}
"""


def write(tmp_path, eval_section):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(RECIPE.format(out=tmp_path / "o", eval=eval_section)))
    return str(path)


def test_k_keys_are_checked_and_each_error_names_its_field(tmp_path, builtin_registry):
    bad = ("{reward: exact_match, samples: 4, pass_k: [1, 8], maj_k: [0, 2], correct_at: 1.5}")
    with pytest.raises(RecipeError) as exc:
        load_recipe(write(tmp_path, bad), registry=builtin_registry)
    text = str(exc.value)
    assert "eval.pass_k: 8 is more than eval.samples (4)" in text
    assert "eval.maj_k: each must be at least 1, got 0" in text
    assert "eval.correct_at: 1.5 is outside (0, 1], the range eval's reward 'exact_match' scores in" in text
    for section, message in (("{reward: exact_match, pass_k: [1]}", "eval.pass_k: 1 is more than eval.samples (0)"),
                             ("{reward: exact_match, samples: 4, maj_k: 4}", "eval.maj_k: expected a list of integers, got int 4"),
                             ("{reward: exact_match, samples: 4, pass_k: [2, 2]}", "eval.pass_k: [2] listed twice")):
        with pytest.raises(RecipeError, match=re.escape(message)):
            load_recipe(write(tmp_path, section), registry=builtin_registry)
    ok = load_recipe(write(tmp_path, "{reward: exact_match, samples: 4, pass_k: [], maj_k: [2, 4], correct_at: 1}"),
                     registry=builtin_registry)
    assert ok.eval.maj_k == (2, 4)


def test_a_real_eval_reports_pass_and_maj_at_k_beside_sampled_accuracy(tmp_path, builtin_registry, capsys):
    from rewardkit.pipeline import run
    from rewardkit.plot import held_out

    path = write(tmp_path, "{reward: exact_match, max_new_tokens: 4, samples: 8, maj_k: [3, 8]}")
    summary = run(load_recipe(path, registry=builtin_registry), builtin_registry)
    saved = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert saved["eval"] == json.loads(json.dumps(summary["eval"]))
    for row in saved["eval"]:
        assert row["correct_at"] == 1.0 and set(row["pass_at_k"]) == {"1", "8"} and set(row["maj_at_k"]) == {"3", "8"}
        p1, p8 = row["pass_at_k"]["1"]["value"], row["pass_at_k"]["8"]["value"]
        assert p1 == pytest.approx(row["sampled_score"])  # a 0/1 reward: pass@1 is sampled accuracy
        assert p8 >= p1 and row["pass_at_k"]["8"]["problems"] == 24
    sft = saved["eval"][-1]
    assert sft["pass_at_k"]["8"]["value"] > sft["sampled_score"] > 0  # SFT's 40 steps get some samples right
    out = capsys.readouterr().out
    assert "pass@1" in out and "pass@8" in out and "maj@8" in out and "correct = score >= 1" in out
    assert {"greedy", "sampled", "pass@1", "pass@8", "maj@3", "maj@8"} <= set(held_out(saved["eval"]))
