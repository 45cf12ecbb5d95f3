"""Fuzz / stress: random and adversarial completions from the main thread and from a thread pool.

Promises checked: no call raises, every reward is None or in [0, 1], no item takes longer than its deadline
plus a small margin, and no call hangs (faulthandler aborts the run with tracebacks if one does).
"""

from __future__ import annotations

import faulthandler
import random
import string
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rewardkit_math.accuracy import MathAccuracy
from rewardkit_math.pool import get_pool

TIMEOUT = 1.0
MARGIN = 1.0  # parent-side slack on a loaded 2-core box (reading results late, killing, reaping)
BATCH = 16
TOKENS = [r"\frac", "{", "}", "^", "_", r"\sqrt", r"\boxed{", r"\left(", r"\right)", "x", "y", r"\pi", r"\infty",
          r"\{", r"\}", ",", "=", "<", r"\le", r"\text{", r"\%", r"\$", "####", r"\cdot", "!", "(", ")", "[", "]",
          r"\begin{pmatrix}", r"\\", "&", r"\end{pmatrix}", "-", "+", "/", ".", " ", "The answer is ", r"\pm",
          "<answer>", "</answer>", r"\fbox{", "%", "$", r"\dfrac", r"\log", r"\sin", "e", "i", r"\mathrm{", "\n"]
GOLDS = ["3", r"\frac{1}{2}", r"\{1,2\}", "(1,2]", "y=2x+1", r"2\sqrt{2}", "#### 42", r"50\%", r"\frac{", "", "x"]


def _random_string(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.3:
        return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 200)))
    soup = "".join(rng.choice(TOKENS + list("0123456789")) for _ in range(rng.randint(1, 40)))
    if kind < 0.5:
        return soup
    if kind < 0.9:
        return rf"\boxed{{{soup}}}"
    return "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(1, 100)))  # unicode, NULs


def _adversarial(rng: random.Random, n_towers: int) -> list[str]:
    out = ["{" * 5000, r"\frac{" * 2000, r"\boxed{" * 10000, "9" * 5000, r"\boxed{" + "9" * 5000 + "}",
           "x" * 300_000 + r"\boxed{3}", r"\boxed{" + "(" * 3000 + ")" * 3000 + "}", "\x00" * 1000,
           r"\boxed{\sqrt{\sqrt{\sqrt{\sqrt{\sqrt{\sqrt{\sqrt{\sqrt{2}}}}}}}}}", r"\boxed{1/0}", r"\boxed{0^0}",
           r"\boxed{\frac{0}{0}}", r"\boxed{" + "+".join(["x"] * 2000) + "}"]
    towers = [r"\boxed{9^{9^{9^{9}}}}", r"\boxed{(10^{100})!}", r"\boxed{1000000!}", r"\boxed{10^{10^{10}}}",
              r"\boxed{2^{2^{2^{2^{2^{2}}}}}}", r"\boxed{100!!}", r"\boxed{9^{9^{9}}}"]
    return out + [rng.choice(towers) for _ in range(n_towers)]


def _check_batch(reward, batch, golds, deadline_per_call):
    t0 = time.monotonic()
    scores = reward(completions=batch, answer=golds)
    elapsed = time.monotonic() - t0
    assert len(scores) == len(batch)
    assert all(s is None or 0.0 <= s <= 1.0 for s in scores), scores
    return elapsed


def _fuzz(n_random: int, n_towers: int, threads: int, seed: int) -> dict:
    rng = random.Random(seed)
    strings = [_random_string(rng) for _ in range(n_random)] + _adversarial(rng, n_towers)
    rng.shuffle(strings)
    golds = [rng.choice(GOLDS) for _ in strings]
    batches = [(strings[i:i + BATCH], golds[i:i + BATCH]) for i in range(0, len(strings), BATCH)]
    pool = get_pool(2)
    pool.warmup()
    pool.stats["max_item_seconds"] = 0.0
    kills0 = pool.stats["killed"]
    reward = MathAccuracy(timeout=TIMEOUT, workers=2)
    # A call of n items can, at worst, see every item time out, plus workers rebooting after kills.
    per_call = BATCH * (TIMEOUT + MARGIN) + 30.0
    faulthandler.dump_traceback_later(len(batches) * per_call + 120, exit=True)
    t0 = time.monotonic()
    try:
        half = len(batches) // 2
        worst = max(_check_batch(reward, b, g, per_call) for b, g in batches[:half])  # main thread
        with ThreadPoolExecutor(threads) as ex:
            futures = [ex.submit(_check_batch, reward, b, g, per_call) for b, g in batches[half:]]
            worst_threaded = max(f.result() for f in futures)
    finally:
        faulthandler.cancel_dump_traceback_later()
    stats = reward.stats()
    report = {"strings": len(strings), "seconds": round(time.monotonic() - t0, 1),
              "worst_call_main_s": round(worst, 2), "worst_call_threads_s": round(worst_threaded, 2),
              "max_item_s": round(pool.stats["max_item_seconds"], 2), "killed": pool.stats["killed"] - kills0,
              **{k: stats[k] for k in ("timeout", "error", "correct", "wrong", "no_answer", "gold_unparseable")}}
    print("fuzz:", report)
    assert stats["samples"] == len(strings)
    assert pool.stats["max_item_seconds"] <= TIMEOUT + MARGIN, report
    assert worst <= per_call, report
    return report


def test_fuzz_quick():
    report = _fuzz(n_random=1500, n_towers=6, threads=4, seed=0)
    assert report["timeout"] >= 1  # the towers really did hit the deadline, and the run went on


@pytest.mark.slow
def test_fuzz_heavy():
    report = _fuzz(n_random=6000, n_towers=20, threads=8, seed=1)
    assert report["timeout"] >= 5
