"""Curves of a run from its logs: reward (per component), KL, accuracy and loss, as PNG files.

Reads what a run writes: ``<run>/<stage>/log.jsonl`` (every Trainer log record) and ``<run>/summary.json``
(held-out scores: greedy, sampled, pass@k and maj@k, on the accuracy plot's "held-out" panel). ``rewardkit plot
RUN_DIR`` writes ``RUN_DIR/plots/{reward,kl,accuracy,loss}.png``, one panel per stage that logged the metric; a
metric no stage logged gets no file, and the reason is reported.
"""

from __future__ import annotations

import json
import os

from rewardkit.errors import RewardkitError

METRICS = ("reward", "kl", "accuracy", "loss")
_WHY_MISSING = {
    "reward": "no stage logged rewards (only RL and preference trainers do)",
    "kl": "no stage logged a KL (GRPO logs it only with beta > 0)",
    "accuracy": "no stage logged an accuracy and summary.json has no held-out scores",
    "loss": "no stage logged a loss",
}


def _is_metric(key: str, metric: str) -> bool:
    """Which log keys belong on which plot (TRL's names for SFT, GRPO, DPO and rewardkit's own)."""
    if metric == "reward":
        return (key == "reward" or (key.startswith("rewards/") and key.endswith("/mean"))
                or key in ("rewards/chosen", "rewards/rejected", "rewards/margins"))
    if metric == "kl":
        return key in ("kl", "objective/kl") or key.endswith("/kl")
    if metric == "accuracy":
        return key.endswith("accuracy") or key.endswith("accuracies")
    if metric == "loss":
        return key in ("loss", "eval_loss")  # not train_loss: the run's mean, logged once at the end
    raise ValueError(metric)


def _label(key: str) -> str:
    if key.startswith("rewards/") and key.endswith("/mean"):
        return key[len("rewards/"):-len("/mean")]
    if key == "reward":
        return "reward (weighted sum)"
    return key


def read_log(path: str) -> list[dict]:
    """Log records of one stage; a line cut short by a killed process is left out."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                rows.append(row)
    return rows


def series(rows: list[dict], metric: str) -> dict[str, tuple[list, list]]:
    """``{label: (steps, values)}`` of every numeric log key that belongs to ``metric``."""
    out: dict[str, tuple[list, list]] = {}
    for row in rows:
        for key, value in row.items():
            if key == "step" or not _is_metric(key, metric):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                continue
            steps, values = out.setdefault(_label(key), ([], []))
            steps.append(row["step"])
            values.append(value)
    return out


def load_run(run_dir: str) -> tuple[list[tuple[str, list[dict]]], dict | None]:
    """``([(stage, rows), ...], summary)``, stages in the recipe's order when summary.json names it."""
    if not os.path.isdir(run_dir):
        raise RewardkitError(f"{run_dir}: no such run directory")
    summary = None
    summary_path = os.path.join(run_dir, "summary.json")
    if os.path.exists(summary_path):
        try:
            with open(summary_path) as f:
                summary = json.load(f)
        except json.JSONDecodeError as exc:
            raise RewardkitError(f"{summary_path}: not valid JSON ({exc})") from None
    logged = [d for d in sorted(os.listdir(run_dir)) if os.path.isfile(os.path.join(run_dir, d, "log.jsonl"))]
    order = [s["name"] for s in (summary or {}).get("stages", []) if s.get("name") in logged]
    names = order + sorted((d for d in logged if d not in order),
                           key=lambda d: os.path.getmtime(os.path.join(run_dir, d, "log.jsonl")))
    stages = [(name, read_log(os.path.join(run_dir, name, "log.jsonl"))) for name in names]
    if not stages and not (summary or {}).get("eval"):
        raise RewardkitError(f"{run_dir}: no <stage>/log.jsonl and no summary.json with scores; is it the "
                             f"output_dir of a rewardkit run?")
    return stages, summary


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise RewardkitError("plotting needs matplotlib: pip install 'rewardkit[plot]'") from None
    return plt


def _figure(panels: list[tuple[str, dict]], ylabel: str, path: str, plt) -> str:
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels):
        for label, (xs, ys, *err) in curves.items():
            marker = "o" if len(xs) < 20 else None
            if err:  # held-out pass@k/maj@k: ± one standard error over problems
                ax.errorbar(xs, ys, yerr=err[0], label=label, marker=marker, capsize=3)
            else:
                ax.plot(xs, ys, label=label, marker=marker)
        ax.set_title(title)
        ax.set_xlabel("step" if title != "held-out" else "after stage")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run(run_dir: str, out_dir: str | None = None) -> dict[str, str | None]:
    """Write one PNG per metric into ``out_dir`` (default ``RUN_DIR/plots``); ``{metric: path or None}``."""
    stages, summary = load_run(run_dir)
    plt = _pyplot()
    out_dir = out_dir or os.path.join(run_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    written: dict[str, str | None] = {}
    for metric in METRICS:
        panels = [(name, curves) for name, rows in stages if (curves := series(rows, metric))]
        if metric == "accuracy" and (summary or {}).get("eval"):
            curves = held_out(summary["eval"])
            if curves:
                panels.append(("held-out", curves))
        path = os.path.join(out_dir, f"{metric}.png")
        written[metric] = _figure(panels, metric, path, plt) if panels else None
    return written


def held_out(rows: list[dict]) -> dict[str, tuple]:
    """The held-out panel's curves over the evaluated stages: greedy and sampled score, and pass@k and maj@k with
    their standard errors (``(stages, values[, errors])``); a stage that did not report one is left off its curve."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v

    curves: dict[str, tuple] = {}
    for key, label in (("score", "greedy"), ("sampled_score", "sampled")):
        pts = [(r["after"], r[key]) for r in rows if number(r.get(key))]
        if pts:
            curves[label] = ([a for a, _ in pts], [v for _, v in pts])
    for field, name in (("pass_at_k", "pass"), ("maj_at_k", "maj")):
        for k in sorted({int(k) for r in rows for k in (r.get(field) or {})}):
            pts = [(r["after"], m["value"], m.get("se") or 0.0) for r in rows
                   if number((m := (r.get(field) or {}).get(str(k)) or {}).get("value"))]
            if pts:
                curves[f"{name}@{k}"] = tuple(list(c) for c in zip(*pts))
    return curves


def reward_curve(log_path: str, png_path: str) -> str | None:
    """One stage's reward curve (total and per component); None when the stage logged no reward."""
    if not os.path.exists(log_path):
        return None
    curves = series(read_log(log_path), "reward")
    if not curves:
        return None
    try:
        plt = _pyplot()
    except RewardkitError:
        return None
    return _figure([(os.path.basename(os.path.dirname(log_path)), curves)], "reward", png_path, plt)


def why_missing(metric: str) -> str:
    return _WHY_MISSING[metric]
