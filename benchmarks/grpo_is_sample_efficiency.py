"""Sample efficiency of grpo_is vs TRL GRPO (μ = 1) and TRL GRPO num_iterations = μ, on the bundled arithmetic task.

    python benchmarks/grpo_is_sample_efficiency.py            # CI-sized default (3 seeds, minutes on 2 cores)
    python benchmarks/grpo_is_sample_efficiency.py --full     # 5 seeds, larger eval set and budget

Protocol (same for the three methods): tiny-llama is SFT-warmed once (TRL SFTTrainer, cached under
``runs/bench_cache``), then each method trains from that model with the same seeds, batch shapes (rollouts of
``--rollout`` completions, minibatches of ``--batch``), learning rate and β. Every ``--eval-every`` rollouts the
held-out greedy accuracy on ``--n-eval`` test problems is measured (eval time is excluded from wall-clock). A run
reaches the target when that accuracy is ≥ ``--target`` (absolute) or, with ``--target-gain``, ≥ the SFT model's
accuracy + gain. Reported per method: completions generated and training wall-clock to target (median over seeds;
a run that misses the target within ``--max-completions`` counts as the budget and is flagged), and their ratios.
Writes ``docs/grpo_is_sample_efficiency.png`` (accuracy vs completions) and a JSON of every curve.
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
warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="5 seeds, 300 eval problems, 2x completion budget")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; --full 0..4)")
    p.add_argument("--mu", type=int, default=4, help="epochs per rollout for num_iterations and grpo_is")
    p.add_argument("--target", type=float, default=None, help="absolute held-out greedy accuracy target")
    p.add_argument("--target-gain", type=float, default=0.10, help="target = SFT accuracy + this (default)")
    p.add_argument("--metric", choices=["sampled", "greedy"], default="greedy",
                   help="held-out accuracy of greedy decoding (default) or of temperature-1 samples")
    p.add_argument("--eval-samples", type=int, default=4, help="samples per held-out problem (sampled metric)")
    p.add_argument("--target-kl", type=float, default=0.1, help="grpo_is early_stop_kl")
    p.add_argument("--no-reshuffle", action="store_true", help="grpo_is without per-epoch reshuffle")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-multi", type=float, default=None,
                   help="learning rate of the two mu-epoch methods (default: --lr); e.g. lr/mu for equal movement")
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=64, help="minibatch (completions per optimizer step)")
    p.add_argument("--rollout", type=int, default=128, help="completions per rollout (multiple of --batch)")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=2, help="evaluate every N rollouts")
    p.add_argument("--n-eval", type=int, default=300)
    p.add_argument("--max-completions", type=int, default=12288, help="budget per run")
    p.add_argument("--sft-steps", type=int, default=900,
                   help="SFT warm-start steps (batch 64, constant lr 2e-3: the quick start's SFT stage)")
    p.add_argument("--methods", nargs="+", default=["trl_mu1", "trl_num_iterations", "grpo_is"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is far faster on a shared 2-core box)")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_sample_efficiency"))
    p.add_argument("--png", default=os.path.join(ROOT, "docs", "grpo_is_sample_efficiency.png"))
    p.add_argument("--from-results", help="re-summarise and re-plot a results.json instead of training")
    a = p.parse_args()
    if a.full:
        a.seeds = a.seeds or [0, 1, 2, 3, 4]
        a.n_eval = max(a.n_eval, 300)
        a.max_completions *= 2
    a.seeds = a.seeds or [0, 1, 2]
    return a


def sft_model(steps: int) -> str:
    """The SFT warm start (TRL SFTTrainer, 64 × ``steps``, constant lr 2e-3 as in the quick start), built once
    and cached."""
    from rewardkit import models
    from rewardkit.registry import get_registry

    out = os.path.join(ROOT, "runs", "bench_cache", f"sft-tiny-llama-{steps}-lr2e-3")
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from rewardkit.datasets_builtin import arithmetic

    base = models.resolve("tiny-llama", get_registry())
    tok = AutoTokenizer.from_pretrained(base)
    ds = arithmetic(n_train=10000, n_test=300, max_operand=100, seed=0)
    cfg = SFTConfig(output_dir=out + ".tmp", max_steps=steps, learning_rate=2e-3, per_device_train_batch_size=64,
                    lr_scheduler_type="constant", report_to="none", save_strategy="no", bf16=False, seed=0,
                    logging_steps=100, disable_tqdm=True)
    t0 = time.time()
    tr = SFTTrainer(model=base, args=cfg, train_dataset=ds["train"], processing_class=tok)
    tr.train()
    tr.save_model(out)
    tok.save_pretrained(out)
    print(f"SFT warm start: {steps} steps in {time.time() - t0:.0f}s -> {out}", flush=True)
    return out


def accuracy(model, tok, test, samples: int = 0) -> float:
    """Held-out exact-match accuracy: greedy (``samples=0``), or of ``samples`` completions per problem drawn at
    temperature 1 (the policy GRPO optimises) under a fixed seed, with the global RNG restored afterwards so
    evaluating never changes a training run."""
    import torch

    from rewardkit.evaluate import generate

    prompts, answers = list(test["prompt"]), list(test["answer"])
    if not samples:
        outs = generate(model, tok, prompts, max_new_tokens=5, batch_size=200)
        return sum(o.split("\n")[0].strip() == a for o, a in zip(outs, answers)) / len(outs)
    was_training = model.training
    model.eval()
    tok.padding_side = "left"
    hits = n = 0
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(1234)
        for i in range(0, len(prompts), 100):
            batch = [p for p in prompts[i:i + 100] for _ in range(samples)]
            gold = [x for x in answers[i:i + 100] for _ in range(samples)]
            enc = tok(batch, return_tensors="pt", padding=True)
            gen = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=5,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            outs = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            hits += sum(o.split("\n")[0].strip() == g for o, g in zip(outs, gold))
            n += len(outs)
    model.train(was_training)
    return hits / n


def run_one(method: str, seed: int, a, sft: str, data, target: float) -> dict:
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewardkit.rewards import ExactMatch
    from rewardkit.trainers.grpo_is import GRPOISConfig, GRPOISTrainer

    tok = AutoTokenizer.from_pretrained(sft)
    spg = a.rollout // a.batch
    common = dict(output_dir=os.path.join(a.out, f"{method}-{seed}"), per_device_train_batch_size=a.batch,
                  steps_per_generation=spg, num_generations=a.num_generations, max_completion_length=5,
                  learning_rate=a.lr if method == "trl_mu1" or a.lr_multi is None else a.lr_multi,
                  lr_scheduler_type="constant", beta=a.beta, report_to="none",
                  save_strategy="no", logging_steps=10 ** 6, bf16=False, seed=seed, disable_tqdm=True,
                  max_steps=10 ** 6)
    if method == "trl_mu1":
        cfg, cls = GRPOConfig(**common), GRPOTrainer
    elif method == "trl_num_iterations":
        cfg, cls = GRPOConfig(num_iterations=a.mu, **common), GRPOTrainer
    else:
        cfg, cls = GRPOISConfig(rollout_epochs=a.mu, reshuffle=not a.no_reshuffle, early_stop_kl=a.target_kl,
                                **common), GRPOISTrainer
    torch.manual_seed(seed)
    reward = ExactMatch()
    tr = cls(model=sft, args=cfg, train_dataset=data["train"], processing_class=tok, reward_funcs=[reward])
    test = data["test"].select(range(a.n_eval))
    state = {"completions": 0, "rollouts": 0, "eval_s": 0.0, "reached": None, "stop": False,
             "curve": [{"completions": 0, "step": 0, "accuracy": a.sft_accuracy, "greedy_accuracy": a.sft_greedy,
                        "train_seconds": 0.0}]}
    generate = tr._generate_and_score_completions
    t_start = time.perf_counter()

    def evaluate_now():
        t0 = time.perf_counter()
        acc = accuracy(tr.model, tok, test, a.k)
        greedy = accuracy(tr.model, tok, test) if a.k else acc
        state["eval_s"] += time.perf_counter() - t0
        wall = time.perf_counter() - t_start - state["eval_s"]
        state["curve"].append({"completions": state["completions"], "step": tr.state.global_step,
                               "accuracy": acc, "greedy_accuracy": greedy, "train_seconds": wall})
        return acc, wall

    def counting_generate(batch):
        """Wraps generation for all three trainers: counts completions exactly, and evaluates the model just
        before every ``eval_every``-th new rollout, i.e. once it has finished with all rollouts so far."""
        if tr.model.training:
            if state["rollouts"] and state["rollouts"] % a.eval_every == 0 and not state["stop"]:
                acc, wall = evaluate_now()
                if acc >= target:
                    state["reached"] = {"completions": state["completions"], "train_seconds": wall,
                                        "step": tr.state.global_step, "accuracy": acc}
                    state["stop"] = True
            if state["completions"] >= a.max_completions:
                state["stop"] = True
        out = generate(batch)
        if tr.model.training:
            state["completions"] += len(batch) * tr.accelerator.num_processes
            state["rollouts"] += 1
        return out

    tr._generate_and_score_completions = counting_generate

    class Stop(TrainerCallback):
        def on_step_end(self, args, st, control, **kw):
            if state["stop"]:
                control.should_training_stop = True

    tr.add_callback(Stop())
    tr.train()
    total = time.perf_counter() - t_start - state["eval_s"]
    extra = {}
    if isinstance(tr, GRPOISTrainer):
        hist = tr.rollout_history
        extra = {"mean_epochs_used": statistics.mean(r["epochs_used"] for r in hist) if hist else None,
                 "early_stops": sum(r["early_stop"] for r in hist), "rollouts_finished": len(hist)}
    return {"method": method, "seed": seed, "curve": state["curve"], "reached": state["reached"],
            "completions": state["completions"], "steps": tr.state.global_step, "train_seconds": total, **extra}


def summarize(results: list[dict], a, target: float, sft_acc: float, load: tuple) -> dict:
    by = {}
    for r in results:
        by.setdefault(r["method"], []).append(r)
    summary = {"metric": a.metric, "reached_by_all": all(r["reached"] for r in results), "target": target, "sft_accuracy": sft_acc, "sft_greedy_accuracy": a.sft_greedy,
               "load_average_at_start": load, "methods": {}}
    for m, runs in by.items():
        comp = [r["reached"]["completions"] if r["reached"] else a.max_completions for r in runs]
        secs = [r["reached"]["train_seconds"] if r["reached"] else r["train_seconds"] for r in runs]
        summary["methods"][m] = {"completions_to_target": comp, "seconds_to_target": [round(s, 1) for s in secs],
                                 "reached": [bool(r["reached"]) for r in runs],
                                 "final_accuracy": [r["curve"][-1]["accuracy"] for r in runs],
                                 "best_accuracy": [max(p["accuracy"] for p in r["curve"]) for r in runs],
                                 "final_greedy_accuracy": [r["curve"][-1].get("greedy_accuracy") for r in runs],
                                 "train_seconds_per_1k_completions": [
                                     round(1000 * r["train_seconds"] / max(r["completions"], 1), 1) for r in runs],
                                 "median_completions": statistics.median(comp),
                                 "median_seconds": round(statistics.median(secs), 1)}
        if m == "grpo_is":
            summary["methods"][m]["mean_epochs_used_per_rollout"] = [r.get("mean_epochs_used") for r in runs]
    ms = summary["methods"]
    if "grpo_is" in ms:
        for base in ("trl_mu1", "trl_num_iterations"):
            if base in ms:
                summary[f"completions_ratio_vs_{base}"] = round(ms["grpo_is"]["median_completions"] /
                                                               ms[base]["median_completions"], 3)
                summary[f"seconds_ratio_vs_{base}"] = round(ms["grpo_is"]["median_seconds"] /
                                                           ms[base]["median_seconds"], 3)
    return summary


def plot(results: list[dict], target: float, png: str, title: str, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"trl_mu1": "tab:blue", "trl_num_iterations": "tab:orange", "grpo_is": "tab:green"}
    labels = {"trl_mu1": "TRL GRPO μ=1", "trl_num_iterations": "TRL GRPO num_iterations=μ", "grpo_is": "grpo_is"}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    seen = set()
    for r in results:
        xs = [p["completions"] for p in r["curve"]]
        ys = [p["accuracy"] for p in r["curve"]]
        ax.plot(xs, ys, color=colors.get(r["method"]), alpha=0.75, marker=".",
                label=None if r["method"] in seen else labels.get(r["method"], r["method"]))
        seen.add(r["method"])
    ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target:.0%}")
    ax.set_xlabel("completions generated")
    ax.set_ylabel(f"held-out {metric} accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(png), exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main():
    a = parse()
    if a.from_results:
        with open(a.from_results) as f:
            saved = json.load(f)
        old = saved["summary"]
        for k, v in old["args"].items():
            if k not in ("from_results", "png", "out"):
                setattr(a, k, v)
        results = saved["runs"]
        summary = summarize(results, a, old["target"], old["sft_accuracy"], old["load_average_at_start"])
        summary["load_average_at_end"] = old.get("load_average_at_end")
        summary["args"] = old["args"]
        with open(a.from_results, "w") as f:
            json.dump({"summary": summary, "runs": results}, f, indent=1)
        plot(results, old["target"], a.png, f"arithmetic, tiny-llama SFT-warmed ({a.metric} {old['sft_accuracy']:.0%}), "
             f"seeds {a.seeds}, μ={a.mu}, rollout {a.rollout}, minibatch {a.batch}", a.metric)
        print(json.dumps({k: v for k, v in summary.items() if k != "args"}, indent=1))
        return
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs", flush=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardkit.datasets_builtin import arithmetic

    torch.set_num_threads(a.threads)
    sft = sft_model(a.sft_steps)
    data = arithmetic(n_train=10000, n_test=300, max_operand=100, seed=0)
    a.k = a.eval_samples if a.metric == "sampled" else 0
    sft_m, sft_tok, held = (AutoModelForCausalLM.from_pretrained(sft), AutoTokenizer.from_pretrained(sft),
                            data["test"].select(range(a.n_eval)))
    a.sft_accuracy = sft_acc = accuracy(sft_m, sft_tok, held, a.k)
    a.sft_greedy = accuracy(sft_m, sft_tok, held)
    target = a.target if a.target is not None else round(sft_acc + a.target_gain, 4)
    print(f"SFT held-out {a.metric} accuracy {sft_acc:.1%} (greedy {a.sft_greedy:.1%}) on {a.n_eval}; "
          f"target {target:.1%}", flush=True)
    os.makedirs(a.out, exist_ok=True)
    results = []
    for seed in a.seeds:
        for method in a.methods:
            r = run_one(method, seed, a, sft, data, target)
            results.append(r)
            hit = r["reached"]
            print(f"  seed {seed} {method:<20} " + (
                f"target at {hit['completions']} completions, {hit['train_seconds']:.0f}s" if hit else
                f"missed target within {r['completions']} completions ({r['train_seconds']:.0f}s), "
                f"best {max([p['accuracy'] for p in r['curve']] or [0]):.1%}")
                + (f", mean epochs/rollout {r['mean_epochs_used']:.2f}" if r.get("mean_epochs_used") else ""),
                flush=True)
    load_end = os.getloadavg()
    summary = summarize(results, a, target, sft_acc, load)
    summary["load_average_at_end"] = load_end
    summary["args"] = vars(a)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"summary": summary, "runs": results}, f, indent=1)
    plot(results, target, a.png, f"arithmetic, tiny-llama SFT-warmed ({a.metric} {sft_acc:.0%}), seeds {a.seeds}, μ={a.mu}, "
                                 f"rollout {a.rollout}, minibatch {a.batch}, lr {a.lr:g}"
                                 + (f" (μ-epoch methods {a.lr_multi:g})" if a.lr_multi else ""), a.metric)
    print(json.dumps({k: v for k, v in summary.items() if k != "args"}, indent=1))
    print(f"plot: {a.png}\nall curves: {os.path.join(a.out, 'results.json')}")


if __name__ == "__main__":
    main()
