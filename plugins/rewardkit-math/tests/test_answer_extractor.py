"""math.accuracy's answer extractor (rewardkit's held-out maj@k): the answer it checks, one string per answer."""

from __future__ import annotations

from rewardkit.evaluate import k_metrics
from rewardkit_math.accuracy import MathAccuracy


def test_equal_answers_give_one_string_and_no_answer_gives_none():
    acc = MathAccuracy()
    assert acc.extract_answer("so \\boxed{18}") == acc.extract_answer("#### 18.0") == "18"
    assert acc.extract_answer("The answer is 0.50.") == "1/2"
    assert acc.extract_answer("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"  # LaTeX kept as extracted
    assert acc.extract_answer("no number here") is None
    assert MathAccuracy(multiple="reject").extract_answer("\\boxed{1} or \\boxed{2}") is None


def test_equal_extracted_answers_earn_equal_scores_so_the_vote_is_judged_by_them():
    acc = MathAccuracy(workers=1)
    completions = ["#### 18", "\\boxed{18.0}", "#### 17", "#### 17", "#### 17", "#### 18"]
    scores = acc(completions=completions, answer=["18"] * 6)
    assert scores == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    # maj@3 over two problems of three samples: 18 wins the first (correct), 17 the second (wrong).
    out = k_metrics(acc, completions, scores, 3, [1], [3])
    assert out["correct_at"] == 1.0 and out["maj_at_k"]["3"]["value"] == 0.5
    assert MathAccuracy(timeout_verdict=-1.0).score_range is None  # then no range is declared
