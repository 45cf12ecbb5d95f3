"""Programs/second of the code.tests sandbox vs one plain `python -I -c` subprocess per program.

Run: .venv/bin/python benchmarks/code_reward.py [--programs N] [--workers W]

Both sides run the same fixed set of short programs (stdin/stdout and function-call), measured in the same
run on the same machine. The sandbox side is fully isolated (bwrap, PID/net/IPC namespaces, per-slot
pids+memory cgroups, unprivileged uid, rlimits) and judges every output; the baseline only runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

PROGRAMS = [
    ("a, b = map(int, input().split())\nprint(a + b)\n", {"stdin": "3 4\n", "stdout": "7\n"}),
    ("print(input()[::-1])\n", {"stdin": "abc\n", "stdout": "cba\n"}),
    ("n = int(input())\nprint(sum(range(n + 1)))\n", {"stdin": "100\n", "stdout": "5050\n"}),
    ("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
     {"call": "fib(20)", "expected": 6765}),
    ("def rev(xs):\n    return xs[::-1]\n", {"call": "rev([1, 2, 3])", "expected": [3, 2, 1]}),
    ("import math\nprint(math.factorial(int(input())))\n", {"stdin": "10\n", "stdout": "3628800\n"}),
]


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def baseline(programs, workers):
    """One fresh interpreter per program, as a naive reward would do; output compared, no isolation."""
    def one(item):
        code, case = item
        t = time.perf_counter()
        src = code if "call" not in case else code + f"\nprint(repr({case['call']}))\n"
        out = subprocess.run([sys.executable, "-I", "-c", src], input=case.get("stdin", ""), text=True,
                             capture_output=True, timeout=10)
        ok = (out.stdout == case["stdout"]) if "stdout" in case else out.stdout.strip() == repr(case["expected"])
        return time.perf_counter() - t, ok

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        res = list(ex.map(one, programs))
    return time.perf_counter() - t, [r[0] for r in res], all(r[1] for r in res)


def sandboxed(programs, workers):
    from rewardkit_code.reward import CodeTests
    from rewardkit_code.sandbox import shared_pool

    reward = CodeTests(timeout=5, workers=workers)
    shared_pool(reward.config, workers)  # start-up is paid once per training run, not per program
    reward(prompts=[""], completions=[PROGRAMS[0][0]], tests=[json.dumps([PROGRAMS[0][1]])])  # warm
    lat = []

    def timed(item):
        code, case = item
        t = time.perf_counter()
        score = reward._score(shared_pool(reward.config, workers), code, json.dumps([case]))[0]
        lat.append(time.perf_counter() - t)
        return score

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        scores = list(ex.map(timed, programs))
    total = time.perf_counter() - t
    # The public entry point too: one batched reward call over all programs.
    t = time.perf_counter()
    batch = reward(prompts=[""] * len(programs), completions=[c for c, _ in programs],
                   tests=[json.dumps([case]) for _, case in programs])
    batch_s = time.perf_counter() - t
    return total, lat, all(s == 1.0 for s in scores) and all(s == 1.0 for s in batch), batch_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=300)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    args = ap.parse_args()
    programs = [PROGRAMS[i % len(PROGRAMS)] for i in range(args.programs)]
    n = len(programs)
    b_total, b_lat, b_ok = baseline(programs, args.workers)
    s_total, s_lat, s_ok, batch_s = sandboxed(programs, args.workers)
    b_rate, s_rate = n / b_total, n / s_total
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {n} programs, "
          f"{args.workers} workers")
    print(f"baseline  subprocess.run([python, '-I', '-c', ...]) : {b_rate:7.1f} programs/s   "
          f"p50 {1000 * statistics.median(b_lat):6.1f} ms   p99 {1000 * percentile(b_lat, 99):6.1f} ms   "
          f"(all correct: {b_ok})")
    print(f"sandbox   code.tests (bwrap+cgroups, warm workers)  : {s_rate:7.1f} programs/s   "
          f"p50 {1000 * statistics.median(s_lat):6.1f} ms   p99 {1000 * percentile(s_lat, 99):6.1f} ms   "
          f"(all passed: {s_ok})")
    print(f"sandbox   one batched reward call over {n} programs   : {n / batch_s:7.1f} programs/s")
    print(f"ratio sandbox/baseline: {s_rate / b_rate:.1f}x")
    if not (b_ok and s_ok):
        sys.exit("a program was judged wrong: the benchmark is invalid")


if __name__ == "__main__":
    main()
