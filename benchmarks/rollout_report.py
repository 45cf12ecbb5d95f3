"""The summary, report and plot of ``benchmarks/rollout_efficiency.py`` from its runs (``results.jsonl``) and the
choices its tuning seeds made (``plan.json``): pure functions of those, so ``--report`` re-prints a finished run."""

from __future__ import annotations

import os
import statistics

import rollout_stats as st
from rollout_runs import parse_method

PRIMARY = "greedy"
MIN_EVAL_SEEDS = 10  # the full protocol's; --quick and --smoke may use fewer and their report says so


def eval_methods(sel: dict) -> list[str]:
    mus = {parse_method(m)["mu"] for m in sel["finalists"]}
    if sel["best_trl"]:
        mus.add(parse_method(sel["best_trl"])["mu"])
    ctl = [f"ctl{mu}" for mu in sorted(mus) if f"ctl{mu}" in sel["best_lr"]]
    out = ["trl_mu1"] + ([sel["best_trl"]] if sel["best_trl"] else []) + ctl + sel["finalists"]
    return list(dict.fromkeys(m for m in out if m in sel["best_lr"]))


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


def summarize(runs: list[dict], selections: dict, a, wall_seconds: float) -> dict:
    tasks = {task: {"selection": sel, **(summarize_task(runs, task, sel, a) if sel["levels"] else
                                        {"rows": {}, "ratios": {}})} for task, sel in selections.items()}
    first = selections[a.tasks[0]]
    return {"tasks": tasks, "timing": summarize_timing(runs, first),
            "cpu_hours": sum(r.get("cpu_seconds", 0.0) for r in runs) / 3600,
            "run_hours": sum(r.get("wall_seconds", 0.0) for r in runs) / 3600, "wall_hours": wall_seconds / 3600}


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
    seeds = getattr(a, "eval_seeds", None)
    if seeds is not None and len(seeds) < MIN_EVAL_SEEDS:
        lines.append(f"NOT THE PROTOCOL: {len(seeds)} evaluation seeds (it needs at least {MIN_EVAL_SEEDS}; fewer are "
                     f"allowed only under --quick/--smoke): the intervals below are indicative, not results")
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
