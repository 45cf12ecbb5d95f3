"""Stopping a stage on a held-out criterion instead of a step count (a recipe stage's ``early_stop:``).

Every ``every`` optimizer steps the stage's policy is scored by generation on a split that is not the one
``eval:`` reports (``validation`` by default), with the recipe's eval reward. Training stops once the score
reaches ``target`` (a warm start of known quality, whatever the seed: SFT's jump comes at a different step for
every seed), or after ``patience`` evaluations without an improvement of at least ``min_delta`` (the usual
early stopping, as transformers' ``EarlyStoppingCallback`` does with a loss). ``max_steps`` stays the budget.

With ``anneal_steps`` the criterion does not stop the stage at once: from that step the learning rate decays
linearly to 0 over ``anneal_steps`` more steps and the stage stops then (a warmup-stable-decay schedule whose
decay starts on a held-out criterion). The result is an annealed, converged model whatever the step at which
the seed (or the CPU's floating point) made SFT generalize, where a fixed cosine schedule decays before a late
jump and leaves it half-learned.
"""

from __future__ import annotations

import math

EARLY_STOP_KEYS = {
    "every": (int, "evaluate every N optimizer steps (required)"),
    "split": (str, "split scored for the decision (default validation; never the eval split)"),
    "n": (int, "score the first N rows of that split (default all)"),
    "target": ((int, float), "stop once the greedy score is >= this"),
    "patience": (int, "stop after this many evaluations without improving by min_delta"),
    "min_delta": ((int, float), "smallest change that counts as an improvement (default 0)"),
    "anneal_steps": (int, "on the criterion, decay the learning rate linearly to 0 over N more steps, then stop"),
}


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check(section: dict, eval_split: str | None, where: str, max_steps=None) -> list[str]:
    """Meaning checks of an ``early_stop`` section whose keys and types were already checked; ``max_steps`` is
    the stage's trainer budget (when the recipe gives one)."""
    problems = []
    every = section.get("every")
    if not _int(every) or every < 1:
        problems.append(f"{where}.every: required, a positive number of steps (got {every!r})")
    elif _int(max_steps) and 0 < max_steps < every:
        problems.append(f"{where}.every: {every} is beyond the stage's trainer.max_steps ({max_steps}): the "
                        f"criterion would never be checked and the stage would run its whole budget")
    target, patience = section.get("target"), section.get("patience")
    if target is None and patience is None:
        problems.append(f"{where}: give target (stop at a score) or patience (stop when it stops improving)")
    if isinstance(target, (int, float)) and not isinstance(target, bool) and not math.isfinite(target):
        problems.append(f"{where}.target: must be a finite number, got {target!r}")
    for key in ("patience", "anneal_steps", "n"):
        if _int(section.get(key)) and section[key] < 1:
            problems.append(f"{where}.{key}: must be >= 1, got {section[key]!r}")
    min_delta = section.get("min_delta")
    if isinstance(min_delta, (int, float)) and not isinstance(min_delta, bool) and min_delta < 0:
        problems.append(f"{where}.min_delta: must be >= 0 (an improvement), got {min_delta!r}")
    if eval_split is None:
        problems.append(f"{where}: needs the recipe's eval: section (its reward scores the split)")
    elif section.get("split", "validation") == eval_split:
        problems.append(f"{where}.split: '{eval_split}' is the split eval: reports; choosing when to stop on it "
                        f"would tune on the held-out score (use a validation split, e.g. data.params.n_val)")
    return problems


def check_scores(section: dict, eval_section: dict | None, registry, where: str) -> list[str]:
    """``target`` against the range ``(low, high)`` the eval reward's scores lie in, when its factory declares
    one (``score_range``): a target above it is never reached, and the stage would run its whole budget. (One at
    the low end fires at the first evaluation, which the log says; with ``anneal_steps`` that is a schedule.)"""
    from rewardkit.errors import PluginError  # noqa: PLC0415

    reward = (eval_section or {}).get("reward")
    reward = reward.get("name") if isinstance(reward, dict) else reward
    try:
        score_range = getattr(registry.load("rewards", reward), "score_range", None) if isinstance(reward, str) \
            else None
    except PluginError:
        return []  # an unknown eval reward is reported by eval.reward's check
    if not score_range:
        return []
    low, high = score_range
    target = section.get("target")
    if isinstance(target, (int, float)) and not isinstance(target, bool) and target > high:
        return [f"{where}.target: {target!r} can never be reached (eval's reward '{reward}' scores between {low:g} "
                f"and {high:g}); the stage would run its whole max_steps"]
    return []


class StopRule:
    """The decision alone, fed one score at a time: ``update(step, score)`` returns why to stop, or None."""

    def __init__(self, target: float | None = None, patience: int | None = None, min_delta: float = 0.0):
        self.target, self.patience, self.min_delta = target, patience, min_delta
        self.best, self.stale, self.history = -math.inf, 0, []

    def update(self, step: int, score: float) -> str | None:
        self.history.append([step, score])
        if self.target is not None and score >= self.target:
            return f"held-out score {score:.1%} >= target {self.target:.1%}"
        if score >= self.best + self.min_delta:
            self.best, self.stale = score, 0
        else:
            self.stale += 1
        if self.patience is not None and self.stale >= self.patience:
            return f"no improvement over {self.best:.1%} in {self.patience} evaluations"
        return None

    def state(self) -> dict:
        return {"best": self.best, "stale": self.stale, "history": self.history}

    def replay(self, history: list, up_to: int) -> None:
        """Feed back the scores of a previous attempt up to step ``up_to`` (what a resumed run continues
        from), so patience counts exactly as in an uninterrupted run."""
        for step, score in history:
            if step <= up_to:
                self.update(step, score)


def callback(section: dict, score, log, state_path: str, resume_step: int | None = None, report=None):
    """A ``TrainerCallback`` applying ``section`` (an ``early_stop`` block); ``score(model) -> float``; each score
    also goes to ``report`` (rewardkit.report: the trainer's ``report_to`` backends) as
    ``rewardkit/early_stop_score``.

    Its scores are written to ``state_path`` (JSON) after every evaluation; with ``resume_step`` the ones up to
    that step are replayed first, so a killed and resumed stage stops where an uninterrupted one would.
    """
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415

    from transformers import TrainerCallback  # noqa: PLC0415

    rule = StopRule(section.get("target"), section.get("patience"), section.get("min_delta", 0.0))
    anneal_steps = section.get("anneal_steps")
    previous = {}
    if resume_step is not None and os.path.exists(state_path):
        with open(state_path) as f:
            previous = json.load(f)
        rule.replay(previous.get("history", []), resume_step)
    every = section["every"]

    class HeldOutStopping(TrainerCallback):
        stopped: dict | None = None
        # {"step": where the criterion fired, "reason": why}: the learning rate decays from there.
        annealing: dict | None = None

        def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
            began = previous.get("annealing")
            if anneal_steps and began and resume_step is not None and began["step"] <= resume_step:
                self.annealing = began
                self._decay(lr_scheduler)  # a scheduler restored from a checkpoint has its original lambdas

        def _decay(self, lr_scheduler):
            # LambdaLR: lr = base_lr * factor(step). From the criterion's step, the factor reached there
            # falls linearly to 0 at start + anneal_steps; optimizer and logged lr follow it.
            lr_scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's wrapper
            if not hasattr(lr_scheduler, "lr_lambdas"):
                raise ValueError(f"early_stop.anneal_steps needs a LambdaLR schedule (constant, linear, cosine, "
                                 f"...), not {type(lr_scheduler).__name__}")
            start = self.annealing["step"]
            factors = [f(start) for f in lr_scheduler.lr_lambdas]
            lr_scheduler.lr_lambdas = [lambda s, f0=f0: f0 * max(0.0, 1.0 - (s - start) / anneal_steps)
                                       for f0 in factors]

        def _stop(self, control, step, reason):
            self.stopped = {"step": step, "reason": reason}
            log(f"stopping at step {step}: {reason}")
            control.should_training_stop = True
            control.should_save = True  # the stopping point is a checkpoint too: a resume continues here

        def on_step_end(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
            step = state.global_step
            if self.annealing:
                if step >= self.annealing["step"] + anneal_steps:
                    self._stop(control, step, f"{self.annealing['reason']}; then annealed over {anneal_steps} "
                                              f"steps")
                    self._write(state)
                return
            if step % every:
                return
            # Every process scores the same split with the same (synchronised) weights, so all of them reach
            # the same decision without communicating; only the main one writes.
            value = score(model)
            log(f"step {step}: {section.get('split', 'validation')} score {value:.1%}")
            if report is not None:
                report({"rewardkit/early_stop_score": value})
            reason = rule.update(step, value)
            if reason and anneal_steps:
                self.annealing = {"step": step, "reason": reason}
                self._decay(lr_scheduler)
                log(f"step {step}: {reason}; decaying the learning rate to 0 over {anneal_steps} steps")
            elif reason:
                self._stop(control, step, reason)
            self._write(state)

        def _write(self, state):
            if state.is_world_process_zero:
                tmp = f"{state_path}.tmp-{os.getpid()}"
                with open(tmp, "w") as f:
                    json.dump({**rule.state(), "stopped": self.stopped, "annealing": self.annealing}, f)
                os.replace(tmp, state_path)

        def summary(self) -> dict:
            return {"stopped_at": (self.stopped or {}).get("step"), "reason": (self.stopped or {}).get("reason"),
                    "annealed_from": (self.annealing or {}).get("step"), "history": rule.history}

    return HeldOutStopping()
