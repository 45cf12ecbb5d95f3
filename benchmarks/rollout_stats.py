"""The statistics of ``benchmarks/rollout_efficiency.py``, as small pure functions (tests/test_rollout_benchmark.py).

A *curve* is a list of points ``{"completions": n, <metric>: value, ...}`` in increasing ``completions``, the first
at 0 (the warm start).
"""

from __future__ import annotations

import math
import random
import statistics

LEVEL_FRACTIONS = (0.25, 0.5, 0.75)


def levels(start: float, best_final: float, fractions=LEVEL_FRACTIONS) -> list[float]:
    """The accuracy levels fixed before any evaluation run: the warm start plus each fraction of the way to the best
    final score on the tuning seeds. Refused when the tuning runs did not improve on the warm start."""
    if not best_final > start:
        raise ValueError(f"the best final tuning score {best_final:.4f} is not above the warm start {start:.4f}: "
                         f"no level to reach")
    return [start + f * (best_final - start) for f in fractions]


def at(curve: list[dict], x: float, key: str) -> float:
    """``key`` at ``x`` completions, linearly interpolated between evaluations (the last value beyond the end)."""
    for p, q in zip(curve, curve[1:]):
        if p["completions"] <= x <= q["completions"]:
            w = (x - p["completions"]) / max(q["completions"] - p["completions"], 1e-12)
            return p[key] + w * (q[key] - p[key])
    return curve[-1][key]


def first_reach(curve: list[dict], level: float, key: str, x: str = "completions") -> float | None:
    """``x`` (completions, seconds) at which ``key`` first reaches ``level``, interpolated linearly between the two
    evaluations that straddle it; None if it never does."""
    if curve[0][key] >= level:
        return curve[0][x]
    for p, q in zip(curve, curve[1:]):
        if q[key] >= level > p[key]:
            w = (level - p[key]) / (q[key] - p[key])
            return p[x] + w * (q[x] - p[x])
    return None


def censored_cost(curve: list[dict], level: float, key: str, budget: float) -> tuple[float, bool]:
    """(completions to reach ``level``, censored): a run that never reaches it counts as the whole ``budget`` and
    is flagged, its true cost being only bounded below by the budget."""
    hit = first_reach(curve, level, key)
    return (budget, True) if hit is None else (hit, False)


def geometric_mean(values: list[float]) -> float:
    """exp(mean(log v)); every value must be > 0."""
    if not values or min(values) <= 0:
        raise ValueError(f"geometric mean needs positive values, got {values}")
    return math.exp(statistics.fmean(math.log(v) for v in values))


def _bootstrap(values: list[float], n_boot: int, seed: int, alpha: float) -> tuple[float, float]:
    """(1 − alpha) percentile interval of the mean of ``values`` over ``n_boot`` resamples with replacement: the
    resampled means sorted, the low end at index ⌊alpha/2·(n_boot − 1)⌋, the high end at ⌈(1 − alpha/2)·(n_boot − 1)⌉."""
    rng = random.Random(seed)
    n = len(values)
    boots = sorted(statistics.fmean(rng.choice(values) for _ in range(n)) for _ in range(n_boot))
    return boots[math.floor(alpha / 2 * (n_boot - 1))], boots[math.ceil((1 - alpha / 2) * (n_boot - 1))]


def paired_ratio(num: list[float], den: list[float], n_boot: int = 10000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float, float]:
    """Geometric mean over seeds of the per-seed ratios num[i]/den[i] (the same seed is one pair), with a paired
    bootstrap (1 − alpha) percentile interval: seeds are resampled with replacement, each resample keeping its
    pairs together. Returns (estimate, low, high)."""
    if len(num) != len(den) or not num:
        raise ValueError(f"paired samples need equal, non-zero lengths, got {len(num)} and {len(den)}")
    logs = [math.log(a / b) for a, b in zip(num, den)]
    lo, hi = _bootstrap(logs, n_boot, seed, alpha)
    return math.exp(statistics.fmean(logs)), math.exp(lo), math.exp(hi)


def auc(curve: list[dict], budget: float, key: str) -> float:
    """Mean of ``key`` over [0, budget] completions (trapezoids between evaluations): the tuning score."""
    xs = [p["completions"] for p in curve if p["completions"] <= budget]
    ys = [p[key] for p in curve if p["completions"] <= budget]
    if xs[-1] < budget:
        xs, ys = xs + [budget], ys + [at(curve, budget, key)]
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:])) / budget


def best_by(scores: dict, key=None):
    """The argmax of ``scores`` (ties: the first in insertion order, so a grid's order decides, never chance)."""
    best = None
    for k, v in scores.items():
        v = v if key is None else key(v)
        if best is None or v > best[1]:
            best = (k, v)
    return best[0]


def median_and_worst(values: list[float], higher_is_better: bool = True) -> tuple[float, float]:
    return statistics.median(values), (min(values) if higher_is_better else max(values))


def mean_ci(values: list[float], n_boot: int = 10000, seed: int = 0,
            alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean over seeds with a bootstrap (1 − alpha) percentile interval (accuracy at fixed budgets)."""
    return (statistics.fmean(values), *_bootstrap(values, n_boot, seed, alpha))
