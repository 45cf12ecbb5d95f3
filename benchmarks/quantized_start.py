"""What a QLoRA stage starts from: its warm start's held-out accuracy in full precision and loaded the way the stage
trains it (4-bit NF4), and the RL stage's error reduction measured from each.

Run after ``benchmarks/learning.py`` on the same recipe, seeds and overrides (it reads those runs' folders):

    .venv/bin/python benchmarks/quantized_start.py RECIPE.yaml --out DIR [--seeds 0-4] [key=value ...]

For each seed it loads ``DIR/seed<N>``'s recipe (``seed=N output_dir=DIR/seed<N>`` and the overrides), takes the
first stage whose model is quantized, loads the stage before it's saved model with that quantization
(``rewardkit.models.load_for_inference``, as the stage loads its policy before adding adapters) and scores it with
the recipe's own ``eval`` section; the full-precision and RL scores come from the run's summary.json. Prints greedy
and sampled accuracy of the three, both error reductions per seed, their median and worst. Measures, never judges:
exit 0 unless a run folder is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from learning import (error_reduction, finite_median, fmt_err_red, fmt_score, parse_seeds,  # noqa: E402
                      read_seed)


def quantized_score(recipe_path: str, seed: int, out: str, overrides: list[str]) -> tuple[str, str, dict]:
    """(warm-start stage, quantized stage, eval row of the warm start's model loaded in 4-bit)."""
    import tempfile

    from transformers import AutoTokenizer

    from rewardkit import models
    from rewardkit.data import load_data
    from rewardkit.pipeline import _evaluator
    from rewardkit.recipe import load_recipe
    from rewardkit.registry import get_registry

    registry = get_registry()
    recipe = load_recipe(recipe_path, [f"seed={seed}", f"output_dir={out}", *overrides], registry)
    if not recipe.eval:
        raise SystemExit(f"{recipe_path}: no eval: section to score with")
    # The stage a quantized stage starts from: the last one before it that produces a policy (as the pipeline
    # chains them; a reward-model stage does not).
    policies = [s for s in recipe.stages if registry.load("trainers", s.trainer_type).produces_policy]
    pairs = [(a, b) for a, b in zip(policies, policies[1:]) if b.model.get("quantization")]
    if not pairs:
        raise SystemExit(f"{recipe_path}: no quantized stage that starts from an earlier stage's policy")
    before, stage = pairs[0]
    model_dir = os.path.join(out, before.name, "model")
    model = models.load_for_inference(model_dir, stage.model)
    data = load_data(recipe, stage.data, registry)
    with tempfile.TemporaryDirectory() as scratch:  # an environment recipe writes episode transcripts there
        evaluate = _evaluator(dataclasses.replace(recipe, output_dir=scratch), registry)
        return before.name, stage.name, evaluate(model, AutoTokenizer.from_pretrained(model_dir), data)


def summary_line(rows: list[dict], of: str, label: str) -> str:
    """Median and worst of an error reduction; a warm start at 100% (NaN) ranks by its accuracy change."""
    key = f"red_{of}"
    worst = min(rows, key=lambda r: r[f"change_{of}"] if math.isnan(r[key]) else r[key])
    return (f"error reduction {label}: median {finite_median(r[key] for r in rows):.1%}, worst "
            f"{fmt_err_red(worst[key]).strip()} (seed {worst['seed']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--out", required=True, help="the --out folder benchmarks/learning.py wrote")
    args = ap.parse_args(argv)
    rows = []
    for seed in parse_seeds(args.seeds):
        out = os.path.join(os.path.abspath(args.out), f"seed{seed}")
        run = read_seed(seed, out)
        if "error" in run:
            print(run["error"], file=sys.stderr)
            return 1
        before, rl, q = quantized_score(os.path.abspath(args.recipe), seed, out, args.overrides)
        ev = {r["after"]: r for r in run["eval"]}
        rows.append({"seed": seed, "n": q["n"], "fp": ev[before], "q4": q, "rl": ev[rl],
                     "change_fp": ev[rl]["score"] - ev[before]["score"], "change_q4": ev[rl]["score"] - q["score"],
                     "red_fp": error_reduction(ev[before]["score"], ev[rl]["score"]),
                     "red_q4": error_reduction(q["score"], ev[rl]["score"])})
    if not rows:
        return 0
    n = rows[0]["n"]
    print(f"\n{args.recipe}: {before} in full precision, {before} loaded in 4-bit NF4 (what {rl} starts from), "
          f"{rl}; held-out, n = {n}, ± binomial standard error")
    print(f"{'seed':>6} {'fp greedy':>13} {'4-bit greedy':>13} {rl + ' greedy':>13}  {'fp sampled':>13} "
          f"{'4-bit sampled':>13} {rl + ' sampled':>13}  {'err. red. from fp':>17} {'from 4-bit':>10}")
    for r in rows:
        print(f"{r['seed']:>6} {fmt_score(r['fp']['score'], n):>13} {fmt_score(r['q4']['score'], n):>13} "
              f"{fmt_score(r['rl']['score'], n):>13}  {fmt_score(r['fp'].get('sampled_score'), n):>13} "
              f"{fmt_score(r['q4'].get('sampled_score'), n):>13} {fmt_score(r['rl'].get('sampled_score'), n):>13}  "
              f"{fmt_err_red(r['red_fp']):>17} {fmt_err_red(r['red_q4']):>10}")
    print(summary_line(rows, "fp", "from the full-precision warm start"))
    print(summary_line(rows, "q4", "from it loaded in 4-bit"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
