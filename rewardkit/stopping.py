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

import json
import math
import os

from rewardkit.recipe_schema import EarlyStop, Eval


def check(section: EarlyStop, ev: Eval | None, where: str, max_steps=None, registry=None) -> list[str]:
    """What the stage's ``early_stop`` (its own keys, types and ranges already checked: rewardkit.recipe_schema)
    cannot do with the rest of the recipe: its split against ``eval``'s, ``every`` against the trainer's
    ``max_steps``, ``target`` against the range the eval reward's scores lie in (``registry``)."""
    problems = []
    every = section.every
    if isinstance(max_steps, int) and not isinstance(max_steps, bool) and every and 0 < max_steps < every:
        problems.append(f"{where}.every: {every} is beyond the stage's trainer.max_steps ({max_steps}): the "
                        f"criterion would never be checked and the stage would run its whole budget")
    if ev is None:
        problems.append(f"{where}: needs the recipe's eval: section (its reward scores the split)")
        return problems
    if section.split == ev.split:
        problems.append(f"{where}.split: '{ev.split}' is the split eval: reports; choosing when to stop on it "
                        f"would tune on the held-out score (use a validation split, e.g. data.params.n_val)")
    if registry is not None:
        problems += check_scores(section, ev, registry, where)
    return problems


def check_scores(section: EarlyStop, ev: Eval, registry, where: str) -> list[str]:
    """``target`` against the range ``(low, high)`` the eval reward's scores lie in, when its factory declares
    one (``score_range``): a target above it is never reached, and the stage would run its whole budget. (One at
    the low end fires at the first evaluation, which the log says; with ``anneal_steps`` that is a schedule.)"""
    from rewardkit.errors import PluginError  # noqa: PLC0415

    reward = ev.reward.name if ev.reward else None
    try:
        score_range = getattr(registry.load("rewards", reward), "score_range", None) if reward else None
    except PluginError:
        return []  # an unknown eval reward is reported by eval.reward's check
    if not score_range or section.target is None:
        return []
    low, high = score_range
    if section.target > high:
        return [f"{where}.target: {section.target!r} can never be reached (eval's reward '{reward}' scores between "
                f"{low:g} and {high:g}); the stage would run its whole max_steps"]
    return []


class StopRule:
    """The decision alone, fed one score at a time: ``update(step, score)`` returns why to stop, or None."""

    def __init__(self, target: float | None = None, patience: int | None = None,
                 min_delta: float = EarlyStop.min_delta):
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


def callback(section: EarlyStop, score, log, state_path: str, resume_step: int | None = None, report=None):
    """A ``TrainerCallback`` applying ``section`` (an ``early_stop`` block); ``score(model) -> float``; each score
    also goes to ``report`` (rewardkit.report: the trainer's ``report_to`` backends) as
    ``rewardkit/early_stop_score``.

    Its scores are written to ``state_path`` (JSON) after every evaluation; with ``resume_step`` the ones up to
    that step are replayed first, so a killed and resumed stage stops where an uninterrupted one would.
    """
    from rewardkit.callbacks import HeldOutStopping  # noqa: PLC0415 - transformers, only when training

    if isinstance(section, dict):  # a mapping as the recipe writes it
        section = EarlyStop(**section)
    rule = StopRule(section.target, section.patience, section.min_delta)
    previous = {}
    if resume_step is not None and os.path.exists(state_path):
        with open(state_path) as f:
            previous = json.load(f)
        rule.replay(previous.get("history", []), resume_step)
    return HeldOutStopping(section, rule, score, log, state_path, previous if resume_step is not None else {},
                           resume_step, report)
