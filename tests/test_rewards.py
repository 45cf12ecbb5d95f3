from rewardkit.builtin.rewards import ExactMatch
from rewardkit.testing import check_reward


def test_exact_match_first_line_and_conversational():
    fn = ExactMatch()
    out = fn(None, ["46\nbecause", " 46 ", [{"role": "assistant", "content": "46"}], "47"], answer=["46"] * 4)
    assert out == [1.0, 1.0, 1.0, 0.0]


def test_partial_credit_counts_digits_from_the_right_and_stays_below_exact():
    fn = ExactMatch(partial_credit=0.5)
    out = fn(None, ["162", "152", "62", "1620", ""], answer=["162"] * 5)
    assert out == [1.0, 0.5 * 2 / 3, 0.5 * 2 / 3, 0.0, 0.0]


def test_exact_match_meets_the_reward_contract():
    check_reward(ExactMatch(), answer=["4", "blue", "hi", "8"])
