"""Does a recipe learn for every seed? Runs it once per seed and tabulates held-out accuracy per stage.

Run: .venv/bin/python benchmarks/learning.py RECIPE.yaml [--seeds 0-4] [--jobs 1] [--reuse] [key=value ...]

Each seed is a full ``rewardkit run RECIPE seed=N output_dir=<out>/seed<N>`` (the recipe's own file, its own
overrides after it). For every seed it prints greedy and sampled held-out accuracy after each evaluated stage,
the error reduction of the last stage over the one before it (1 - error_after / error_before: 0.5 means the
RL stage removed half of the warm start's mistakes), and the wall time; then the median and the worst seed.
Beside each score: its binomial standard error on the held-out set (300 problems: about +-2.4 points at 70%).

A stage that measures its result on held-out pairs (DPO, reward models) adds that column, e.g. the DPO stage's
``heldout_preference_accuracy``. ``--reuse`` tabulates the runs already in the output folder without training.

With ``REWARDKIT_STAGE_CACHE`` set (docs/operations.md) a stage another run already trained the same way on this
machine (the SFT warm start several CPU recipes share) is copied instead of trained: the table's ``wall s`` then
leaves it out, and the per-stage seconds printed under the table mark it.

``--jobs 2`` runs two seeds at once with one thread each (same results as serial on the same machine: the
runs are deterministic; wall times are then not comparable with serial ones). Exit 0 always; it measures, it
does not judge.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` -> [0, 3, 7]; both forms may be mixed."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return seeds


def stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def error_reduction(before: float, after: float) -> float:
    """Share of the ``before`` model's held-out errors the ``after`` model no longer makes (negative: worse);
    NaN when ``before`` made none (a warm start at 100%)."""
    return (after - before) / (1 - before) if before < 1 else float("nan")


def outcome_key(row: dict) -> float:
    """How well a seed's last stage did, for picking the worst seed: its error reduction; for a seed whose warm
    start was already at 100% (no error to reduce, error reduction NaN) its change in accuracy (0 if it kept
    100%, negative if it lost some), so a seed that lost accuracy from 100% ranks below every seed that gained."""
    return row["change"] if math.isnan(row["err_red"]) else row["err_red"]


def finite_median(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else float("nan")


def run_seed(recipe: str, seed: int, out: str, overrides: list[str], threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    # With REWARDKIT_STAGE_CACHE set, stages another run already trained (the SFT warm start several recipes share)
    # are copied from the cache: the seed's folder is emptied here instead of by --fresh, which does not read it.
    cached = bool(os.environ.get("REWARDKIT_STAGE_CACHE"))
    if cached:
        shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "rewardkit.cli", "run", recipe, f"seed={seed}", f"output_dir={out}", *overrides,
           *([] if cached else ["--fresh"])]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        return {"seed": seed, "error": (proc.stderr or proc.stdout)[-2000:], "wall": time.time() - t0}
    return read_seed(seed, out, time.time() - t0)


def read_seed(seed: int, out: str, wall: float | None = None) -> dict:
    """One finished run's figures from its summary.json (wall: the summary's own time when not measured here)."""
    try:
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        return {"seed": seed, "error": f"no summary in {out}: {exc}", "wall": 0.0}
    if not summary.get("complete"):
        return {"seed": seed, "error": f"{out}: the run did not finish", "wall": 0.0}
    heldout = {f"{s['name']} {k.removeprefix('heldout_')}": s[k] for s in summary["stages"] for k in s
               if k in ("heldout_preference_accuracy", "heldout_accuracy")}
    stages = [(s["name"], s.get("seconds", 0.0), bool(s.get("stage_cache") or s.get("previous_run")))
              for s in summary["stages"]]
    return {"seed": seed, "eval": summary["eval"], "wall": summary["seconds"] if wall is None else wall,
            "heldout": heldout, "stages": stages}


def row_metrics(result: dict) -> dict:
    ev = result["eval"]
    last, prev = ev[-1], ev[-2] if len(ev) > 1 else ev[-1]
    out = {"seed": result["seed"], "wall": result["wall"], "n": ev[0]["n"],
           "greedy": {r["after"]: r["score"] for r in ev},
           "sampled": {r["after"]: r["sampled_score"] for r in ev if "sampled_score" in r},
           "err_red": error_reduction(prev["score"], last["score"]), "change": last["score"] - prev["score"],
           "heldout": result.get("heldout", {}), "stages": result.get("stages", []),
           "gain_over_base": last["score"] - ev[0]["score"]}
    if "sampled_score" in last and "sampled_score" in prev:
        out["sampled_err_red"] = error_reduction(prev["sampled_score"], last["sampled_score"])
    return out


def fmt_score(p: float | None, n: int) -> str:
    return f"{p:6.1%} ±{stderr(p, n) * 100:3.1f}" if p is not None else " " * 12


def fmt_err_red(value: float) -> str:
    return f"{'n/a':>9}" if math.isnan(value) else f"{value:9.1%}"


def print_table(rows: list[dict], recipe: str) -> None:
    stages = list(rows[0]["greedy"])
    sampled = bool(rows[0]["sampled"])
    head = f"{'seed':>6} " + " ".join(f"{s + ' greedy':>13}" for s in stages)
    if sampled:
        head += "  " + " ".join(f"{s + ' sampled':>13}" for s in stages)
    extra = list(rows[0]["heldout"])
    head += "".join(f"  {k:>26}" for k in extra) + f"  {'err. red.':>9}  {'gain/base':>9}  {'wall s':>7}"
    print(f"\n{recipe}: held-out accuracy per stage (± binomial standard error, n = {rows[0]['n']})")
    print(head)

    def line(label: str, r: dict) -> str:
        s = f"{label:>6} " + " ".join(f"{fmt_score(r['greedy'][st], r['n']):>13}" for st in stages)
        if sampled:
            s += "  " + " ".join(f"{fmt_score(r['sampled'].get(st), r['n'] * 1):>13}" for st in stages)
        s += "".join(f"  {r['heldout'][k]:26.1%}" for k in extra)
        return s + f"  {fmt_err_red(r['err_red'])}  {r['gain_over_base'] * 100:+8.1f}  {r['wall']:7.0f}"

    for r in rows:
        print(line(str(r["seed"]), r))
    med = {"seed": "median", "n": rows[0]["n"], "wall": statistics.median(r["wall"] for r in rows),
           "greedy": {st: statistics.median(r["greedy"][st] for r in rows) for st in stages},
           "sampled": {st: statistics.median(r["sampled"][st] for r in rows) for st in stages} if sampled else {},
           "err_red": finite_median(r["err_red"] for r in rows),
           "gain_over_base": statistics.median(r["gain_over_base"] for r in rows),
           "heldout": {k: statistics.median(r["heldout"][k] for r in rows) for k in extra}}
    worst = min(rows, key=outcome_key)
    print(line("median", med))
    print(line("worst", worst) + f"   (seed {worst['seed']})")
    perfect = [r["seed"] for r in rows if math.isnan(r["err_red"])]
    if perfect:
        print(f"warm start at 100% (no error to reduce; ranked by accuracy change, left out of the median error "
              f"reduction) for seeds: {perfect}")
    if sampled and all("sampled_err_red" in r for r in rows):
        fell = [r["seed"] for r in rows if r["sampled"][stages[-1]] < r["sampled"][stages[-2]]]
        print(f"sampled accuracy fell in the last stage for seeds: {fell or 'none'}")
    print(f"last stage's error reduction: median {fmt_err_red(med['err_red']).strip()}, worst "
          f"{fmt_err_red(worst['err_red']).strip()} (seed {worst['seed']}, accuracy change "
          f"{worst['change'] * 100:+.1f} points); base -> final: median {med['gain_over_base'] * 100:+.1f} points, worst "
          f"{min(r['gain_over_base'] for r in rows) * 100:+.1f}; wall median {med['wall']:.0f} s")
    for k in extra:
        print(f"{k}: median {med['heldout'][k]:.1%}, worst {min(r['heldout'][k] for r in rows):.1%}")
    print("stage seconds (* = not trained in this run: taken from the stage cache or a previous run, its time "
          "that run's; not in wall s):")
    for r in rows:
        print(f"  seed {r['seed']}: " + ", ".join(f"{name} {sec:.0f}{'*' if reused else ''}"
                                                  for name, sec, reused in r.get("stages", [])))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*", help="key=value overrides passed to every run")
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at once (each with one thread when > 1)")
    ap.add_argument("--out", default=None, help="default: runs/learning/<recipe name>")
    ap.add_argument("--json", default=None, help="also write the per-seed rows to this file")
    ap.add_argument("--reuse", action="store_true", help="tabulate the finished runs in --out, train nothing")
    args = ap.parse_args(argv)
    recipe = os.path.abspath(args.recipe)
    name = os.path.splitext(os.path.basename(recipe))[0]
    out = os.path.abspath(args.out or os.path.join(REPO, "runs", "learning", name))
    seeds = parse_seeds(args.seeds)
    threads = 1 if args.jobs > 1 else None
    if args.reuse:
        results = [read_seed(s, os.path.join(out, f"seed{s}")) for s in seeds]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda s: run_seed(recipe, s, os.path.join(out, f"seed{s}"), args.overrides,
                                                       threads), seeds))
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"seed {r['seed']} failed:\n{r['error']}", file=sys.stderr)
    rows = [row_metrics(r) for r in results if "error" not in r]
    if rows:
        print_table(rows, os.path.relpath(recipe, REPO))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
