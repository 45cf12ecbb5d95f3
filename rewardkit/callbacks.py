"""rewardkit's ``transformers.TrainerCallback`` classes: the thin adapters between a TRL trainer's events and
rewardkit's own logic, which lives, framework-free, where its concept does (the log records, ``stopping.StopRule``,
``monitor.HealthMonitor``). Imported only when a stage trains (it imports transformers); the factories that build
these are ``trainers.base.LogHistoryCallback``, ``stopping.callback`` and ``monitor.make_callback``.
"""

from __future__ import annotations

import json
import os

from transformers import TrainerCallback


class LogRecords(TrainerCallback):
    """Appends every log record to ``path`` (``<stage>/log.jsonl``) as it happens (survives crashes)."""

    def __init__(self, path: str):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class HeldOutStopping(TrainerCallback):
    """A stage's ``early_stop`` (rewardkit.stopping): every ``section.every`` steps ``score(model)`` is fed to
    ``rule``; on its verdict training stops, or with ``anneal_steps`` the learning rate decays to 0 first. Its state
    is written to ``state_path``; ``previous`` is what an interrupted attempt wrote there (resumed at
    ``resume_step``)."""

    def __init__(self, section, rule, score, log, state_path: str, previous: dict, resume_step, report=None):
        self.section, self.rule, self.score, self.log = section, rule, score, log
        self.state_path, self.previous, self.resume_step, self.report = state_path, previous, resume_step, report
        self.stopped: dict | None = None
        # {"step": where the criterion fired, "reason": why}: the learning rate decays from there.
        self.annealing: dict | None = None

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        began = self.previous.get("annealing")
        if self.section.anneal_steps and began and self.resume_step is not None and began["step"] <= self.resume_step:
            self.annealing = began
            self._decay(lr_scheduler)  # a scheduler restored from a checkpoint has its original lambdas

    def _decay(self, lr_scheduler):
        # LambdaLR: lr = base_lr * factor(step). From the criterion's step, the factor reached there
        # falls linearly to 0 at start + anneal_steps; optimizer and logged lr follow it.
        lr_scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's wrapper
        if not hasattr(lr_scheduler, "lr_lambdas"):
            raise ValueError(f"early_stop.anneal_steps needs a LambdaLR schedule (constant, linear, cosine, "
                             f"...), not {type(lr_scheduler).__name__}")
        start, span = self.annealing["step"], self.section.anneal_steps
        factors = [f(start) for f in lr_scheduler.lr_lambdas]
        lr_scheduler.lr_lambdas = [lambda s, f0=f0: f0 * max(0.0, 1.0 - (s - start) / span) for f0 in factors]

    def _stop(self, control, step, reason):
        self.stopped = {"step": step, "reason": reason}
        self.log(f"stopping at step {step}: {reason}")
        control.should_training_stop = True
        control.should_save = True  # the stopping point is a checkpoint too: a resume continues here

    def on_step_end(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        step, anneal_steps = state.global_step, self.section.anneal_steps
        if self.annealing:
            if step >= self.annealing["step"] + anneal_steps:
                self._stop(control, step, f"{self.annealing['reason']}; then annealed over {anneal_steps} steps")
                self._write(state)
            return
        if step % self.section.every:
            return
        # Every process scores the same split with the same (synchronised) weights, so all of them reach
        # the same decision without communicating; only the main one writes.
        value = self.score(model)
        self.log(f"step {step}: {self.section.split} score {value:.1%}")
        if self.report is not None:
            self.report({"rewardkit/early_stop_score": value})
        reason = self.rule.update(step, value)
        if reason and anneal_steps:
            self.annealing = {"step": step, "reason": reason}
            self._decay(lr_scheduler)
            self.log(f"step {step}: {reason}; decaying the learning rate to 0 over {anneal_steps} steps")
        elif reason:
            self._stop(control, step, reason)
        self._write(state)

    def _write(self, state):
        if state.is_world_process_zero:
            tmp = f"{self.state_path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump({**self.rule.state(), "stopped": self.stopped, "annealing": self.annealing}, f)
            os.replace(tmp, self.state_path)

    def summary(self) -> dict:
        return {"stopped_at": (self.stopped or {}).get("step"), "reason": (self.stopped or {}).get("reason"),
                "annealed_from": (self.annealing or {}).get("step"), "history": self.rule.history}


class HealthCallback(TrainerCallback):
    """Feeds a ``monitor.HealthMonitor`` the trainer's log records and, every ``eval_every`` steps, the held-out
    score ``evaluate(model)`` (None: none); stops training on a ``stop_on`` alarm. ``rollout_log`` gives each alarm
    the logged completions that show it, ``report`` sends scores and alarms to the report_to backends."""

    every = 0

    def __init__(self, monitor, evaluate, log_path: str, stage: str, rollout_log=None, report=None):
        self.monitor, self.evaluate, self.log_path, self.stage = monitor, evaluate, log_path, stage
        self.rollout_log, self.report = rollout_log, report or (lambda metrics: None)

    def on_train_begin(self, args, state, control, **kwargs):
        from rewardkit.monitor import read_log  # noqa: PLC0415

        every = self.monitor.config.eval_every
        self.every = (max(1, state.max_steps // 10) if every is None else every) if self.evaluate else 0
        if state.global_step > 0 and not self.monitor.alarms:  # resumed: what the kept log says happened
            for row in read_log(self.log_path, state.global_step):
                self._observe(int(row.get("step", 0)), row)
            self.monitor.stopped = None

    def _observe(self, step, row):
        from rewardkit.monitor import EVAL_KEY  # noqa: PLC0415

        new = self.monitor.observe(step, row)
        if isinstance(row.get(EVAL_KEY), (int, float)):
            new += self.monitor.observe_eval(step, float(row[EVAL_KEY]))
        return new

    def on_step_end(self, args, state, control, model=None, **kwargs):
        from rewardkit.monitor import EVAL_KEY  # noqa: PLC0415

        if self.every and state.global_step % self.every == 0 and model is not None:
            score = self.evaluate(model)
            if state.is_world_process_zero:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps({"step": state.global_step, EVAL_KEY: score}) + "\n")
            self.report({"rewardkit/heldout_score": score})
            self._act(self.monitor.observe_eval(state.global_step, score), state, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._act(self.monitor.observe(state.global_step, logs or {}), state, control)

    def _act(self, new, state, control):
        from rewardkit.monitor import examples, format_alarm  # noqa: PLC0415

        for alarm in new:
            self.report({f"rewardkit/alarm/{alarm['alarm']}": 1.0})
            if self.rollout_log is not None and self.rollout_log.recent:
                alarm["examples"] = examples(alarm["alarm"], self.rollout_log.recent)
            if state.is_world_process_zero:
                print(f"[rewardkit] health: {format_alarm(self.stage, alarm)}", flush=True)
                for ex in alarm.get("examples", [])[:2]:
                    print(f"[rewardkit] health:   step {ex['step']} reward {ex['reward']} length {ex['length']}: "
                          f"{ex['completion'][:120]!r}", flush=True)
        hit = self.monitor.should_stop(new)
        if hit is not None:
            control.should_save = True  # the checkpoint is written right after this step's log
            control.should_training_stop = True
            if state.is_world_process_zero:
                print(f"[rewardkit] health: stopping at step {state.global_step} on {hit['alarm']} "
                      f"(monitor.stop_on); a checkpoint is saved", flush=True)
