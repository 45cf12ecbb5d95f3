"""Rollout efficiency: does grpo_is learn more per generated completion than TRL's own reuse (``num_iterations``)
and than μ=1 taking as many optimizer steps, judged by a protocol fixed before the evaluation runs?

    python benchmarks/rollout_efficiency.py --quick --jobs 2   # target ≤ 10 min on 2 idle cores (not measured)
    python benchmarks/rollout_efficiency.py --jobs 2           # the whole protocol (planned <= 12 CPU-hours)
    python benchmarks/rollout_efficiency.py --smoke            # the pipeline end to end at toy sizes, measures nothing
    python benchmarks/rollout_efficiency.py --report OUT       # re-print and re-plot OUT/results.jsonl

Tasks: reverse a string of ``--length`` letters (``cbadhe=`` -> ``ehdabc``) from a tiny-llama SFT warm start
(cached). ``dense``: reward = fraction of positions right; ``sparse``: 1 for the exact string, else 0.
Primary metric: greedy exact match on ``--n-eval`` (1,000) held-out strings; secondary: exact match of one
temperature-1 sample per string and the policy's mean per-token entropy on those samples.

Methods (one name each; every one gets the same rollouts of ``--prompts`` × ``--num-generations`` completions, β = 0,
the same learning-rate warm-up over the first ``--warmup-completions`` completions, then a constant rate):
``trl_mu1`` TRL GRPO on-policy (a rollout's minibatches accumulated into one optimizer step);
``trl_iters<μ>`` TRL ``num_iterations``=μ (``--minibatches`` steps per epoch, the same minibatches μ times);
``ctl<μ>`` the equal-step μ=1 control: TRL, one epoch, minibatch = rollout / (minibatches·μ), so as many optimizer
steps per generated completion as μ epochs take;
``is<μ>[+opt…]`` grpo_is ``rollout_epochs``=μ, options: ``noshuf`` (reshuffle off), ``kl<x>`` (early_stop_kl),
``ess<x>`` (early_stop_ess), ``rp<K>`` (replay the last K rollouts), ``rpkl<x>`` (replay_max_kl), ``cap<x>``
(replay_is_cap), ``seq`` (sequence-level replay weights). E.g. ``is4+kl0.02+rp2``.

Protocol (per task; tuning seeds are never reported as results, evaluation seeds never choose anything):
1. grid: each baseline and each μ's plain grpo_is over ``--lrs`` on the tuning seeds; tuning score = area under
   the greedy curve over the budget.
2. screen (first task): grpo_is factors (μ × reshuffle × stop rule × replay) on the tuning seeds at the best rate
   of their μ's plain grpo_is and the next one up; the ``--finalists`` (≤ 6) best by tuning score go on. A later
   task re-grids the rate of the first task's finalists and controls instead.
3. levels, fixed before stage 4: the warm start plus 25/50/75% of the way to the best final tuning score.
4. eval: finalists, ``trl_mu1``, TRL's best ``trl_iters<μ>`` and ``ctl<μ>`` for every μ among them, each at its
   tuned rate, on the ``--eval-seeds`` (at least 10: fewer is refused, except under ``--quick``/``--smoke``, whose
   report says it is not the protocol). Completions to each level per seed (interpolated between
   evaluations; never reached = the budget, reported as a lower bound "≥"); headline = geometric mean over seeds of
   per-seed completion ratios with a paired bootstrap 95% interval, for the tuning-best grpo_is against TRL's best
   μ and against the tuning-better equal-step control; greedy accuracy at 25/50/100% of the budget beside it.
5. timing: seconds per completion of the headline's methods at ``--timing-lengths`` completion lengths (generation
   forced to full length), alone on one thread, drawn against μ=1's measured generation share. Wall-clock to a
   level = completions (measured) × seconds per completion (measured at a length) is a *model*, and labelled so.
A run stops before generating any rollout past the budget (no extra rollout is ever generated or timed).

Runs are appended to ``OUT/results.jsonl`` as each ends (a run that crashes is recorded there as failed, with its
error, and the stage's other runs go on; the protocol stops after the stage and a rerun retries it). Rerunning
the same command resumes; a different setting (anything but ``--jobs``/``--png``) with an existing ``OUT/plan.json``
is refused. The runs themselves are in ``rollout_runs.py``, the summary and report in ``rollout_report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import rollout_stats as st  # noqa: E402
from rollout_report import (MIN_EVAL_SEEDS, PRIMARY, eval_methods, plot, report,  # noqa: E402,F401
                            summarize, summarize_task)
from rollout_runs import (evaluate, parse_method, run_job, run_one, sft_model,  # noqa: E402,F401
                          steps_per_rollout, task_data)

SCREEN_FACTORS = {"mu": [2, 4], "reshuffle": ["", "+noshuf"], "stop": ["", "+kl0.02", "+ess0.5"],
                  "replay": ["", "+rp2"]}
DEFAULTS = dict(length=8, prompts=64, num_generations=8, minibatches=8, eval_every=2, n_eval=1000, sft_steps=150,
                timing_lengths=[8, 16, 32], timing_rollouts=2)
PRESETS = {
    "full": dict(tasks=["dense", "sparse"], tuning_seeds=[1000, 1001], eval_seeds=list(range(10)), budget=12,
                 lrs=[1e-4, 3e-4, 1e-3], baselines=["trl_mu1", "trl_iters2", "trl_iters4", "trl_iters8", "ctl2",
                                                 "ctl4", "ctl8"], screen=True, finalists=6),
    "quick": dict(tasks=["dense"], tuning_seeds=[1000], eval_seeds=[0, 1, 2], budget=6, lrs=[3e-4],
                  baselines=["trl_mu1", "trl_iters4", "ctl4"], screen=False, finalists=2, prompts=32,
                  extra=["is4+ess0.5+rp1"], timing_rollouts=1),
    "smoke": dict(tasks=["dense", "sparse"], tuning_seeds=[1000], eval_seeds=[0, 1], budget=3, lrs=[3e-4],
                  baselines=["trl_mu1", "trl_iters2", "ctl2"], screen=False, finalists=2, prompts=4,
                  num_generations=4, minibatches=2, length=3, n_eval=40, sft_steps=12, eval_every=1,
                  extra=["is2+kl0.02+ess0.5+rp1"], timing_lengths=[3, 5, 7], timing_rollouts=1, mus=[2]),
}
PRESET_ONLY = ("baselines", "screen", "extra")  # no flag sets these: the preset always does
NOT_RESULTS = ("jobs", "report", "out", "png", "png_given")  # arguments a resumed run may change


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="one task, 1 tuning + 3 eval seeds, no screen (target ≤ 10 min, not measured)")
    p.add_argument("--smoke", action="store_true", help="toy sizes: checks the pipeline, measures nothing")
    p.add_argument("--report", metavar="OUT", help="summarise OUT/results.jsonl again, training nothing")
    p.add_argument("--tasks", nargs="+", choices=["dense", "sparse"])
    p.add_argument("--tuning-seeds", type=int, nargs="+")
    p.add_argument("--eval-seeds", type=int, nargs="+", help=f"at least {MIN_EVAL_SEEDS} but under --quick/--smoke")
    p.add_argument("--lrs", type=float, nargs="+", help="learning-rate grid of the grid stage")
    p.add_argument("--mus", type=int, nargs="+", help="μ of the plain grpo_is runs of the grid stage")
    p.add_argument("--budget", type=int, help="rollouts per run (completions = budget × rollout)")
    p.add_argument("--finalists", type=int, help="grpo_is configurations taken to the evaluation seeds (<= 6)")
    p.add_argument("--length", type=int, help="letters per string (completion = length + EOS; default 8)")
    p.add_argument("--prompts", type=int, help="prompts per rollout (default 64, --quick 32)")
    p.add_argument("--num-generations", type=int, help="default 8")
    p.add_argument("--minibatches", type=int, help="optimizer steps per epoch of a rollout (default 8)")
    p.add_argument("--warmup-completions", type=int, help="learning-rate warm-up, in completions (default: 2 rollouts)")
    p.add_argument("--eval-every", type=int, help="evaluate every N rollouts (default 2)")
    p.add_argument("--n-eval", type=int, help="held-out strings (default 1000)")
    p.add_argument("--sft-steps", type=int,
                   help="SFT steps of the warm start (default 150: 31%% greedy exact at length 8 on this machine)")
    p.add_argument("--timing-lengths", type=int, nargs="+", help="default 8 16 32")
    p.add_argument("--timing-rollouts", type=int, help="default 2")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_rollout_efficiency"))
    p.add_argument("--png", default=os.path.join(ROOT, "docs", "rollout_efficiency.png"))
    a = p.parse_args(argv)
    preset = PRESETS["smoke" if a.smoke else "quick" if a.quick else "full"]
    for k, value in {**DEFAULTS, **preset}.items():  # only what the user left unset
        if k in PRESET_ONLY or getattr(a, k, None) is None:
            setattr(a, k, value)
    a.extra = getattr(a, "extra", [])
    a.mus = a.mus or sorted({parse_method(m)["mu"] for m in a.baselines if parse_method(m)["kind"] != "trl"
                             or parse_method(m)["mu"] > 1})
    a.rollout = a.prompts * a.num_generations
    a.warmup_completions = a.warmup_completions or 2 * a.rollout
    a.png_given = a.png != p.get_default("png")
    if a.smoke and not a.png_given:
        a.png = os.path.join(a.out, "rollout_efficiency.png")
    problems = _problems(a)
    if problems:
        p.error("; ".join(problems))
    return a


def _problems(a) -> list[str]:
    ctl_mus = {parse_method(m)["mu"] for m in a.baselines if m.startswith("ctl")}
    problems = [f"rollout {a.rollout} (prompts × num_generations) must split into minibatches × μ = "
                f"{a.minibatches} × {mu} minibatches for ctl{mu}" for mu in sorted(ctl_mus)
                if a.rollout % (a.minibatches * mu)]
    if a.finalists > 6:
        problems.append(f"--finalists {a.finalists}: at most 6 go to the evaluation seeds")
    if set(a.tuning_seeds) & set(a.eval_seeds):
        problems.append(f"tuning seeds {sorted(set(a.tuning_seeds) & set(a.eval_seeds))} are also evaluation seeds")
    if len(a.eval_seeds) < MIN_EVAL_SEEDS and not (a.quick or a.smoke):
        problems.append(f"--eval-seeds: {len(a.eval_seeds)} given, the protocol needs at least {MIN_EVAL_SEEDS} "
                        f"(fewer only with --quick or --smoke)")
    return problems


def settings(a) -> dict:
    """The arguments that decide the runs' results (JSON-normalised, as plan.json stores them)."""
    return {k: v for k, v in json.loads(json.dumps(vars(a), default=str)).items() if k not in NOT_RESULTS}


def check_resume(a) -> None:
    """Refuse (exit 2) to add runs to an ``--out`` whose plan.json was made with other settings: results.jsonl's runs
    would be reused under a key (stage, task, method, rate, seed) that does not hold those settings."""
    path = os.path.join(a.out, "plan.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        before = {k: v for k, v in json.load(f)["args"].items() if k not in NOT_RESULTS}
    now = settings(a)
    diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if diff:
        print(f"error: {path} was made with other settings: " + "; ".join(
            f"{k}: {before.get(k)!r} there, {now.get(k)!r} now" for k in diff)
              + ". Use another --out, or the same arguments to resume.", file=sys.stderr)
        raise SystemExit(2)


# ---------------------------------------------------------------------------------------------- the protocol
def key(r: dict) -> tuple:
    return r["stage"], r["task"], r["method"], r.get("lr"), r["seed"], r.get("length")


def execute(jobs: list[dict], a, done: list[dict], ctx: dict, worker=run_job) -> list[dict]:
    """Run the jobs not already in results.jsonl (``--jobs`` at a time), appending each result as it ends. A run that
    raised is recorded as failed with its error while the others go on; then the protocol stops (exit 1), since
    its choices would rest on missing runs, and a rerun of the same command retries the failed ones."""
    have = {key(r) for r in done}
    todo = [j for j in jobs if key(j) not in have]
    print(f"  {len(jobs)} runs planned, {len(jobs) - len(todo)} already done", flush=True)
    payload = [{**j, "args": dict(vars(a)), **ctx} for j in todo]
    path = os.path.join(a.out, "results.jsonl")
    ended = [_save(r, path) for r in _as_completed(payload, a.jobs, worker)]
    failed = [r for r in ended if r.get("failed")]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(payload)} runs failed (recorded in {path}; rerun the same command "
                         f"to retry them): " + "; ".join(f"{r['method']} lr {r['lr']:g} seed {r['seed']}: "
                                                         f"{r['error']}" for r in failed))
    return done + ended


def _as_completed(payload: list[dict], jobs: int, worker):
    """Each job's result in the order the runs end; a run that raised gives its job with ``failed`` and ``error``."""
    if jobs > 1 and len(payload) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(worker, p): p for p in payload}
            for f in as_completed(futures):
                try:
                    yield f.result()
                except Exception as e:  # noqa: BLE001 - recorded with the run, the other runs go on
                    yield _failure(futures[f], e)
    else:
        for p in payload:
            try:
                yield worker(dict(p))
            except Exception as e:  # noqa: BLE001 - recorded with the run, the other runs go on
                yield _failure(p, e)


def _failure(job: dict, e: BaseException) -> dict:
    return {**{k: v for k, v in job.items() if k not in ("args", "sft", "start")}, "failed": True,
            "error": f"{type(e).__name__}: {e}"}


def _save(r: dict, path: str) -> dict:
    with open(path, "a") as f:
        f.write(json.dumps(r) + "\n")
    if r.get("failed"):
        print(f"  FAILED {r['stage']:<6} {r['task']:<6} {r['method']:<20} lr {r['lr']:<7g} seed {r['seed']:<5} "
              f"{r['error']}", flush=True)
    elif r["stage"] != "timing":
        last = r["curve"][-1]
        print(f"  {r['stage']:<6} {r['task']:<6} {r['method']:<20} lr {r['lr']:<7g} seed {r['seed']:<5} "
              f"greedy {last['greedy']:.1%} sampled {last['sampled']:.1%} entropy {last['entropy']:.3f}  "
              f"{r['train_seconds']:.0f}s ({r['steps']} steps)", flush=True)
    return r


def grid_jobs(task: str, methods: list[str], lrs: list[float], a, stage: str = "grid") -> list[dict]:
    return [{"stage": stage, "task": task, "method": m, "lr": lr, "seed": s}
            for m in methods for lr in lrs for s in a.tuning_seeds]


def tuning_scores(runs: list[dict], task: str, a) -> dict:
    """{method: {lr: mean tuning AUC of the greedy curve}} over the tuning stages of ``task``."""
    out: dict = {}
    for r in runs:
        if r["task"] == task and r["stage"] in ("grid", "screen"):
            out.setdefault(r["method"], {}).setdefault(r["lr"], []).append(
                st.auc(r["curve"], a.budget * a.rollout, PRIMARY))
    return {m: {lr: statistics.fmean(v) for lr, v in lrs.items()} for m, lrs in out.items()}


def screen_methods(mu_best_lr: dict, a) -> list[tuple[str, float]]:
    """Every combination of SCREEN_FACTORS but the plain grpo_is runs of the grid, at the best rate of its μ's
    plain run and at the next rate up the grid."""
    out = []
    for mu in SCREEN_FACTORS["mu"]:
        if mu not in mu_best_lr:
            continue
        lr = mu_best_lr[mu]
        up = [x for x in sorted(a.lrs) if x > lr][:1]
        for sh in SCREEN_FACTORS["reshuffle"]:
            for stop in SCREEN_FACTORS["stop"]:
                for rp in SCREEN_FACTORS["replay"]:
                    name = f"is{mu}{sh}{stop}{rp}"
                    if name != f"is{mu}":
                        out += [(name, x) for x in [lr] + up]
    return out


def select(scores: dict, a) -> dict:
    """What the tuning seeds decide: each method's rate, the grpo_is finalists, TRL's best μ, the better control."""
    best_lr = {m: st.best_by(v) for m, v in scores.items()}
    best = {m: scores[m][best_lr[m]] for m in scores}
    is_ranked = sorted((m for m in best if m.startswith("is")), key=best.get, reverse=True)
    trl_iters = [m for m in best if parse_method(m)["kind"] == "trl"]  # num_iterations = μ, μ = 1 included
    finalists = is_ranked[:a.finalists]
    ctl = [m for m in best if m.startswith("ctl")]
    return {"scores": scores, "best_lr": best_lr, "tuning_auc": best, "finalists": finalists,
            "best_is": finalists[0] if finalists else None,
            "best_trl": max(trl_iters, key=best.get) if trl_iters else None,
            "best_ctl": max(ctl, key=best.get) if ctl else None}


def final_score(runs: list[dict], task: str, method: str, lr: float) -> float:
    vals = [r["curve"][-1][PRIMARY] for r in runs
            if r["task"] == task and r["method"] == method and r["lr"] == lr and r["stage"] in ("grid", "screen")]
    return statistics.fmean(vals)


def plan_task(task: str, first: dict | None, runs: list[dict], a, ctx: dict) -> tuple[list[dict], dict]:
    """Stages 1-3 of one task on the tuning seeds; returns the runs and the selection with the fixed levels."""
    if first is None:
        methods = a.baselines + [f"is{mu}" for mu in a.mus] + a.extra
    else:  # a later task: the first task's finalists and controls, re-gridded here
        methods = eval_methods(first)
    print(f"[{task}] grid: {len(methods)} methods × {len(a.lrs)} rates × {len(a.tuning_seeds)} tuning seeds", flush=True)
    runs = execute(grid_jobs(task, methods, a.lrs, a), a, runs, ctx)
    if a.screen and first is None:
        scores = tuning_scores(runs, task, a)
        mu_lr = {parse_method(m)["mu"]: st.best_by(scores[m]) for m in scores if m in [f"is{mu}" for mu in a.mus]}
        screen = screen_methods(mu_lr, a)
        print(f"[{task}] screen: {len(screen)} grpo_is configurations × {len(a.tuning_seeds)} tuning seeds",
              flush=True)
        runs = execute([{"stage": "screen", "task": task, "method": m, "lr": lr, "seed": s}
                        for m, lr in screen for s in a.tuning_seeds], a, runs, ctx)
    scores = tuning_scores(runs, task, a)
    sel = select(scores, a)
    finals = {m: final_score(runs, task, m, sel["best_lr"][m]) for m in sel["best_lr"]}
    sel["start"] = ctx["start"][PRIMARY]
    sel["best_final"] = max(finals.values())
    sel["levels"] = st.levels(sel["start"], sel["best_final"]) if sel["best_final"] > sel["start"] else None
    return runs, sel


def timing_jobs(sel: dict, a) -> list[dict]:
    methods = list(dict.fromkeys(m for m in ["trl_mu1", sel["best_trl"], sel["best_ctl"], sel["best_is"]] if m))
    return [{"stage": "timing", "task": "dense", "method": m, "lr": sel["best_lr"][m], "seed": 0, "length": n}
            for n in a.timing_lengths for m in methods]


def load_runs(out: str) -> list[dict]:
    path = os.path.join(out, "results.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    return [r for r in runs if not r.get("failed")]  # a failed run is retried, never summarised


def main(argv=None):
    a = parse(argv)
    if a.report:
        a.out = a.report
        with open(os.path.join(a.out, "plan.json")) as f:
            plan = json.load(f)
        png = a.png if a.png_given else None
        for k, v in plan["args"].items():
            if k not in ("report", "out"):
                setattr(a, k, v)
        a.png = png or a.png  # the plot goes where the run put it unless --png says otherwise
        return finish(load_runs(a.out), plan["selections"], a, plan.get("wall_seconds", 0.0))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_resume(a)
    torch.set_num_threads(1)  # before the warm start: its cache key holds the thread count
    t0 = time.perf_counter()
    os.makedirs(a.out, exist_ok=True)
    if not os.path.exists(os.path.join(a.out, "plan.json")):
        _save_plan(a, {}, 0.0)  # the settings on disk before the first run, for check_resume
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    sft = sft_model(a)
    test = task_data(a.length, a.n_eval)["test"]
    start = evaluate(AutoModelForCausalLM.from_pretrained(sft), AutoTokenizer.from_pretrained(sft), test, a.length + 1)
    print(f"warm start ({sft}): greedy {start['greedy']:.1%}, sampled {start['sampled']:.1%}, letters "
          f"{start['letters']:.1%}, entropy {start['entropy']:.3f}", flush=True)
    runs, selections, first, ctx = load_runs(a.out), {}, None, {"sft": sft, "start": start}
    for task in a.tasks:
        runs, sel = plan_task(task, first, runs, a, ctx)
        first, selections[task] = first or sel, sel
        _save_plan(a, selections, time.perf_counter() - t0)  # levels and choices on disk before any eval run
        if sel["levels"]:
            print(f"[{task}] eval: {eval_methods(sel)} × seeds {a.eval_seeds}", flush=True)
            runs = execute([{"stage": "eval", "task": task, "method": m, "lr": sel["best_lr"][m], "seed": s}
                            for m in eval_methods(sel) for s in a.eval_seeds], a, runs, ctx)
    alone = argparse.Namespace(**{**vars(a), "jobs": 1})
    print(f"timing at completion lengths {[n + 1 for n in a.timing_lengths]}, one run at a time", flush=True)
    runs = execute(timing_jobs(first, a), alone, runs, ctx)
    wall = time.perf_counter() - t0
    _save_plan(a, selections, wall)
    finish(runs, selections, a, wall)


def _save_plan(a, selections: dict, wall: float) -> None:
    with open(os.path.join(a.out, "plan.json"), "w") as f:
        json.dump({"args": vars(a), "selections": selections, "wall_seconds": wall}, f, indent=1, default=str)


def finish(runs: list[dict], selections: dict, a, wall: float) -> None:
    for sel in selections.values():  # JSON turned the float learning-rate keys into strings
        sel["scores"] = {m: {float(k): v for k, v in d.items()} for m, d in sel["scores"].items()}
        sel["best_lr"] = {m: float(v) for m, v in sel["best_lr"].items()}
    summary = summarize(runs, selections, a, wall)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    plot(runs, summary, a.png)
    print(f"plot: {a.png}; runs: {os.path.join(a.out, 'results.jsonl')}")
    print("\n".join(report(summary, a)))


if __name__ == "__main__":
    main()
