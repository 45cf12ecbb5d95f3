"""The runs of ``benchmarks/rollout_efficiency.py``: its method names, the string-reversal task, the cached SFT warm
start, one training run (its curve against completions generated) and one timing run. The protocol that decides
which runs to make, and the report, are in ``rollout_efficiency.py`` and ``rollout_report.py``."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

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




SFT_SETTINGS = dict(model="tiny-llama", n_train=20000, learning_rate=3e-3, batch=64, max_warmup=30, seed=0)


def warm_start_entry(a, root: str) -> str:
    """The warm start's directory in the stage cache ``root``: keyed, as rewardkit's stages are
    (``stage_cache.key``), by what it trains (string length, steps, held-out split, ``SFT_SETTINGS``) and by the
    environment (rewardkit's source hash, library and plugin versions, CPU model, torch's thread count, CUDA)."""
    from rewardkit import run_state, stage_cache

    what = {"benchmark": "rollout_efficiency warm start", "length": a.length, "sft_steps": a.sft_steps,
            "n_eval": a.n_eval, **SFT_SETTINGS}
    return os.path.join(root, stage_cache.key(run_state.fingerprint(what)))


def sft_model(a) -> str:
    """tiny-llama after ``--sft-steps`` of SFT on the task, from rewardkit's stage cache (``REWARDKIT_STAGE_CACHE``,
    else ``runs/bench_cache``): trained under the entry's lock into a temporary directory renamed into place when
    complete, so a killed run leaves no half entry and two benchmarks side by side train it once."""
    import fcntl
    import shutil

    from rewardkit import stage_cache

    root = stage_cache.cache_dir() or os.path.join(ROOT, "runs", "bench_cache")
    entry = warm_start_entry(a, root)
    os.makedirs(root, exist_ok=True)
    with open(f"{entry}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isdir(entry):
            tmp = f"{entry}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                train_sft(a, tmp)
                os.replace(tmp, entry)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return entry


def train_sft(a, out: str) -> None:
    """``SFT_SETTINGS``: batch 64, lr 3e-3 after min(30, steps / 2) warm-up steps, then constant; saved to ``out``."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from rewardkit import models
    from rewardkit.registry import get_registry

    c = SFT_SETTINGS
    base = models.resolve(c["model"], get_registry())
    cfg = SFTConfig(output_dir=out, max_steps=a.sft_steps, learning_rate=c["learning_rate"],
                    per_device_train_batch_size=c["batch"], lr_scheduler_type="constant_with_warmup",
                    warmup_steps=min(c["max_warmup"], a.sft_steps // 2), report_to="none", save_strategy="no",
                    bf16=False, seed=c["seed"], logging_steps=10 ** 6, disable_tqdm=True)
    tok = AutoTokenizer.from_pretrained(base)
    tr = SFTTrainer(model=base, args=cfg, train_dataset=task_data(a.length, a.n_eval)["train"], processing_class=tok)
    tr.train()
    tr.save_model(out)
    tok.save_pretrained(out)


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


def train_gated(tr, before_rollout, after_generate) -> None:
    """Train ``tr`` with every rollout passing ``before_rollout()`` before it is generated (it raises
    ``BudgetReached`` to end the run there) and every generation reported as ``after_generate(completions,
    seconds)``."""
    score, generate = tr._generate_and_score_completions, tr._generate

    def timed_generate(prompts):
        g0 = time.perf_counter()
        try:
            return generate(prompts)
        finally:
            after_generate(len(prompts), time.perf_counter() - g0)

    def gated_score(inputs):
        before_rollout()
        return score(inputs)

    tr._generate_and_score_completions, tr._generate = gated_score, timed_generate
    try:
        tr.train()
    except BudgetReached:
        pass




def run_one(job: dict, a, sft: str, data, start: dict) -> dict:
    """One training run: the curve of every metric against completions, with its seconds (evaluation excluded)."""
    import torch

    torch.manual_seed(job["seed"])
    tr = build(job, a, sft, data)
    s = {"completions": 0, "rollouts": 0, "eval_s": 0.0, "gen_s": 0.0}
    s["curve"] = [{"completions": 0, **start, "train_seconds": 0.0, "gen_seconds": 0.0, "steps": 0}]
    t0 = time.perf_counter()

    def evaluate_now():
        e0 = time.perf_counter()
        point = evaluate(tr.model, tr.processing_class, data["test"], a.length + 1)
        s["eval_s"] += time.perf_counter() - e0
        s["curve"].append({"completions": s["completions"], **point, "steps": tr.state.global_step,
                           "train_seconds": time.perf_counter() - t0 - s["eval_s"], "gen_seconds": s["gen_s"]})

    def before_rollout():
        """Evaluate once the model is done with all rollouts so far (every eval_every), and stop instead of
        generating past the budget."""
        if s["rollouts"] and s["rollouts"] % a.eval_every == 0 and s["curve"][-1]["completions"] < s["completions"]:
            evaluate_now()
        if s["completions"] >= a.budget * a.rollout:
            raise BudgetReached
        s["rollouts"] += 1

    def after_generate(n, seconds):
        s["gen_s"], s["completions"] = s["gen_s"] + seconds, s["completions"] + n

    train_gated(tr, before_rollout, after_generate)
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
    tr = build(job, a, sft, task_data(job["length"], 10), gen_kwargs={"min_new_tokens": job["length"] + 1})
    s = {"gen": 0.0, "n": 0, "rollouts": 0, "entries": []}

    def before_rollout():
        """Times whole rollouts: from the first rollout's start to the moment the next one past the last timed
        would start (the trainer's start-up before the first rollout is left out)."""
        s["entries"].append(time.perf_counter())
        if s["rollouts"] >= a.timing_rollouts:
            raise BudgetReached
        s["rollouts"] += 1

    def after_generate(n, seconds):
        s["gen"], s["n"] = s["gen"] + seconds, s["n"] + n

    train_gated(tr, before_rollout, after_generate)
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

