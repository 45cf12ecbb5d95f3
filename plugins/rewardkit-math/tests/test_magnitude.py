"""Number verdicts at every magnitude: exact by default, a relative tolerance only when asked.

math-verify 0.9 alone rounds to 6 decimal places, so every number below 1e-6 equalled every other
(``1/2^99`` was ``1/2^98``) and truncated decimals equalled fractions (``0.333333`` was ``1/3``).
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from rewardkit_math.accuracy import MathAccuracy, plain_verdict
from rewardkit_math.numeric import Tolerance, close, tolerance

EXPONENTS = list(range(-300, 301, 50))  # -300, -250, ..., 300


def test_close_worked_by_hand():
    third, truncated = Fraction(1, 3), Fraction(333333, 10 ** 6)
    assert not close(third, truncated, Tolerance())
    # |1/3 - 0.333333| = 1/3000000; relative to 1/3 that is 1e-6 exactly: inside 1e-6, outside 9e-7
    assert close(third, truncated, tolerance(1e-6)) and not close(third, truncated, tolerance(9e-7))
    assert tolerance(1e-5).rel == Fraction(1, 100000)  # the decimal as written, not the nearest double
    assert tolerance(precision=2).abs == Fraction(5, 1000)  # half a unit in the 2nd place
    assert close(Fraction(314159, 10 ** 5), Fraction(314, 100), tolerance(precision=2))
    assert not close(Fraction(1, 2 ** 99), Fraction(1, 2 ** 98), tolerance(1e-6))  # relative: 100% apart
    assert close(Fraction(0), Fraction(0), Tolerance()) and not close(Fraction(0), Fraction(1, 10 ** 300),
                                                                      tolerance(0.5))


def _scores(pairs, **params):
    reward = MathAccuracy(timeout=10.0, **params)
    return reward(completions=[rf"\boxed{{{a}}}" for _, a in pairs], answer=[g for g, _ in pairs])


def _magnitude_pairs():
    """(gold, answer, right by default, right with rel_tol=1e-5) at every exponent."""
    cases = []
    for e in EXPONENTS:
        p = f"10^{{{e}}}"
        cases += [
            (p, p, True, True),
            (p, rf"2\times {p}", False, False),
            (p, rf"1.000001\times {p}", False, True),  # one part in a million
            (p, rf"1.001\times {p}", False, False),  # one part in a thousand
            (f"-{p}", p, False, False),
            (rf"-3\times {p}", rf"-3\times {p}", True, True),
            (rf"-3\times {p}", rf"-3.00000001\times {p}", False, True),
            (rf"\frac{{1}}{{3}}\times {p}", rf"0.333333\times {p}", False, True),
        ]
    return cases


@pytest.fixture(scope="module")
def magnitude_results():
    cases = _magnitude_pairs()
    pairs = [(g, a) for g, a, _, _ in cases]
    return cases, _scores(pairs), _scores(pairs, rel_tol=1e-5)


def test_exact_at_every_magnitude_from_1e_minus_300_to_1e300(magnitude_results):
    cases, exact, _ = magnitude_results
    wrong = [(g, a, s) for (g, a, right, _), s in zip(cases, exact) if s != (1.0 if right else 0.0)]
    assert not wrong, wrong


def test_relative_tolerance_works_at_every_magnitude(magnitude_results):
    cases, _, tolerant = magnitude_results
    wrong = [(g, a, s) for (g, a, _, right), s in zip(cases, tolerant) if s != (1.0 if right else 0.0)]
    assert not wrong, wrong


def test_tiny_powers_and_fractions_vs_truncated_decimals():
    pairs = [
        (r"\frac{1}{2^{99}}", r"\frac{1}{2^{98}}"),  # the reported case
        (r"\frac{1}{2^{99}}", r"2^{-99}"),
        (r"\frac{1}{3}", "0.333333"), (r"\frac{1}{3}", "0.3333333333333333"),
        (r"\frac{2}{3}", "0.666667"), (r"\frac{1}{7}", "0.142857"), (r"-\frac{1}{7}", "-0.142857"),
        (r"\frac{1}{8}", "0.125"), (r"-\frac{5}{4}", "-1.25"),
        ("0", "0.0"), ("0", r"10^{-300}"), ("0", "-0"),
    ]
    assert _scores(pairs) == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    # asked-for tolerance: truncations within 1e-5 relative pass; zero still only equals zero
    assert _scores(pairs, rel_tol=1e-5) == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]


def test_plain_decimals_are_exact_in_process():
    """Plain decimals never reach math-verify: decided exactly here, digits beyond a double's included."""
    assert plain_verdict(r"\boxed{0.3}", "0.30000000000000004")[0] == "wrong"
    assert plain_verdict(r"\boxed{0.1}", "0.10000000000000001")[0] == "wrong"
    assert plain_verdict(r"\boxed{123456789012345678901234567890}", "123456789012345678901234567891")[0] == "wrong"
    assert plain_verdict(r"\boxed{-2.50}", "-2.5")[0] == "correct"
    assert plain_verdict(r"\boxed{0.3}", "0.30000000000000004", tolerance(1e-9))[0] == "correct"
    # 1000001 is 1/1000001 (just under 1e-6) away from 1000000, relatively
    assert plain_verdict(r"\boxed{1000000}", "1000001", tolerance(1e-6))[0] == "correct"
    assert plain_verdict(r"\boxed{1000000}", "1000001", tolerance(9e-7))[0] == "wrong"
