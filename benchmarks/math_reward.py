"""Throughput and worst case of math.accuracy vs TRL's trl.rewards.accuracy_reward, same inputs, same run.

Run: .venv/bin/python benchmarks/math_reward.py [--n 512] [--batch 64] [--group 8] [--rounds 3] [--workers N]

Each round builds fresh completions in GRPO-shaped calls (``--group`` completions per problem, like
``num_generations``; ``--group 1`` makes every gold distinct), scores them with ours (worker pool, already booted: boot time is printed apart) and with TRL's
(serial, in this process, main thread), and prints verifications per second and the ratio. Then one call
holding a pathological answer measures the worst-case call time of each.
"""

from __future__ import annotations

import argparse
import logging
import random
import time


def make_inputs(n: int, rng: random.Random, group: int = 1) -> tuple[list[str], list[str], list[float]]:
    """GSM8K-like completions with a boxed final answer (about 30% wrong) and their gold answers.

    ``group`` consecutive completions answer the same problem, as GRPO's ``num_generations`` do: they share
    the gold and draw their final answer from the same few right and wrong forms.
    """
    texts, golds, labels = [], [], []
    for i in range(n):
        if i % group == 0:
            seed = rng.random()
        prob = random.Random(seed)
        a, b, c = prob.randint(2, 999), prob.randint(2, 999), prob.randint(2, 97)
        kind = prob.randrange(4)
        if kind == 0:
            gold, right, wrong = str(a * b), f"{a * b:,}", str(a * b + rng.randint(1, 9))
        elif kind == 1:
            # An equal, unreduced fraction: a rounded decimal would be wrong under the reward's exact policy.
            gold, right, wrong = rf"\frac{{{a}}}{{{c}}}", f"{2 * a}/{2 * c}", rf"\frac{{{c}}}{{{a}}}"
        elif kind == 2:
            gold, right, wrong = rf"{a}\sqrt{{{c}}}", rf"\sqrt{{{a * a * c}}}", rf"{a}\sqrt{{{c + 1}}}"
        else:
            gold, right, wrong = rf"\{{{a}, {b}\}}", rf"\{{{b}, {a}\}}", rf"\{{{a}, {b + 1}\}}"
        is_right = rng.random() < 0.7
        answer = right if is_right else wrong
        labels.append(1.0 if is_right else 0.0)
        steps = " ".join(f"Step {k}: {rng.randint(1, 99)} + {rng.randint(1, 99)} is a partial sum." for k in range(6))
        texts.append(f"Let us work it out. {steps} Therefore the final answer is $\\boxed{{{answer}}}$.")
        golds.append(gold)
    return texts, golds, labels


def timed(fn, batches) -> tuple[float, float, list]:
    scores, worst = [], 0.0
    t0 = time.perf_counter()
    for completions, golds in batches:
        t = time.perf_counter()
        scores += fn(completions, golds)
        worst = max(worst, time.perf_counter() - t)
    return time.perf_counter() - t0, worst, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="completions per round")
    ap.add_argument("--batch", type=int, default=64, help="completions per reward call")
    ap.add_argument("--group", type=int, default=8, help="completions per problem (GRPO num_generations)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="checker processes (default min(4, CPUs))")
    args = ap.parse_args()
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)

    from trl.rewards import accuracy_reward

    from rewardkit_math.accuracy import MathAccuracy
    from rewardkit_math.pool import get_pool

    def ours_factory():
        reward = MathAccuracy(workers=args.workers)  # fresh instance: empty result cache
        return lambda comps, golds: reward(completions=comps, answer=golds)

    def trl(comps, golds):
        return accuracy_reward([[{"role": "assistant", "content": c}] for c in comps], golds)

    t = time.perf_counter()
    get_pool(args.workers or min(4, __import__("os").cpu_count() or 1)).warmup()
    print(f"worker pool boot: {time.perf_counter() - t:.2f}s (once per process, not in the figures below)")

    rng = random.Random(0)
    totals = {"ours": 0.0, "trl": 0.0}
    worst = {"ours": 0.0, "trl": 0.0}
    n_total, agree, right = 0, 0, {"ours": 0, "trl": 0}
    for r in range(args.rounds):
        texts, golds, labels = make_inputs(args.n, rng, args.group)
        batches = [(texts[i:i + args.batch], golds[i:i + args.batch]) for i in range(0, args.n, args.batch)]
        t_ours, w_ours, s_ours = timed(ours_factory(), batches)
        t_trl, w_trl, s_trl = timed(trl, batches)
        totals["ours"] += t_ours
        totals["trl"] += t_trl
        worst["ours"], worst["trl"] = max(worst["ours"], w_ours), max(worst["trl"], w_trl)
        n_total += args.n
        agree += sum(a == b for a, b in zip(s_ours, s_trl))
        right["ours"] += sum(a == b for a, b in zip(s_ours, labels))
        right["trl"] += sum(a == b for a, b in zip(s_trl, labels))
        print(f"round {r}: ours {args.n / t_ours:7.1f}/s   trl {args.n / t_trl:7.1f}/s   "
              f"(ours correct {s_ours.count(1.0)}, trl correct {s_trl.count(1.0)}, trl skipped {s_trl.count(None)})")
    ours_rate, trl_rate = n_total / totals["ours"], n_total / totals["trl"]
    print(f"\nverifications/s: math.accuracy {ours_rate:.1f}  trl accuracy_reward {trl_rate:.1f}  "
          f"ratio {ours_rate / trl_rate:.2f}x  (same verdict on {agree}/{n_total})")
    print(f"verdicts matching how each completion was built (right/wrong): ours {right['ours']}/{n_total}  "
          f"trl {right['trl']}/{n_total}")
    print(f"slowest {args.batch}-completion call: ours {worst['ours']:.2f}s  trl {worst['trl']:.2f}s")

    # Worst case: one pathological answer among ordinary ones, default deadlines on both sides.
    texts, golds, _ = make_inputs(args.batch - 1, rng)
    texts.append(r"The answer is $\boxed{9^{9^{9^{9}}}}$.")
    golds.append("2")
    for name, fn in (("ours", ours_factory()), ("trl", trl)):
        t = time.perf_counter()
        scores = fn(texts, golds)
        print(f"call with a 9^9^9^9 answer: {name} {time.perf_counter() - t:.2f}s, its verdict {scores[-1]}")
    print(f"worst single item in our pool so far: {get_pool(1).stats['max_item_seconds']:.2f}s "
          f"(deadline 5.0s); workers killed: {get_pool(1).stats['killed']}")


if __name__ == "__main__":
    main()
