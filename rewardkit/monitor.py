"""Training health monitor: watches an RL stage's logged metrics for signs of reward hacking and instability.

On by default in every stage whose trainer takes rewards (grpo, grpo_is, ppo); tuned or switched off by the
recipe's ``monitor:`` section (top level, or per stage). Each check compares windows of *logged records*
(TRL averages every metric over its ``logging_steps``), so "at the start" is the mean of the first ``window``
records and "now" the mean of the last ``window``:

====================== =================================== ======================================================
alarm                  metric (first one logged)           fires when (defaults)
====================== =================================== ======================================================
length_drift           completions/mean_length             now / start >= length_ratio (2.0) or <= 1/length_ratio
reward_dominance       rewards/<alias>/mean x weight       one component's share of sum |weight x mean| >=
                                                           dominance (0.9), having started below it (>= 2 rewards)
kl_acceleration        kl (per token, TRL and PPO)         KL >= kl_min (0.01), rising, and it grew by >= kl_growth
                                                           (x2) over the last window, faster than the one before
entropy_collapse       entropy, ppo/entropy                now <= entropy_ratio (0.1) x start
zero_variance_groups   frac_reward_zero_std (of what was   now - start >= zero_std_rise (0.5)
                       generated, under dynamic sampling)
reward_up_eval_down    reward + held-out score (greedy,     mean held-out score of the last window of evaluations
                       eval_n rows every eval_every steps)  <= the best earlier window's - eval_drop (0.1) while
                                                           the training reward is above what it was then
tool_errors            tools/failure_frequency (stages      now - start >= tool_error_rise (0.3)
                       with tools, TRL's tool loop)
tool_calls_drift       tools/call_frequency (tool calls     now / start >= tool_calls_ratio (2.0) or <= 1/ratio
                       per episode)                         (episode length in model tokens: length_drift)
====================== =================================== ======================================================

An alarm fires once per stage, the first time its condition holds, as a ``[rewardkit] health:`` log
line with the step and the numbers, and with the stage's rollout log the latest logged completions that show it
(``examples``: the longest for length drift, the best-paid for reward hacking); all of them end up in the
``health`` section of ``summary.json``.
``stop_on: [alarm, ...]`` stops the run at that alarm after saving a checkpoint; the same command resumes it
(an alarm that had already fired does not stop the resumed run again).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

from rewardkit.errors import RewardkitError
from rewardkit.recipe_schema import ALARMS, Monitor  # noqa: F401 - ALARMS: the checks, named where they are declared

LENGTH, ZERO_STD, REWARD = "completions/mean_length", "frac_reward_zero_std", "reward"
TOOL_ERRORS, TOOL_CALLS = "tools/failure_frequency", "tools/call_frequency"  # TRL's, in stages with tools
# Under dynamic sampling the trained groups carry signal by construction: the alarm reads what was generated.
ZERO_STD_KEYS = ("dynamic_sampling/generated_frac_reward_zero_std", ZERO_STD)
# KL to the reference in nats per token, as TRL logs it (PPO logs it too, beside its per-sequence ppo/kl);
# entropy in nats per token (TRL's entropy, PPO's ppo/entropy).
KL_KEYS, ENTROPY_KEYS = ("kl",), ("entropy", "ppo/entropy")


class HealthStop(RewardkitError):
    """The monitor stopped a stage on an alarm listed in ``monitor.stop_on``."""


def resolve(section: Monitor | dict | None) -> Monitor:
    """A stage's monitor configuration: its ``Monitor`` section, or one built from a mapping (defaults filled)."""
    if isinstance(section, Monitor):
        return section
    return Monitor(**{k: tuple(v) if isinstance(v, list) else v for k, v in (section or {}).items() if v is not None})


# --------------------------------------------------------------------------- the checks (pure functions)
def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def drift(values: list[float], w: int) -> tuple[float, float] | None:
    """(start, now): means of the first and the last ``w`` values; None until there are ``2 w`` of them."""
    if len(values) < 2 * w:
        return None
    return _mean(values[:w]), _mean(values[-w:])


def length_drift(lengths: list[float], w: int, ratio: float) -> dict | None:
    d = drift(lengths, w)
    if d is None or d[0] <= 0:
        return None
    start, now = d
    if now / start >= ratio or now / start <= 1 / ratio:
        return {"message": f"mean completion length {now:.1f} tokens vs {start:.1f} at the start "
                           f"(x{now / start:.2f}; alarm at x{ratio:g} or x{1 / ratio:.2g})",
                "start": start, "now": now}
    return None


def shares(means: dict[str, float], weights: dict[str, float]) -> dict[str, float] | None:
    """Each component's share of the weighted total, |w_i m_i| / sum_j |w_j m_j| (None when the sum is 0)."""
    parts = {k: abs(weights.get(k, 1.0) * m) for k, m in means.items()}
    total = sum(parts.values())
    return {k: p / total for k, p in parts.items()} if total > 0 else None


def reward_dominance(history: list[dict[str, float]], w: int, threshold: float) -> dict | None:
    """``history``: per logged record, each component's share. Fires when one rose to ``threshold``."""
    if len(history) < 2 * w or len(history[0]) < 2:
        return None
    for name in history[0]:
        start, now = drift([h.get(name, 0.0) for h in history], w)
        if now >= threshold > start:
            return {"message": f"reward '{name}' is {now:.0%} of the weighted total (was {start:.0%} at the "
                               f"start; alarm at {threshold:.0%})", "component": name, "start": start, "now": now}
    return None


def kl_acceleration(kl: list[float], w: int, growth: float, kl_min: float) -> dict | None:
    """Windows a, b, c (oldest first) of ``w`` records: fires when c >= kl_min, a < b (KL was already rising),
    c/b >= growth and c/b > b/a (it rises faster now). Noise around a level does not pass a < b and c/b >= 2."""
    if len(kl) < 3 * w:
        return None
    a, b, c = _mean(kl[-3 * w:-2 * w]), _mean(kl[-2 * w:-w]), _mean(kl[-w:])
    if c < kl_min or b <= 0 or b <= a:
        return None
    g_before = b / a if a > 0 else float("inf")
    if c / b >= growth and c / b > g_before:
        return {"message": f"KL {a:.4g} -> {b:.4g} -> {c:.4g} over the last {3 * w} logged records "
                           f"(x{c / b:.2f} in the last window after x{g_before:.2f}; alarm at x{growth:g})",
                "windows": [a, b, c]}
    return None


def entropy_collapse(entropy: list[float], w: int, ratio: float) -> dict | None:
    d = drift(entropy, w)
    if d is None or d[0] <= 0:
        return None
    start, now = d
    if now <= ratio * start:
        return {"message": f"entropy {now:.4g} vs {start:.4g} at the start (x{now / start:.2f}; alarm at "
                           f"x{ratio:g})", "start": start, "now": now}
    return None


def zero_variance_groups(frac: list[float], w: int, rise: float) -> dict | None:
    d = drift(frac, w)
    if d is None:
        return None
    start, now = d
    if now - start >= rise:
        return {"message": f"{now:.0%} of groups have zero reward variance (no learning signal) vs {start:.0%} "
                           f"at the start (alarm at +{rise:.0%})", "start": start, "now": now}
    return None


def tool_errors(frac: list[float], w: int, rise: float) -> dict | None:
    """The share of tool calls that failed (the model read ``{'error': ...}``) rose by ``rise`` since the start."""
    d = drift(frac, w)
    if d is None or d[1] - d[0] < rise:
        return None
    return {"message": f"{d[1]:.0%} of tool calls fail vs {d[0]:.0%} at the start (alarm at +{rise:.0%})",
            "start": d[0], "now": d[1]}


def tool_calls_drift(calls: list[float], w: int, ratio: float) -> dict | None:
    """Tool calls per episode grew or shrank by ``ratio`` (from none at the start: any rise to 1 or more)."""
    d = drift(calls, w)
    if d is None:
        return None
    start, now = d
    moved = now >= max(ratio * start, 1.0) if start == 0 else (now / start >= ratio or now / start <= 1 / ratio)
    if moved:
        return {"message": f"{now:.2f} tool calls per episode vs {start:.2f} at the start (alarm at x{ratio:g} "
                           f"either way)", "start": start, "now": now}
    return None


def reward_up_eval_down(evals: list[tuple[int, float, float]], w: int, drop: float) -> dict | None:
    """``evals``: (step, held-out score, training reward then), oldest first. Scores and rewards are averaged
    over windows of ``w`` evaluations; fires when the latest window's score is at least ``drop`` below the best
    earlier window that does not overlap it, while the training reward is higher than in that window."""
    if len(evals) < 2 * w:
        return None

    def at(k):  # (last step, mean score, mean reward) of the window starting at evaluation k
        win = evals[k:k + w]
        return win[-1][0], _mean([e[1] for e in win]), _mean([e[2] for e in win])

    best = max((at(k) for k in range(len(evals) - 2 * w + 1)), key=lambda x: x[1])
    step, score, reward = at(len(evals) - w)
    if score <= best[1] - drop and reward > best[2]:
        return {"message": f"held-out score {score:.1%} (mean of the last {w} evaluations, step {step}) vs "
                           f"{best[1]:.1%} up to step {best[0]}, while the training reward rose {best[2]:.3f} -> "
                           f"{reward:.3f} (alarm at -{drop:.0%})", "best": list(best), "now": [step, score, reward]}
    return None


# --------------------------------------------------------------------------- the monitor
def _first(logs: dict, keys) -> float | None:
    for k in keys:
        if isinstance(logs.get(k), (int, float)):
            return float(logs[k])
    return None


@dataclass
class HealthMonitor:
    """Collects logged records, runs the checks, and remembers the alarms (framework-free: see ``callback``)."""

    config: Monitor
    weights: dict[str, float]  # reward alias -> weight
    series: dict[str, list[float]] = field(default_factory=dict)
    share_history: list[dict[str, float]] = field(default_factory=list)
    evals: list[tuple[int, float, float]] = field(default_factory=list)
    alarms: list[dict] = field(default_factory=list)
    fired: set = field(default_factory=set)
    stopped: dict | None = None

    def _add(self, key: str, value: float | None) -> None:
        if value is not None:
            self.series.setdefault(key, []).append(value)

    def observe(self, step: int, logs: dict) -> list[dict]:
        """One logged record; returns the alarms that fire now."""
        if not isinstance(logs.get(REWARD), (int, float)) and LENGTH not in logs:
            return []  # not a training record (the final summary, an eval record)
        self._add("length", _first(logs, (LENGTH,)))
        self._add("kl", _first(logs, KL_KEYS))
        self._add("entropy", _first(logs, ENTROPY_KEYS))
        self._add("zero_std", _first(logs, ZERO_STD_KEYS))
        self._add("reward", _first(logs, (REWARD,)))
        self._add("tool_errors", _first(logs, (TOOL_ERRORS,)))
        self._add("tool_calls", _first(logs, (TOOL_CALLS,)))
        means = {k: float(logs[f"rewards/{k}/mean"]) for k in self.weights
                 if isinstance(logs.get(f"rewards/{k}/mean"), (int, float))}
        s = shares(means, self.weights) if len(means) == len(self.weights) else None
        if s is not None:
            self.share_history.append(s)
        c, w = self.config, self.config.window
        found = {
            "length_drift": length_drift(self.series.get("length", []), w, c.length_ratio),
            "reward_dominance": reward_dominance(self.share_history, w, c.dominance),
            "kl_acceleration": kl_acceleration(self.series.get("kl", []), w, c.kl_growth, c.kl_min),
            "entropy_collapse": entropy_collapse(self.series.get("entropy", []), w, c.entropy_ratio),
            "zero_variance_groups": zero_variance_groups(self.series.get("zero_std", []), w, c.zero_std_rise),
            "tool_errors": tool_errors(self.series.get("tool_errors", []), w, c.tool_error_rise),
            "tool_calls_drift": tool_calls_drift(self.series.get("tool_calls", []), w, c.tool_calls_ratio),
        }
        return self._settle(step, found)

    def observe_eval(self, step: int, score: float) -> list[dict]:
        rewards = self.series.get("reward", [])
        if not rewards or score != score:  # no training reward logged yet, or a NaN score (nothing judged)
            return []
        self.evals.append((step, score, _mean(rewards[-self.config.window:])))
        hit = reward_up_eval_down(self.evals, self.config.window, self.config.eval_drop)
        return self._settle(step, {"reward_up_eval_down": hit})

    def _settle(self, step: int, found: dict) -> list[dict]:
        """Each alarm fires once per stage: the first time its condition holds."""
        new = [{"alarm": name, "step": step, **hit} for name, hit in found.items()
               if hit is not None and name not in self.fired]
        self.fired.update(a["alarm"] for a in new)
        self.alarms.extend(new)
        return new

    def should_stop(self, new: list[dict]) -> dict | None:
        hit = next((a for a in new if a["alarm"] in self.config.stop_on), None)
        if hit is not None and self.stopped is None:
            self.stopped = hit
        return hit

    def watched(self) -> dict[str, str]:
        """Per alarm: 'watched', or why it could not be (its metric was never logged)."""
        have = {"length_drift": "length", "kl_acceleration": "kl", "entropy_collapse": "entropy",
                "zero_variance_groups": "zero_std", "tool_errors": "tool_errors", "tool_calls_drift": "tool_calls"}
        out = {a: ("watched" if k in self.series else "not logged") for a, k in have.items()}
        out["reward_dominance"] = "watched" if len(self.weights) > 1 else "one reward"
        out["reward_up_eval_down"] = "watched" if self.evals else "no held-out evaluation while training"
        return out

    def report(self) -> dict:
        return {"alarms": self.alarms, "checks": self.watched(), "stopped_by": self.stopped}


def replay(records: list[dict], config: Monitor | dict | None = None, weights: dict[str, float] | None = None) -> HealthMonitor:
    """Run the checks over a finished run's ``log.jsonl`` records (``python -m rewardkit.monitor LOG``)."""
    if weights is None:
        names = {k.split("/")[1] for r in records for k in r if k.startswith("rewards/") and k.endswith("/mean")}
        weights = {n: 1.0 for n in sorted(names)}
    monitor = HealthMonitor(resolve(config), weights)
    for r in records:
        monitor.observe(int(r.get("step", 0)), r)
    return monitor


def read_log(path: str, up_to: int | None = None) -> list[dict]:
    """A stage's log records (rewardkit.plot.read_log), those up to step ``up_to`` when given."""
    from rewardkit.plot import read_log as read_records  # noqa: PLC0415

    if not os.path.exists(path):
        return []
    return [r for r in read_records(path) if up_to is None or r["step"] <= up_to]


# --------------------------------------------------------------------------- wiring into a TRL trainer
EVAL_KEY = "monitor/heldout_score"  # held-out scores while training, appended to the stage's log.jsonl


def build_evaluator(ctx, n: int):
    """Greedy held-out score of the first ``n`` rows of the recipe's eval split, or None without eval.

    Runs under a forked RNG, so training draws the same random numbers with and without it."""
    ev = ctx.recipe.eval
    if not ev or not ctx.spec.evaluate or ev.split not in ctx.dataset:
        return None
    fn = ctx.registry.build_reward(ev.reward.name, ev.reward.params, alias="eval")
    rows = ctx.dataset[ev.split].select(range(min(n, len(ctx.dataset[ev.split]))))
    return functools.partial(_heldout_score, ctx.tokenizer, rows, fn, ev)


def _heldout_score(tokenizer, rows, fn, ev, model) -> float:
    import torch  # noqa: PLC0415

    from rewardkit.evaluate import evaluate  # noqa: PLC0415

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    side = tokenizer.padding_side
    try:
        with torch.random.fork_rng(devices=devices):
            return evaluate(model, tokenizer, rows, fn, ev.max_new_tokens, ev.batch_size)["score"]
    finally:
        tokenizer.padding_side = side


def examples(alarm: str, recent, n: int = 3) -> list[dict]:
    """The logged completions that show an alarm (from the rollout log's latest records): the longest for
    length_drift, the best-paid for reward hacking alarms, the latest otherwise; each trimmed to what a reader
    needs."""
    recs = list(recent)
    if alarm == "length_drift":
        recs = sorted(recs, key=lambda r: -r["length"])
    elif alarm in ("reward_dominance", "reward_up_eval_down"):
        recs = sorted(recs, key=lambda r: -(r["reward"] if r["reward"] is not None else float("-inf")))
    else:
        recs = recs[::-1]
    keys = ("step", "prompt", "completion", "length", "rewards", "reward")
    return [{k: r[k] for k in keys} for r in recs[:n]]


def make_callback(monitor: HealthMonitor, evaluate, log_path: str, stage: str, rollout_log=None, report=None):
    """The ``transformers.TrainerCallback`` (rewardkit.callbacks.HealthCallback) that feeds ``monitor`` and stops
    training on ``stop_on`` alarms; with the stage's ``rollout_log`` each alarm carries the logged completions that
    show it (``examples``); with ``report`` (rewardkit.report) held-out scores and alarms also go to the trainer's
    ``report_to`` backends."""
    from rewardkit.callbacks import HealthCallback  # noqa: PLC0415 - transformers, only when training

    return HealthCallback(monitor, evaluate, log_path, stage, rollout_log, report)


def attach(trainer, ctx) -> HealthMonitor | None:
    """Add the monitor to an RL stage's trainer (``trainer.health_monitor``) unless ``monitor.enabled`` is false."""
    cfg = resolve(getattr(ctx.spec, "monitor", None))
    if not cfg.enabled:
        return None
    monitor = HealthMonitor(cfg, {b.alias: b.weight for b in ctx.spec.rewards})
    evaluate = build_evaluator(ctx, cfg.eval_n) if cfg.eval_every != 0 and trainer.args.world_size == 1 else None
    trainer.add_callback(make_callback(monitor, evaluate, os.path.join(ctx.output_dir, "log.jsonl"), ctx.spec.name,
                                       getattr(trainer, "rollout_log", None), getattr(ctx, "report", None)))
    trainer.health_monitor = monitor
    return monitor


def stop_message(stage: str, monitor: HealthMonitor, out_dir: str) -> str:
    a = monitor.stopped
    return (f"stage '{stage}' stopped by the health monitor at step {a['step']} on {a['alarm']} "
            f"(monitor.stop_on): {a['message']}; the checkpoint is kept in {out_dir}: run the same command to "
            f"resume (the alarm that fired does not stop it again), or fix the cause and use --fresh")


def format_alarm(stage: str, a: dict) -> str:
    return f"stage '{stage}' step {a['step']}: {a['alarm']}: {a['message']}"


if __name__ == "__main__":  # pragma: no cover - a convenience for finished runs
    import sys

    for arg in sys.argv[1:]:
        mon = replay(read_log(arg))
        print(f"{arg}: {len(mon.alarms)} alarm(s); checks: {mon.watched()}")
        for alarm in mon.alarms:
            print("  " + format_alarm(os.path.basename(os.path.dirname(arg)), alarm))
