"""Rollout efficiency: does reusing each rollout for μ epochs (grpo_is) buy accuracy per generated completion and
per second, against TRL GRPO μ=1 and TRL ``num_iterations``=μ, in a regime where generation is the cost?

    python benchmarks/rollout_efficiency.py --quick     # <= 10 min on 2 cores; headline ratios are the last lines
    python benchmarks/rollout_efficiency.py             # the full protocol: 12 methods × 3 rates × 5 seeds (a day)
    python benchmarks/rollout_efficiency.py --from-results A/results.json B/results.json   # re-summarise, merge

Task: reverse a string of ``--length`` letters (``cbadhe...=`` -> ``...ehdabc``): completions of length + 1
tokens (24 by default), generated token by token. Reward: the fraction of positions right (dense: almost every
group of 8 has non-zero variance). Reported accuracy: of temperature-1 samples on the held-out strings
(``--n-eval`` problems × ``--eval-samples``, 1,200 by default), at every ``--eval-every`` rollouts: the fraction of
letters right (``--metric letters``, the default: a 23-letter exact match stays near 0% from this warm start,
which gets about half the letters right) and exact match beside it.

Generation share: on 2 CPU cores with this 0.6M-parameter model, generating is about a third of a μ=1 step
(printed as ``gen share``); with long completions of a real model on a GPU it is most of it, which is where
reusing rollouts should pay in wall-clock. Both are reported: the wall-clock measured here, and a *projection*
(a model, labelled as such) in which every method's measured generation seconds are scaled by the one factor
that makes generation 80% of μ=1's time.

Protocol (identical for every method): tiny-llama SFT-warmed once (cached under ``runs/bench_cache``); rollouts of
``--prompts`` × ``--num-generations`` completions split into ``--minibatches`` optimizer steps per epoch; β = 0;
constant learning rate; ``--budget`` completions per run. Methods: ``trl_mu1`` (TRL GRPO on-policy: the
minibatches of a rollout are accumulated into one optimizer step, TRL's default), ``trl_iters<μ>`` (TRL
``num_iterations``=μ: one optimizer step per minibatch, the same minibatches replayed μ times), ``is<μ>``
(grpo_is ``rollout_epochs``=μ: one step per minibatch, reshuffled every epoch, ``early_stop_kl``); a ``+ds``
suffix adds dynamic sampling.
Each method runs every learning rate of ``--lrs`` on every seed; its best rate (highest median area under the
accuracy-vs-completions curve) is the one compared, and the whole sweep is printed.

Reported: AUC (mean accuracy over the budget), accuracy at 25/50/100% of the budget with 95% confidence
intervals over seeds (Student t), completions and training seconds (evaluation excluded) for each method to reach
the accuracy μ=1 ends with (per seed, linear interpolation between evaluations; a run that never reaches it counts
as its whole budget and is flagged), their ratios to μ=1 and to ``trl_iters<μ>``, the generation share of wall
time, and a PNG of the mean curves with their confidence bands.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

PROJECTED_SHARE = 0.8  # μ=1's generation share in the wall-clock projection
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}  # t(0.975, n-1)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="2 seeds, 3 methods at the learning rates the full sweep picked, a third of the budget")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--methods", nargs="+")
    p.add_argument("--lrs", type=float, nargs="+",
                   help="learning rates swept for every method (default: 3e-4 1e-3 3e-3 for trl_mu1, whose one "
                        "step per rollout sees the whole rollout; 1e-4 3e-4 1e-3 for methods taking "
                        "minibatches × μ steps per rollout)")
    p.add_argument("--lr", action="append", default=[], metavar="METHOD=LR",
                   help="fix one method's rate instead of sweeping (repeatable)")
    p.add_argument("--length", type=int, default=23, help="letters per string (completion = length + EOS)")
    p.add_argument("--prompts", type=int, default=64, help="prompts per rollout")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--minibatches", type=int, default=8, help="optimizer steps per epoch of a rollout")
    p.add_argument("--budget", type=int, help="completions generated per run")
    p.add_argument("--eval-every", type=int, default=2, help="evaluate every N rollouts")
    p.add_argument("--n-eval", type=int, default=300)
    p.add_argument("--eval-samples", type=int, default=4)
    p.add_argument("--early-stop-kl", type=float, default=0.1, help="grpo_is early_stop_kl")
    p.add_argument("--metric", choices=["letters", "exact"], default="letters",
                   help="curves and ratios on the fraction of letters right (default) or on exact matches")
    p.add_argument("--sft-steps", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_rollout_efficiency"))
    p.add_argument("--png", default=os.path.join(ROOT, "docs", "rollout_efficiency.png"))
    p.add_argument("--from-results", nargs="+",
                   help="summarise and plot results.json files again (several: their runs together, e.g. seeds "
                        "run as parallel processes), training nothing")
    a = p.parse_args(argv)
    rollout = a.prompts * a.num_generations
    if a.quick:
        a.seeds = a.seeds or [0, 1]
        a.methods = a.methods or ["trl_mu1", "trl_iters4", "is4"]
        a.budget = a.budget or 6 * rollout
    a.seeds = a.seeds or [0, 1, 2, 3, 4]
    a.methods = a.methods or ["trl_mu1", "trl_iters2", "trl_iters4", "trl_iters8", "is2", "is4", "is8",
                              "trl_mu1+ds", "trl_iters4+ds", "is2+ds", "is4+ds", "is8+ds"]
    a.budget = a.budget or 12 * rollout
    a.fixed = dict(kv.split("=", 1) for kv in a.lr)
    a.fixed = {k: float(v) for k, v in a.fixed.items()}
    if a.quick:  # the rates the full sweep picked on this task (docs/grpo_is.md); quick mode sweeps nothing
        a.fixed = {**QUICK_LRS, **a.fixed}
    if a.budget % rollout or (a.prompts * a.num_generations) % a.minibatches:
        p.error("--budget and the rollout (prompts x num-generations) must be multiples of the rollout / minibatches")
    return a


QUICK_LRS = {"trl_mu1": 3e-4, "trl_iters4": 3e-4, "is4": 3e-4}  # the sweep's best rates (docs/grpo_is.md)
LR_GRID = {"one_step": [3e-4, 1e-3, 3e-3], "many_steps": [1e-4, 3e-4, 1e-3]}


def lr_grid(method: str, a) -> list[float]:
    if method in a.fixed:
        return [a.fixed[method]]
    if a.lrs:
        return a.lrs
    return LR_GRID["one_step" if parse_method(method)[:2] == ("trl", 1) else "many_steps"]


def parse_method(name: str) -> tuple[str, int, bool]:
    """``trl_mu1`` / ``trl_iters4`` / ``is4`` [+ds] -> (kind, μ, dynamic sampling)."""
    base, ds = (name[:-3], True) if name.endswith("+ds") else (name, False)
    for kind, prefix in (("trl", "trl_iters"), ("is", "is")):
        if base.startswith(prefix) and base[len(prefix):].isdigit():
            return kind, int(base[len(prefix):]), ds
    if base == "trl_mu1":
        return "trl", 1, ds
    raise SystemExit(f"unknown method {name!r}: trl_mu1, trl_iters<mu>, is<mu>, each optionally with +ds")


def position_reward(prompts, completions, answer, **kwargs):
    """Fraction of the gold's positions right, over the longer of the two (extra or missing letters cost)."""
    out = []
    for c, g in zip(completions, answer):
        c = c.split("\n")[0].strip()
        out.append(sum(x == y for x, y in zip(c, g)) / max(len(c), len(g), 1))
    return out


def sft_model(a) -> str:
    """tiny-llama after ``--sft-steps`` of SFT (batch 64, lr 3e-3) on the task, built once and cached."""
    from rewardkit import models
    from rewardkit.registry import get_registry

    out = os.path.join(ROOT, "runs", "bench_cache", f"sft-reverse{a.length}-{a.sft_steps}")
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    base = models.resolve("tiny-llama", get_registry())
    tok = AutoTokenizer.from_pretrained(base)
    cfg = SFTConfig(output_dir=out + ".tmp", max_steps=a.sft_steps, learning_rate=3e-3, per_device_train_batch_size=64,
                    lr_scheduler_type="constant_with_warmup", warmup_steps=30, report_to="none", save_strategy="no",
                    bf16=False, seed=0, logging_steps=10 ** 6, disable_tqdm=True)
    t0 = time.time()
    tr = SFTTrainer(model=base, args=cfg, train_dataset=task(a)["train"], processing_class=tok)
    tr.train()
    tr.save_model(out)
    tok.save_pretrained(out)
    print(f"SFT warm start: {a.sft_steps} steps in {time.time() - t0:.0f}s -> {out}", flush=True)
    return out


def task(a):
    from rewardkit.builtin.datasets import reverse

    return reverse(n_train=20000, n_test=a.n_eval, length=a.length, seed=0)


def accuracy(model, tok, test, samples: int, max_new_tokens: int) -> tuple[float, float]:
    """(exact match, mean position reward) of ``samples`` temperature-1 completions per held-out problem, under a
    fixed seed, the global RNG restored afterwards so evaluating never changes a training run."""
    import torch

    was_training = model.training
    model.eval()
    tok.padding_side = "left"
    prompts, answers = list(test["prompt"]), list(test["answer"])
    hits, partial, n = 0, 0.0, 0
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(1234)
        for i in range(0, len(prompts), 150):
            batch = [p for p in prompts[i:i + 150] for _ in range(samples)]
            gold = [x for x in answers[i:i + 150] for _ in range(samples)]
            enc = tok(batch, return_tensors="pt", padding=True)
            gen = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
            outs = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            hits += sum(o.split("\n")[0].strip() == g for o, g in zip(outs, gold))
            partial += sum(position_reward(None, outs, gold))
            n += len(outs)
    model.train(was_training)
    return hits / n, partial / n


def build(method: str, lr: float, seed: int, a, sft: str, data):
    """The trainer of one run: identical rollouts, minibatches and clock for every method."""
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rewardkit.trainers.grpo_is import GRPOISConfig, GRPOISTrainer

    kind, mu, ds = parse_method(method)
    rollout = a.prompts * a.num_generations
    batch = rollout // a.minibatches
    common = dict(output_dir=os.path.join(a.out, f"{method}-lr{lr:g}-{seed}"), per_device_train_batch_size=batch,
                  steps_per_generation=a.minibatches, num_generations=a.num_generations,
                  max_completion_length=a.length + 1, learning_rate=lr, lr_scheduler_type="constant", beta=0.0,
                  report_to="none", save_strategy="no", logging_steps=10 ** 6, bf16=False, seed=seed,
                  disable_tqdm=True, max_steps=10 ** 6, temperature=1.0, gradient_checkpointing=False)
    if ds:
        common.update(dynamic_sampling=True)
    if kind == "trl":
        cfg_cls, cls = (dynamic_sampling_classes() if ds else (GRPOConfig, GRPOTrainer))
        # μ=1 is on-policy: the rollout's minibatches are accumulated into one optimizer step (TRL's default,
        # steps_per_generation = gradient_accumulation_steps), so no step trains on another policy's samples.
        accumulate = a.minibatches if mu == 1 else 1
        cfg = cfg_cls(num_iterations=mu, gradient_accumulation_steps=accumulate, **common)
    else:
        cfg, cls = GRPOISConfig(rollout_epochs=mu, early_stop_kl=a.early_stop_kl, **common), GRPOISTrainer
    tok = AutoTokenizer.from_pretrained(sft)
    return cls(model=sft, args=cfg, train_dataset=data["train"], processing_class=tok, reward_funcs=[position_reward])


def dynamic_sampling_classes():
    from rewardkit.trainers.dynamic_sampling import DynamicSamplingGRPOConfig, DynamicSamplingGRPOTrainer

    return DynamicSamplingGRPOConfig, DynamicSamplingGRPOTrainer


def point(scores: tuple[float, float], metric: str) -> dict:
    exact, letters = scores
    return {"accuracy": letters if metric == "letters" else exact, "exact": exact, "letters": letters}


def run_one(method: str, lr: float, seed: int, a, sft: str, data, start: tuple[float, float]) -> dict:
    import torch
    from transformers import TrainerCallback

    torch.manual_seed(seed)
    tr = build(method, lr, seed, a, sft, data)
    test = data["test"]
    state = {"completions": 0, "rollouts": 0, "eval_s": 0.0, "gen_s": 0.0, "stop": False,
             "curve": [{"completions": 0, **point(start, a.metric), "train_seconds": 0.0, "gen_seconds": 0.0}]}
    score, generate = tr._generate_and_score_completions, tr._generate
    t_start = time.perf_counter()

    def evaluate_now():
        t0 = time.perf_counter()
        scores = accuracy(tr.model, tr.processing_class, test, a.eval_samples, a.length + 1)
        state["eval_s"] += time.perf_counter() - t0
        state["curve"].append({"completions": state["completions"], **point(scores, a.metric),
                               "train_seconds": time.perf_counter() - t_start - state["eval_s"],
                               "gen_seconds": state["gen_s"]})

    def timed_generate(prompts):
        t0 = time.perf_counter()
        try:
            return generate(prompts)
        finally:
            if tr.model.training:
                state["gen_s"] += time.perf_counter() - t0
                state["completions"] += len(prompts) * tr.accelerator.num_processes

    def counting_score(inputs):
        """Every method's rollouts pass here: evaluate before each eval_every-th new rollout, i.e. once the
        model is done with all rollouts so far, and stop at the budget."""
        if tr.model.training and state["rollouts"] and state["rollouts"] % a.eval_every == 0:
            evaluate_now()
            state["stop"] = state["completions"] >= a.budget
        out = score(inputs)
        if tr.model.training:
            state["rollouts"] += 1
        return out

    tr._generate_and_score_completions, tr._generate = counting_score, timed_generate

    class Stop(TrainerCallback):
        def on_step_end(self, args, st, control, **kw):
            control.should_training_stop = control.should_training_stop or state["stop"]

    tr.add_callback(Stop())
    from transformers.trainer_callback import PrinterCallback

    tr.remove_callback(PrinterCallback)  # its end-of-training dict would bury the benchmark's lines
    tr.train()
    total = time.perf_counter() - t_start - state["eval_s"]
    extra = {}
    if hasattr(tr, "rollout_history"):
        hist = tr.rollout_history
        extra = {"mean_epochs_used": statistics.mean(r["epochs_used"] for r in hist) if hist else None,
                 "early_stops": sum(r["early_stop"] for r in hist)}
    ds = {k: sum(v) for k, v in tr._metrics["train"].items() if k.startswith("dynamic_sampling/")}
    return {"method": method, "lr": lr, "seed": seed, "curve": state["curve"], "completions": state["completions"],
            "steps": tr.state.global_step, "train_seconds": total, "generation_seconds": state["gen_s"],
            **extra, **({"dynamic_sampling": ds} if ds else {})}


# ---------------------------------------------------------------------------------------------- analysis
def at(curve: list[dict], x: float, key: str = "accuracy") -> float:
    """The curve's value at ``x`` completions (linear interpolation; the last value beyond the end)."""
    for p, q in zip(curve, curve[1:]):
        if p["completions"] <= x <= q["completions"]:
            w = (x - p["completions"]) / max(q["completions"] - p["completions"], 1)
            return p[key] + w * (q[key] - p[key])
    return curve[-1][key]


def auc(curve: list[dict], budget: int) -> float:
    """Mean accuracy over [0, budget] completions (trapezoids on the evaluated points)."""
    xs = [p["completions"] for p in curve if p["completions"] <= budget]
    ys = [p["accuracy"] for p in curve if p["completions"] <= budget]
    if xs[-1] < budget:
        xs, ys = xs + [budget], ys + [at(curve, budget)]
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:])) / budget


def reach(curve: list[dict], level: float, key: str) -> float | None:
    """``key`` (completions or train_seconds) at the first crossing of ``level``, interpolated; None if never."""
    for p, q in zip(curve, curve[1:]):
        if q["accuracy"] >= level > p["accuracy"] or (p is curve[0] and p["accuracy"] >= level):
            if p["accuracy"] >= level:
                return p[key]
            w = (level - p["accuracy"]) / (q["accuracy"] - p["accuracy"])
            return p[key] + w * (q[key] - p[key])
    return None


def ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% Student-t interval) over seeds."""
    m = statistics.mean(values)
    if len(values) < 2:
        return m, float("nan")
    return m, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def summarize(runs: list[dict], a) -> dict:
    by: dict[str, dict[float, list[dict]]] = {}
    for r in runs:
        by.setdefault(r["method"], {}).setdefault(r["lr"], []).append(r)
    sweep, best = {}, {}
    for m, lrs in by.items():
        sweep[m] = {lr: statistics.median(auc(r["curve"], a.budget) for r in rs) for lr, rs in lrs.items()}
        best[m] = max(sweep[m], key=sweep[m].get)
    chosen = {m: by[m][best[m]] for m in by}
    s = {"budget": a.budget, "seeds": a.seeds, "metric": a.metric, "sweep_median_auc": sweep, "best_lr": best, "methods": {}}
    ref = chosen.get("trl_mu1")
    # Projection (a model, not a measurement): generation made k times slower so that it is PROJECTED_SHARE of
    # μ=1's time, as with long completions of a real model on a GPU; every method's generation is scaled alike.
    k = None
    if ref:
        g = sum(r["generation_seconds"] for r in ref)
        o = sum(r["train_seconds"] for r in ref) - g
        k = PROJECTED_SHARE * o / ((1 - PROJECTED_SHARE) * g) if g > 0 else None
        for rs in by.values():
            for runs_at_lr in rs.values():
                for r in runs_at_lr:
                    for pt in r["curve"]:
                        pt["projected_seconds"] = pt["train_seconds"] + (k - 1) * pt.get("gen_seconds", 0.0)
    s["projection_factor"] = k
    # The accuracy μ=1 (at its best rate) ends with: what every method is timed to reach.
    level = statistics.mean(at(r["curve"], a.budget) for r in ref) if ref else None
    s["equal_accuracy_level"] = level
    for m, rs in chosen.items():
        row = {"lr": best[m], "auc": ci([auc(r["curve"], a.budget) for r in rs])}
        for frac in (0.25, 0.5, 1.0):
            row[f"acc@{frac:g}"] = ci([at(r["curve"], frac * a.budget) for r in rs])
        row["exact@1"] = ci([at(r["curve"], a.budget, "exact") for r in rs])
        gen, tot = sum(r["generation_seconds"] for r in rs), sum(r["train_seconds"] for r in rs)
        row["generation_share"] = gen / max(tot, 1e-9)
        row["seconds_per_1k_completions"] = 1000 * tot / max(sum(r["completions"] for r in rs), 1)
        if level is not None:
            comp = [reach(r["curve"], level, "completions") for r in rs]
            secs = [reach(r["curve"], level, "train_seconds") for r in rs]
            row["reached"] = sum(c is not None for c in comp)
            row["completions_to_level"] = [c if c is not None else a.budget for c in comp]
            row["seconds_to_level"] = [t if t is not None else r["train_seconds"] for t, r in zip(secs, rs)]
            if k is not None:
                proj = [reach(r["curve"], level, "projected_seconds") for r in rs]
                row["projected_seconds_to_level"] = [t if t is not None else r["curve"][-1]["projected_seconds"]
                                                     for t, r in zip(proj, rs)]
        if rs[0].get("mean_epochs_used") is not None:
            row["mean_epochs_used"] = statistics.mean(r["mean_epochs_used"] for r in rs)
        if rs[0].get("dynamic_sampling"):
            row["dynamic_sampling"] = {k: statistics.mean(r["dynamic_sampling"].get(k, 0) for r in rs)
                                       for k in rs[0]["dynamic_sampling"]}
        s["methods"][m] = row
    s["start_accuracy"] = runs[0]["curve"][0]["accuracy"]
    if ref and level <= s["start_accuracy"]:
        s["equal_accuracy_level"] = None  # μ=1 ended no better than the warm start: nothing to reach
    elif ref:
        base = s["methods"]["trl_mu1"]
        for m, row in s["methods"].items():
            row["completions_ratio_vs_mu1"] = (statistics.median(row["completions_to_level"]) /
                                               statistics.median(base["completions_to_level"]))
            row["seconds_ratio_vs_mu1"] = (statistics.median(row["seconds_to_level"]) /
                                           statistics.median(base["seconds_to_level"]))
            if "projected_seconds_to_level" in row:
                row["projected_seconds_ratio_vs_mu1"] = (statistics.median(row["projected_seconds_to_level"]) /
                                                         statistics.median(base["projected_seconds_to_level"]))
            kind, mu, ds = parse_method(m)
            twin = f"trl_iters{mu}" + ("+ds" if ds else "")
            if kind == "is" and twin in s["methods"]:
                row["completions_ratio_vs_" + twin] = (statistics.median(row["completions_to_level"]) /
                                                       statistics.median(s["methods"][twin]["completions_to_level"]))
    return s


def report(s: dict, a) -> list[str]:
    def pm(v):
        return f"{v[0]:.3f}±{v[1]:.3f}" if not math.isnan(v[1]) else f"{v[0]:.3f}"

    lines = [f"learning-rate sweep (median AUC over seeds {s['seeds']}; budget {s['budget']} completions):"]
    for m, sw in s["sweep_median_auc"].items():
        lines.append(f"  {m:<15} " + "  ".join(f"lr {lr:g}: {v:.3f}" for lr, v in sorted(sw.items()))
                     + f"   -> best {s['best_lr'][m]:g}")
    lines.append(f"at each method's best rate (mean ± 95% CI over {len(s['seeds'])} seeds; {a.metric} accuracy of "
                 f"{a.n_eval}×{a.eval_samples} temperature-1 samples):")
    lines.append(f"  {'method':<15} {'AUC':>13} {'acc@25%':>13} {'acc@50%':>13} {'acc@100%':>13} {'exact@100%':>13}"
                 f" {'gen share':>9} {'s/1k compl':>10}")
    for m, r in s["methods"].items():
        lines.append(f"  {m:<15} {pm(r['auc']):>13} {pm(r['acc@0.25']):>13} {pm(r['acc@0.5']):>13} "
                     f"{pm(r['acc@1']):>13} {pm(r['exact@1']):>13} {r['generation_share']:>9.0%} "
                     f"{r['seconds_per_1k_completions']:>10.1f}"
                     + (f"  epochs/rollout {r['mean_epochs_used']:.2f}" if "mean_epochs_used" in r else ""))
    if s["equal_accuracy_level"] is None:
        lines.append("HEADLINE: TRL μ=1 ended no better than the warm start (or did not run): no equal-accuracy ratios")
    else:
        lines.append(f"to reach {s['equal_accuracy_level']:.1%} (TRL μ=1's final accuracy), median over seeds:")
        for m, r in s["methods"].items():
            twin = next((k for k in r if k.startswith("completions_ratio_vs_trl_iters")), None)
            lines.append(f"  {m:<15} reached {r['reached']}/{len(s['seeds'])}  completions "
                         f"{statistics.median(r['completions_to_level']):>7.0f} ({r['completions_ratio_vs_mu1']:.2f}× μ=1"
                         + (f", {r[twin]:.2f}× {twin[len('completions_ratio_vs_'):]}" if twin else "")
                         + f")  train s {statistics.median(r['seconds_to_level']):>6.0f} "
                           f"({r['seconds_ratio_vs_mu1']:.2f}× μ=1)"
                         + (f"  projected {r['projected_seconds_ratio_vs_mu1']:.2f}× μ=1"
                            if "projected_seconds_ratio_vs_mu1" in r else ""))
        if s.get("projection_factor"):
            lines.append(f"  (projected: a model, not a measurement: generation {s['projection_factor']:.1f}× slower, "
                         f"so that it is {PROJECTED_SHARE:.0%} of μ=1's time as with long completions on a GPU)")
        lines.append("headline (goals: completions ≤ 0.5× μ=1 and ≤ 0.8× num_iterations, wall-clock ≤ 0.7× μ=1):")
        for m, r in s["methods"].items():
            if m.startswith("is"):
                twin = next((k for k in r if k.startswith("completions_ratio_vs_trl_iters")), None)
                lines.append(f"HEADLINE {m}: completions {r['completions_ratio_vs_mu1']:.2f}× μ=1"
                             + (f", {r[twin]:.2f}× {twin[len('completions_ratio_vs_'):]}" if twin else "")
                             + f"; wall-clock {r['seconds_ratio_vs_mu1']:.2f}× μ=1 measured"
                             + (f", {r['projected_seconds_ratio_vs_mu1']:.2f}× projected at "
                                f"{PROJECTED_SHARE:.0%} generation" if "projected_seconds_ratio_vs_mu1" in r else ""))
    return lines


def plot(runs: list[dict], s: dict, png: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    grid = sorted({p["completions"] for r in runs for p in r["curve"]})
    for i, (m, row) in enumerate(s["methods"].items()):
        rs = [r for r in runs if r["method"] == m and r["lr"] == row["lr"]]
        stats = [ci([at(r["curve"], x) for r in rs]) for x in grid]
        mean = [v[0] for v in stats]
        half = [0.0 if math.isnan(v[1]) else v[1] for v in stats]
        color = plt.cm.tab10(i % 10)
        ax.plot(grid, mean, color=color, ls="--" if m.endswith("+ds") else "-", label=f"{m} (lr {row['lr']:g})")
        ax.fill_between(grid, [x - h for x, h in zip(mean, half)], [x + h for x, h in zip(mean, half)],
                        color=color, alpha=0.12)
    if s["equal_accuracy_level"] is not None:
        ax.axhline(s["equal_accuracy_level"], color="gray", lw=0.8, ls=":", label="μ=1 final")
    ax.set_xlabel("completions generated")
    ax.set_ylabel(f"held-out sampled accuracy ({s.get('metric', 'letters')})")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(png), exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None):
    a = parse(argv)
    if a.from_results:
        runs = []
        for path in a.from_results:
            with open(path) as f:
                saved = json.load(f)
            if runs and saved["args"]["budget"] != a.budget:
                raise SystemExit(f"{path}: budget {saved['args']['budget']} differs from {a.budget}")
            for k, v in saved["args"].items():
                if k not in ("from_results", "png", "out", "seeds"):
                    setattr(a, k, v)
            runs += saved["runs"]
        a.seeds = sorted({r["seed"] for r in runs})
        a.out = os.path.dirname(os.path.abspath(a.from_results[0]))
    else:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(a.threads)
        load = os.getloadavg()
        print(f"load average at start: {load[0]:.2f} on {os.cpu_count()} CPUs (other jobs slow every method alike, "
              f"ratios are measured in this run)", flush=True)
        sft = sft_model(a)
        data = task(a)
        start = accuracy(AutoModelForCausalLM.from_pretrained(sft), AutoTokenizer.from_pretrained(sft),
                         data["test"], a.eval_samples, a.length + 1)
        print(f"SFT warm start: sampled exact match {start[0]:.1%}, letters right {start[1]:.1%}", flush=True)
        os.makedirs(a.out, exist_ok=True)
        runs = []
        for seed in a.seeds:
            for m in a.methods:
                for lr in lr_grid(m, a):
                    r = run_one(m, lr, seed, a, sft, data, start)
                    runs.append(r)
                    print(f"  seed {seed} {m:<14} lr {lr:<7g} final {r['curve'][-1]['accuracy']:.1%} "
                          f"AUC {auc(r['curve'], a.budget):.3f}  {r['train_seconds']:.0f}s train, generation "
                          f"{r['generation_seconds'] / max(r['train_seconds'], 1e-9):.0%}", flush=True)
                    with open(os.path.join(a.out, "results.json"), "w") as f:
                        json.dump({"args": {k: v for k, v in vars(a).items() if k != "fixed"} |
                                   {"lr": [f"{k}={v}" for k, v in a.fixed.items()]}, "runs": runs}, f)
    s = summarize(runs, a)
    plot(runs, s, a.png, f"string reversal ({a.length} letters), tiny-llama SFT-warmed; rollouts {a.prompts}×"
                         f"{a.num_generations}, {a.minibatches} minibatches/epoch; seeds {a.seeds}")
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(s, f, indent=1, default=str)
    print(f"plot: {a.png}; every curve: {os.path.join(a.out, 'results.json')}")
    print("\n".join(report(s, a)))


if __name__ == "__main__":
    main()
