"""Rollout efficiency: does grpo_is learn more per generated completion than TRL's own reuse (``num_iterations``)
and than μ=1 taking as many optimizer steps, judged by a protocol fixed before the evaluation runs?

    python benchmarks/rollout_efficiency.py --quick --jobs 2   # <= 10 min on 2 idle cores; HEADLINE lines last
    python benchmarks/rollout_efficiency.py --jobs 2           # the whole protocol (planned <= 12 CPU-hours)
    python benchmarks/rollout_efficiency.py --smoke            # the pipeline end to end at toy sizes (< 3 min)
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
   tuned rate, on the ``--eval-seeds`` (≥ 10). Completions to each level per seed (interpolated between
   evaluations; never reached = the budget, reported as a lower bound "≥"); headline = geometric mean over seeds of
   per-seed completion ratios with a paired bootstrap 95% interval, for the tuning-best grpo_is against TRL's best
   μ and against the tuning-better equal-step control; greedy accuracy at 25/50/100% of the budget beside it.
5. timing: seconds per completion of the headline's methods at ``--timing-lengths`` completion lengths (generation
   forced to full length), alone on one thread, drawn against μ=1's measured generation share. Wall-clock to a
   level = completions (measured) × seconds per completion (measured at a length) is a *model*, and labelled so.
A run stops before generating any rollout past the budget (no extra rollout is ever generated or timed).
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import rollout_stats as st  # noqa: E402

PRIMARY = "greedy"
SCREEN_FACTORS = {"mu": [2, 4], "reshuffle": ["", "+noshuf"], "stop": ["", "+kl0.02", "+ess0.5"],
                  "replay": ["", "+rp2"]}
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


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one task, 1 tuning + 3 eval seeds, no screen (<= 10 min)")
    p.add_argument("--smoke", action="store_true", help="toy sizes: checks the pipeline, measures nothing")
    p.add_argument("--report", metavar="OUT", help="summarise OUT/results.jsonl again, training nothing")
    p.add_argument("--tasks", nargs="+", choices=["dense", "sparse"])
    p.add_argument("--tuning-seeds", type=int, nargs="+")
    p.add_argument("--eval-seeds", type=int, nargs="+")
    p.add_argument("--lrs", type=float, nargs="+", help="learning-rate grid of the grid stage")
    p.add_argument("--mus", type=int, nargs="+", default=None, help="μ of the plain grpo_is runs of the grid stage")
    p.add_argument("--budget", type=int, help="rollouts per run (completions = budget × rollout)")
    p.add_argument("--finalists", type=int, help="grpo_is configurations taken to the evaluation seeds (<= 6)")
    p.add_argument("--length", type=int, default=8, help="letters per string (completion = length + EOS)")
    p.add_argument("--prompts", type=int, default=64, help="prompts per rollout")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--minibatches", type=int, default=8, help="optimizer steps per epoch of a rollout")
    p.add_argument("--warmup-completions", type=int, help="learning-rate warm-up, in completions (default: 2 rollouts)")
    p.add_argument("--eval-every", type=int, default=2, help="evaluate every N rollouts")
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--sft-steps", type=int, default=150,
                   help="SFT steps of the warm start (150 at length 8: 31%% greedy exact on this machine)")
    p.add_argument("--timing-lengths", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--timing-rollouts", type=int, default=2)
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_rollout_efficiency"))
    p.add_argument("--png", default=os.path.join(ROOT, "docs", "rollout_efficiency.png"))
    a = p.parse_args(argv)
    preset = PRESETS["smoke" if a.smoke else "quick" if a.quick else "full"]
    for key, value in preset.items():
        if getattr(a, key, None) in (None, p.get_default(key)) or key in ("baselines", "screen", "extra"):
            setattr(a, key, value)
    a.extra = getattr(a, "extra", [])
    a.mus = a.mus or sorted({parse_method(m)["mu"] for m in a.baselines if parse_method(m)["kind"] != "trl"
                             or parse_method(m)["mu"] > 1})
    a.rollout = a.prompts * a.num_generations
    a.warmup_completions = a.warmup_completions or 2 * a.rollout
    a.png_given = a.png != p.get_default("png")
    if a.smoke and not a.png_given:
        a.png = os.path.join(a.out, "rollout_efficiency.png")
    ctl_mus = {parse_method(m)["mu"] for m in a.baselines if m.startswith("ctl")}
    problems = [f"rollout {a.rollout} (prompts × num_generations) must split into minibatches × μ = "
                f"{a.minibatches} × {mu} minibatches for ctl{mu}" for mu in sorted(ctl_mus)
                if a.rollout % (a.minibatches * mu)]
    if a.finalists > 6:
        problems.append(f"--finalists {a.finalists}: at most 6 go to the evaluation seeds")
    if set(a.tuning_seeds) & set(a.eval_seeds):
        problems.append(f"tuning seeds {sorted(set(a.tuning_seeds) & set(a.eval_seeds))} are also evaluation seeds")
    if problems:
        p.error("; ".join(problems))
    return a


def parse_method(name: str) -> dict:
    """``trl_mu1`` / ``trl_iters<μ>`` / ``ctl<μ>`` / ``is<μ>[+opt…]`` -> its settings (module docstring)."""
    head, *opts = name.split("+")
    for kind, prefix in (("trl", "trl_iters"), ("ctl", "ctl"), ("is", "is"), ("trl", "trl_mu")):
        if head.startswith(prefix) and head[len(prefix):].isdigit() and (prefix != "trl_mu" or head == "trl_mu1"):
            m = {"kind": kind, "mu": int(head[len(prefix):]), "reshuffle": True, "early_stop_kl": None,
                 "early_stop_ess": None, "replay_rollouts": 0, "replay_max_kl": None, "replay_is_cap": 2.0,
                 "replay_is_level": "token"}
            break
    else:
        raise SystemExit(f"unknown method {name!r}: trl_mu1, trl_iters<mu>, ctl<mu>, is<mu>[+options]")
    if opts and m["kind"] != "is":
        raise SystemExit(f"{name!r}: options (+...) are grpo_is's, for is<mu> methods only")
    prefixes = (("rpkl", "replay_max_kl", float), ("rp", "replay_rollouts", int), ("kl", "early_stop_kl", float),
                ("ess", "early_stop_ess", float), ("cap", "replay_is_cap", float))
    for o in opts:
        if o in ("noshuf", "seq"):
            m.update({"reshuffle": False} if o == "noshuf" else {"replay_is_level": "sequence"})
            continue
        hit = next(((k, cast) for pre, k, cast in prefixes if o.startswith(pre) and _number(o[len(pre):])), None)
        if hit is None:
            raise SystemExit(f"{name!r}: unknown option {o!r} (noshuf, seq, kl<x>, ess<x>, rp<K>, rpkl<x>, cap<x>)")
        m[hit[0]] = hit[1](o[len(next(pre for pre, k, _ in prefixes if k == hit[0])):])
    return m


def _number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def steps_per_rollout(m: dict, a) -> int:
    """Optimizer steps a rollout is planned to take (without early stops; replay at its steady state)."""
    if m["kind"] == "trl" and m["mu"] == 1:
        return 1
    return a.minibatches * m["mu"] * (1 + m["replay_rollouts"])


# ---------------------------------------------------------------------------------------------- task and runs
def position_reward(prompts, completions, answer, **kwargs):
    """dense: fraction of the gold's positions right, over the longer of the two."""
    out = []
    for c, g in zip(completions, answer):
        c = c.split("\n")[0].strip()
        out.append(sum(x == y for x, y in zip(c, g)) / max(len(c), len(g), 1))
    return out


def exact_reward(prompts, completions, answer, **kwargs):
    """sparse: 1 for exactly the reversed string, else 0."""
    return [float(c.split("\n")[0].strip() == g) for c, g in zip(completions, answer)]


def task_data(length: int, n_eval: int):
    from rewardkit.builtin.datasets import reverse

    return reverse(n_train=20000, n_test=n_eval, length=length, seed=0)


def sft_model(a) -> str:
    """tiny-llama after ``--sft-steps`` of SFT (batch 64, lr 3e-3, 30 warm-up steps), built once and cached."""
    from rewardkit import models
    from rewardkit.registry import get_registry

    out = os.path.join(ROOT, "runs", "bench_cache", f"sft-reverse{a.length}-{a.sft_steps}")
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    base = models.resolve("tiny-llama", get_registry())
    cfg = SFTConfig(output_dir=out + ".tmp", max_steps=a.sft_steps, learning_rate=3e-3, per_device_train_batch_size=64,
                    lr_scheduler_type="constant_with_warmup", warmup_steps=min(30, a.sft_steps // 2),
                    report_to="none", save_strategy="no", bf16=False, seed=0, logging_steps=10 ** 6, disable_tqdm=True)
    tok = AutoTokenizer.from_pretrained(base)
    tr = SFTTrainer(model=base, args=cfg, train_dataset=task_data(a.length, a.n_eval)["train"], processing_class=tok)
    tr.train()
    tr.save_model(out)
    tok.save_pretrained(out)
    return out


def sampled_entropy(scores, ids, eos_id: int) -> tuple[float, int]:
    """(Σ per-token entropy, tokens) of sampled completions, counting tokens up to and including the first EOS."""
    import torch

    logp = torch.log_softmax(torch.stack(scores, 1).float(), -1)  # (B, T, V)
    ent = -(logp.exp() * logp).nan_to_num().sum(-1)  # (B, T)
    is_eos = (ids == eos_id).long()
    mask = (is_eos.cumsum(-1) - is_eos) == 0
    return (ent * mask).sum().item(), int(mask.sum().item())


def evaluate(model, tok, test, max_new_tokens: int) -> dict:
    """Greedy exact match (primary), exact match and letters of one temperature-1 sample, and the sample's entropy
    per token, on every held-out string; a fixed seed, the global RNG restored (evaluating changes no run)."""
    import torch

    was = model.training
    model.eval()
    tok.padding_side = "left"
    prompts, answers = list(test["prompt"]), list(test["answer"])
    tot = {"greedy": 0.0, "sampled": 0.0, "letters": 0.0, "entropy": 0.0, "tokens": 0}
    kw = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(1234)
        for i in range(0, len(prompts), 250):
            enc, gold = tok(prompts[i:i + 250], return_tensors="pt", padding=True), answers[i:i + 250]
            n0 = enc["input_ids"].shape[1]
            greedy = tok.batch_decode(model.generate(**enc, do_sample=False, **kw)[:, n0:], skip_special_tokens=True)
            tot["greedy"] += sum(exact_reward(None, greedy, gold))
            s = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, output_scores=True,
                               return_dict_in_generate=True, **kw)
            texts = tok.batch_decode(s.sequences[:, n0:], skip_special_tokens=True)
            tot["sampled"] += sum(exact_reward(None, texts, gold))
            tot["letters"] += sum(position_reward(None, texts, gold))
            e, n = sampled_entropy(s.scores, s.sequences[:, n0:], tok.eos_token_id)
            tot["entropy"], tot["tokens"] = tot["entropy"] + e, tot["tokens"] + n
    model.train(was)
    n = len(prompts)
    return {"greedy": tot["greedy"] / n, "sampled": tot["sampled"] / n, "letters": tot["letters"] / n,
            "entropy": tot["entropy"] / max(tot["tokens"], 1)}


def build(job: dict, a, sft: str, data, gen_kwargs: dict | None = None):
    """The trainer of one run, with its own AdamW and warm-up counted in completions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rewardkit.trainers.grpo_is import GRPOISConfig, GRPOISTrainer

    m, mb = parse_method(job["method"]), a.minibatches
    batch = a.rollout // (mb * m["mu"]) if m["kind"] == "ctl" else a.rollout // mb
    common = dict(output_dir=os.path.join(a.out, "tmp", f"{job['method']}-{job['seed']}"),
                  per_device_train_batch_size=batch, num_generations=a.num_generations,
                  max_completion_length=job.get("length", a.length) + 1, learning_rate=job["lr"], beta=0.0,
                  report_to="none", save_strategy="no", logging_steps=10 ** 6, bf16=False, seed=job["seed"],
                  disable_tqdm=True, max_steps=10 ** 6, temperature=1.0, gradient_checkpointing=False,
                  generation_kwargs=gen_kwargs)
    if m["kind"] == "is":
        opts = {k: m[k] for k in ("reshuffle", "early_stop_kl", "early_stop_ess", "replay_rollouts", "replay_max_kl",
                                  "replay_is_cap", "replay_is_level")}
        cfg, cls = GRPOISConfig(rollout_epochs=m["mu"], steps_per_generation=mb, **opts, **common), GRPOISTrainer
    elif m["kind"] == "ctl":
        cfg, cls = GRPOConfig(steps_per_generation=mb * m["mu"], **common), GRPOTrainer
    else:  # μ=1 accumulates the rollout into one on-policy step; num_iterations=μ takes one step per minibatch
        cfg = GRPOConfig(num_iterations=m["mu"], steps_per_generation=mb,
                         gradient_accumulation_steps=mb if m["mu"] == 1 else 1, **common)
        cls = GRPOTrainer
    model = AutoModelForCausalLM.from_pretrained(sft)
    opt = torch.optim.AdamW(model.parameters(), lr=job["lr"], weight_decay=0.0)
    warm = max(1.0, a.warmup_completions / a.rollout * steps_per_rollout(m, a))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    reward = exact_reward if job["task"] == "sparse" else position_reward
    return cls(model=model, args=cfg, train_dataset=data["train"], processing_class=AutoTokenizer.from_pretrained(sft),
               reward_funcs=[reward], optimizers=(opt, sched))


class BudgetReached(Exception):
    """Raised instead of generating a rollout past the budget: nothing past it is generated, trained or timed."""


def run_one(job: dict, a, sft: str, data, start: dict) -> dict:
    """One training run: the curve of every metric against completions, with its seconds (evaluation excluded)."""
    import torch

    torch.manual_seed(job["seed"])
    tr = build(job, a, sft, data)
    s = {"completions": 0, "rollouts": 0, "eval_s": 0.0, "gen_s": 0.0}
    s["curve"] = [{"completions": 0, **start, "train_seconds": 0.0, "gen_seconds": 0.0, "steps": 0}]
    score, generate, t0 = tr._generate_and_score_completions, tr._generate, time.perf_counter()

    def evaluate_now():
        e0 = time.perf_counter()
        point = evaluate(tr.model, tr.processing_class, data["test"], a.length + 1)
        s["eval_s"] += time.perf_counter() - e0
        s["curve"].append({"completions": s["completions"], **point, "steps": tr.state.global_step,
                           "train_seconds": time.perf_counter() - t0 - s["eval_s"], "gen_seconds": s["gen_s"]})

    def timed_generate(prompts):
        g0 = time.perf_counter()
        try:
            return generate(prompts)
        finally:
            s["gen_s"] += time.perf_counter() - g0
            s["completions"] += len(prompts)

    def budgeted_score(inputs):
        """Every rollout passes here before it is generated: evaluate once the model is done with all rollouts so
        far (every eval_every), and stop instead of generating past the budget."""
        if s["rollouts"] and s["rollouts"] % a.eval_every == 0 and s["curve"][-1]["completions"] < s["completions"]:
            evaluate_now()
        if s["completions"] >= a.budget * a.rollout:
            raise BudgetReached
        s["rollouts"] += 1
        return score(inputs)

    tr._generate_and_score_completions, tr._generate = budgeted_score, timed_generate
    try:
        tr.train()
    except BudgetReached:
        pass
    train_seconds = time.perf_counter() - t0 - s["eval_s"]
    if s["curve"][-1]["completions"] < s["completions"]:
        evaluate_now()
    hist = getattr(tr, "rollout_history", None)
    extra = {"mean_epochs_used": statistics.fmean(r["epochs_used"] for r in hist) if hist else None,
             "early_stops": sum(bool(r["early_stop"]) for r in hist) if hist else None}
    return {**job, "curve": s["curve"], "completions": s["completions"], "steps": tr.state.global_step,
            "train_seconds": train_seconds, "generation_seconds": s["gen_s"], **extra}


def time_one(job: dict, a, sft: str) -> dict:
    """Seconds per completion of one method at one completion length (generation forced to the full length)."""
    import torch

    torch.manual_seed(job["seed"])
    data = task_data(job["length"], 10)
    tr = build(job, a, sft, data, gen_kwargs={"min_new_tokens": job["length"] + 1})
    s = {"gen": 0.0, "n": 0, "rollouts": 0, "entries": []}
    score, generate = tr._generate_and_score_completions, tr._generate

    def timed_generate(prompts):
        g0 = time.perf_counter()
        try:
            return generate(prompts)
        finally:
            s["gen"], s["n"] = s["gen"] + time.perf_counter() - g0, s["n"] + len(prompts)

    def budgeted_score(inputs):
        """Times whole rollouts: from the first rollout's start to the moment the next one past the last timed
        would start (the trainer's start-up before the first rollout is left out)."""
        s["entries"].append(time.perf_counter())
        if s["rollouts"] >= a.timing_rollouts:
            raise BudgetReached
        s["rollouts"] += 1
        return score(inputs)

    tr._generate_and_score_completions, tr._generate = budgeted_score, timed_generate
    try:
        tr.train()
    except BudgetReached:
        pass
    total = s["entries"][-1] - s["entries"][0]
    return {**job, "seconds_per_completion": total / s["n"], "generation_share": s["gen"] / total}


def run_job(job: dict) -> dict:
    """A worker's entry point (one thread; everything it needs is in ``job``)."""
    import torch

    torch.set_num_threads(1)
    a = argparse.Namespace(**job.pop("args"))
    t0, c0 = time.perf_counter(), time.process_time()
    if job["stage"] == "timing":
        out = time_one(job, a, job.pop("sft"))
    else:
        sft, start = job.pop("sft"), job.pop("start")
        out = run_one(job, a, sft, task_data(a.length, a.n_eval), start)
    return {**out, "wall_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


# ---------------------------------------------------------------------------------------------- the protocol
def key(r: dict) -> tuple:
    return r["stage"], r["task"], r["method"], r.get("lr"), r["seed"], r.get("length")


def execute(jobs: list[dict], a, done: list[dict], ctx: dict) -> list[dict]:
    """Run the jobs not already in results.jsonl (``--jobs`` at a time), appending each result as it ends."""
    have = {key(r) for r in done}
    todo = [j for j in jobs if key(j) not in have]
    print(f"  {len(jobs)} runs planned, {len(jobs) - len(todo)} already done", flush=True)
    payload = [{**j, "args": {k: v for k, v in vars(a).items()}, **ctx} for j in todo]
    results = []
    path = os.path.join(a.out, "results.jsonl")
    if a.jobs > 1 and len(payload) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            outs = pool.map(run_job, payload)
            results = [_save(r, path) for r in outs]
    else:
        results = [_save(run_job(p), path) for p in payload]
    return done + results


def _save(r: dict, path: str) -> dict:
    with open(path, "a") as f:
        f.write(json.dumps(r) + "\n")
    if r["stage"] != "timing":
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


def eval_methods(sel: dict) -> list[str]:
    mus = {parse_method(m)["mu"] for m in sel["finalists"]}
    if sel["best_trl"]:
        mus.add(parse_method(sel["best_trl"])["mu"])
    ctl = [f"ctl{mu}" for mu in sorted(mus) if f"ctl{mu}" in sel["best_lr"]]
    out = ["trl_mu1"] + ([sel["best_trl"]] if sel["best_trl"] else []) + ctl + sel["finalists"]
    return list(dict.fromkeys(m for m in out if m in sel["best_lr"]))


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


# ---------------------------------------------------------------------------------------------- summary
def summarize_task(runs: list[dict], task: str, sel: dict, a) -> dict:
    """The evaluation seeds' table of one task: accuracy at fixed budgets, completions to each level (censored at
    the budget) and the paired ratios of every finalist against TRL's best μ and the better control."""
    budget = a.budget * a.rollout
    ev = [r for r in runs if r["task"] == task and r["stage"] == "eval"]
    rows = {}
    for m in eval_methods(sel):
        rs = sorted((r for r in ev if r["method"] == m), key=lambda r: r["seed"])
        if not rs:
            continue
        finals = [r["curve"][-1][PRIMARY] for r in rs]
        row = {"lr": sel["best_lr"][m], "seeds": [r["seed"] for r in rs],
               "final_median_worst": st.median_and_worst(finals),
               "sampled": statistics.fmean(r["curve"][-1]["sampled"] for r in rs),
               "entropy": statistics.fmean(r["curve"][-1]["entropy"] for r in rs),
               "s_per_1k": 1000 * sum(r["train_seconds"] for r in rs) / sum(r["completions"] for r in rs),
               "epochs_used": (statistics.fmean(r["mean_epochs_used"] for r in rs)
                               if rs[0].get("mean_epochs_used") is not None else None)}
        for frac in (0.25, 0.5, 1.0):
            row[f"greedy@{frac:g}"] = st.mean_ci([st.at(r["curve"], frac * budget, PRIMARY) for r in rs])
        if sel["levels"]:
            row["to_level"] = [[st.censored_cost(r["curve"], lv, PRIMARY, budget) for r in rs] for lv in sel["levels"]]
        rows[m] = row
    ratios = {}
    if sel["levels"]:
        for f in sel["finalists"]:
            for c in (sel["best_trl"], sel["best_ctl"]):
                if f in rows and c in rows and rows[f]["seeds"] == rows[c]["seeds"]:
                    ratios[f"{f} / {c}"] = [_ratio(rows[f]["to_level"][i], rows[c]["to_level"][i])
                                            for i in range(len(sel["levels"]))]
    return {"rows": rows, "ratios": ratios}


def _ratio(num: list, den: list) -> dict:
    est, lo, hi = st.paired_ratio([x for x, _ in num], [x for x, _ in den])
    return {"ratio": est, "low": lo, "high": hi, "num_censored": sum(c for _, c in num),
            "den_censored": sum(c for _, c in den), "n": len(num)}


def summarize_timing(runs: list[dict], sel: dict) -> dict:
    """Per length: μ=1's measured generation share and every timed method's seconds per completion over μ=1's."""
    out = {}
    for r in (r for r in runs if r["stage"] == "timing"):
        out.setdefault(r["length"], {})[r["method"]] = r
    table = {}
    for length, by in sorted(out.items()):
        ref = by.get("trl_mu1")
        if ref:
            table[length] = {"mu1_generation_share": ref["generation_share"],
                             "per_completion_ratio": {m: r["seconds_per_completion"] / ref["seconds_per_completion"]
                                                      for m, r in by.items()},
                             "seconds_per_1k": {m: 1000 * r["seconds_per_completion"] for m, r in by.items()}}
    return table


def report(summary: dict, a) -> list[str]:
    lines = []
    for task, t in summary["tasks"].items():
        sel = t["selection"]
        lines += [f"[{task}] tuning (seeds {a.tuning_seeds}, never reported below): area under the greedy curve"]
        for m, by_lr in sel["scores"].items():
            mark = " <- finalist" if m in sel["finalists"] else ""
            lines.append(f"  {m:<22} " + "  ".join(f"lr {lr:g}: {v:.3f}" for lr, v in sorted(by_lr.items()))
                         + f"  best {sel['best_lr'][m]:g}{mark}")
        if not sel["levels"]:
            lines.append(f"[{task}] no tuning run ended above the warm start ({sel['start']:.1%}): no levels, no eval")
            continue
        lines.append(f"[{task}] levels fixed before evaluation: warm start {sel['start']:.1%}, best final tuning "
                     f"{sel['best_final']:.1%} -> " + ", ".join(f"{lv:.1%}" for lv in sel["levels"]))
        lines += _eval_lines(task, t, sel)
    lines += _timing_lines(summary, a)
    lines.append(f"time taken: {summary['cpu_hours']:.2f} CPU-hours (process time of the runs, one thread each; "
                 f"{summary.get('run_hours', 0.0):.2f} h of run wall time) in {summary['wall_hours']:.2f} h wall "
                 f"with --jobs {a.jobs} (the wall time includes the SFT warm start, the CPU-hours do not)")
    lines += _headline_lines(summary)
    return lines


def _eval_lines(task: str, t: dict, sel: dict) -> list[str]:
    lines = [f"[{task}] evaluation seeds: greedy exact match (mean [95% bootstrap]) at 25/50/100% of the budget, "
             f"final median/worst, sampled exact, entropy; completions to each level, median (≥: censored seeds)"]
    for m, r in t["rows"].items():
        acc = "  ".join(f"{r[f'greedy@{f:g}'][0]:.1%} [{r[f'greedy@{f:g}'][1]:.1%},{r[f'greedy@{f:g}'][2]:.1%}]"
                        for f in (0.25, 0.5, 1.0))
        levels = "  ".join(f"{statistics.median(c for c, _ in lv):>6.0f}"
                           + (f" (≥ on {sum(x for _, x in lv)})" if any(x for _, x in lv) else "")
                           for lv in r.get("to_level", []))
        lines.append(f"  {m:<22} lr {r['lr']:<7g} {acc}  final {r['final_median_worst'][0]:.1%}/"
                     f"{r['final_median_worst'][1]:.1%}  sampled {r['sampled']:.1%}  H {r['entropy']:.3f}  "
                     f"{r['s_per_1k']:.1f} s/1k  to levels: {levels}"
                     + (f"  epochs/rollout {r['epochs_used']:.2f}" if r["epochs_used"] is not None else ""))
    for name, per_level in t["ratios"].items():
        lines.append(f"  {name:<40} completions ratio (geometric mean, paired bootstrap 95%): " + "  ".join(
            f"L{i + 1} {x['ratio']:.2f} [{x['low']:.2f},{x['high']:.2f}] (censored {x['num_censored']}/"
            f"{x['den_censored']} of {x['n']})" for i, x in enumerate(per_level)))
    return lines


def _timing_lines(summary: dict, a) -> list[str]:
    timing = summary.get("timing") or {}
    lines = ["wall-clock, measured alone on one thread (generation forced to the full length): seconds per 1k "
             "completions and the ratio to μ=1, at μ=1's measured generation share"]
    for length, row in timing.items():
        lines.append(f"  completion {length + 1:>3} tokens: μ=1 generation share {row['mu1_generation_share']:.0%}  "
                     + "  ".join(f"{m} {row['seconds_per_1k'][m]:.1f} s ({row['per_completion_ratio'][m]:.2f}×)"
                                 for m in row["seconds_per_1k"]))
    task = next(iter(summary["tasks"].values()), None)
    if not timing or task is None or not task["selection"]["levels"]:
        return lines
    sel = task["selection"]
    lines.append(f"  MODEL, not a measurement: wall-clock to the 50% level of {a.tasks[0]} = its completion ratio "
                 f"(measured, evaluation seeds) × the seconds-per-completion ratio measured at each length:")
    for comp in (sel["best_trl"], sel["best_ctl"]):
        x = task["ratios"].get(f"{sel['best_is']} / {comp}")
        if x is None:
            continue
        per_length = [(n, row["per_completion_ratio"]) for n, row in timing.items()]
        lines.append(f"    {sel['best_is']} / {comp}: " + "  ".join(
            f"{n + 1} tokens {x[1]['ratio'] * r[sel['best_is']] / r[comp]:.2f}×" for n, r in per_length
            if sel["best_is"] in r and comp in r))
    return lines


def _headline_lines(summary: dict) -> list[str]:
    lines = []
    for task, t in summary["tasks"].items():
        sel = t["selection"]
        if not sel["levels"]:
            continue
        best = sel["best_is"]
        for comp, goal in ((sel["best_trl"], 0.7), (sel["best_ctl"], 0.5)):
            x = t["ratios"].get(f"{best} / {comp}")
            if x is None:
                continue
            mid = x[1]
            met = mid["high"] < 1 and mid["ratio"] <= goal
            lines.append(f"HEADLINE [{task}] {best} vs {comp}: completions to the 50% level {mid['ratio']:.2f}× "
                         f"[{mid['low']:.2f}, {mid['high']:.2f}] over {mid['n']} paired seeds (censored "
                         f"{mid['num_censored']}/{mid['den_censored']}); goal ≤ {goal}× with the interval below 1: "
                         + ("met" if met else "missed"))
    return lines


def plot(runs: list[dict], summary: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in summary["tasks"] if summary["tasks"][t]["selection"]["levels"]]
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(5 * (len(tasks) + 1), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sel = summary["tasks"][task]["selection"]
        for i, m in enumerate(summary["tasks"][task]["rows"]):
            rs = [r for r in runs if r["stage"] == "eval" and r["task"] == task and r["method"] == m]
            grid = sorted({p["completions"] for r in rs for p in r["curve"]})
            ax.plot(grid, [statistics.fmean(st.at(r["curve"], x, PRIMARY) for r in rs) for x in grid],
                    color=plt.cm.tab10(i % 10), label=m)
        for lv in sel["levels"]:
            ax.axhline(lv, color="gray", lw=0.7, ls=":")
        ax.set(xlabel="completions generated", ylabel="held-out greedy exact match (mean over eval seeds)",
               title=f"{task} reward; levels dotted")
        ax.legend(fontsize=6)
    ax = axes[0][-1]
    timing = summary.get("timing") or {}
    methods = sorted({m for row in timing.values() for m in row["per_completion_ratio"]})
    for m in methods:
        pts = sorted((row["mu1_generation_share"], row["per_completion_ratio"][m]) for row in timing.values()
                     if m in row["per_completion_ratio"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set(xlabel="μ=1's measured generation share (completion lengths " + ", ".join(
        str(n + 1) for n in timing) + ")", ylabel="seconds per completion / μ=1's (measured)", title="wall-clock")
    ax.legend(fontsize=6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def load_runs(out: str) -> list[dict]:
    path = os.path.join(out, "results.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize(runs: list[dict], selections: dict, a, wall_seconds: float) -> dict:
    tasks = {task: {"selection": sel, **(summarize_task(runs, task, sel, a) if sel["levels"] else
                                        {"rows": {}, "ratios": {}})} for task, sel in selections.items()}
    first = selections[a.tasks[0]]
    return {"tasks": tasks, "timing": summarize_timing(runs, first),
            "cpu_hours": sum(r.get("cpu_seconds", 0.0) for r in runs) / 3600,
            "run_hours": sum(r.get("wall_seconds", 0.0) for r in runs) / 3600, "wall_hours": wall_seconds / 3600}


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

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    os.makedirs(a.out, exist_ok=True)
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
