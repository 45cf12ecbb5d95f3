"""One vocabulary for rollout reuse and KL control, shared by ``trainer: ppo`` and ``trainer: grpo_is``.

Both trainers reuse a rollout for several epochs and keep the policy near a reference with a KL penalty β; these
fields mean the same thing, with the same defaults, in both (``RolloutKLConfig`` is a base of ``PPOConfig`` and
``GRPOISConfig``). Two different KLs are involved, and the names say which:

- ``early_stop_kl`` is about KL(π_old‖π_θ), how far the policy moved from the one that generated the rollout
  (PPO implementations' target-KL early stop);
- ``beta``, ``kl_estimator`` and the ``beta_*`` fields are about KL(π_θ‖π_ref), the penalty toward the reference.

The names used before (``target_kl``, ``kl_target``, ``kl_controller``, ``kl_horizon`` and, for PPO, TRL's
``num_iterations``) are rejected at validation with a pointer to the new one (``renamed_problems``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rewardkit.algorithms.kl import ESTIMATORS, KL_PLACEMENTS, REWARD_ESTIMATORS, AdaptiveKLController

# old name -> new name
RENAMED = {"target_kl": "early_stop_kl", "kl_target": "beta_target", "kl_controller": "beta_controller",
           "kl_horizon": "beta_horizon", "num_iterations": "rollout_epochs"}


@dataclass
class RolloutKLConfig:
    """Rollout reuse and KL control (mixed into the trainers' TRL config dataclasses)."""

    rollout_epochs: int = field(default=4, metadata={
        "help": "Optimisation epochs over each rollout, importance-sampled against the policy that generated it "
                "(PPO, Schulman et al. 2017 'K epochs'; μ of GRPO, Shao et al. 2024 Alg. 1). Replaces TRL's "
                "num_iterations, which must stay 1."})
    reshuffle: bool = field(default=True, metadata={
        "help": "Draw new minibatches from the rollout every epoch (PPO's minibatch SGD, Schulman et al. 2017 "
                "Alg. 1); false replays the first epoch's minibatches in order."})
    early_stop_kl: float | None = field(default=None, metadata={
        "help": "Stop reusing a rollout when approx. KL(π_old‖π_θ) (k3, nats per token) on the minibatch that "
                "opens an optimizer step exceeds this (target-KL early stop of OpenAI Spinning Up / baselines); "
                "the step is taken on a fresh rollout instead. null: never."})
    kl_estimator: str = field(default="k3", metadata={
        "help": "Registered per-token estimator of KL(π_θ‖π_ref) weighted by beta (Schulman 2020; k3 is GRPO's, "
                f"Shao et al. 2024 eq. 4). Built-ins: {', '.join(ESTIMATORS)}. With kl_placement: reward only k1 "
                "(rewardkit/algorithms/kl.py says why)."})
    kl_placement: str = field(default="loss", metadata={
        "help": "Where β·KL(π_θ‖π_ref) acts: 'reward' (detached, subtracted from the per-token reward: PPO, "
                "Ziegler et al. 2019; for grpo_is from the advantage as a reward-to-go) or 'loss' (β·k·ρ added to "
                "the loss, ρ = π_θ/π_old per token when use_bias_correction_kl, as TRL GRPO does). Default: "
                "reward for ppo, loss for grpo_is."})
    beta_target: float | None = field(default=None, metadata={
        "help": "Adapt beta after every rollout toward this KL(π_θ‖π_ref) in nats per *sequence* (summed over a "
                "completion's tokens, averaged over completions) (adaptive KL penalty, Schulman et al. 2017 §4; "
                "Ziegler et al. 2019). null keeps beta fixed. Needs beta > 0."})
    beta_controller: str = field(default="proportional", metadata={
        "help": "Adaptive-beta rule: 'proportional' (Ziegler et al. 2019: β ← β(1 + clip(KL/target − 1, ±0.2)·"
                "n/beta_horizon), n = episodes of the rollout) or 'halve_double' (Schulman et al. 2017 §4)."})
    beta_horizon: int = field(default=10000, metadata={
        "help": "Horizon of the proportional controller, in episodes (completions); Ziegler et al. 2019 use 10000."})

    def rollout_arithmetic_problems(self) -> list[str]:
        """The epochs and batches of a rollout: ``rollout_epochs`` >= 1 and, with ``early_stop_kl``, epochs that end
        on an optimizer step. A trainer with a fuller account of its batch arithmetic overrides this (grpo_is)."""
        p = []
        if self.rollout_epochs < 1:
            p.append(f"rollout_epochs must be >= 1, got {self.rollout_epochs}")
        if self.early_stop_kl is not None:
            s, a = getattr(self, "steps_per_generation", None), getattr(self, "gradient_accumulation_steps", 1)
            if s is not None and s % a != 0:
                p.append(f"early_stop_kl acts on optimizer steps: steps_per_generation ({s}) must be a multiple of "
                         f"gradient_accumulation_steps ({a})")
        return p

    def rollout_kl_problems(self) -> list[str]:
        """What is wrong with these fields, each problem naming its field (empty when fine)."""
        p = self.rollout_arithmetic_problems()
        if getattr(self, "num_iterations", 1) != 1:
            p.append(f"num_iterations={self.num_iterations}: epochs per rollout are rollout_epochs here (did you "
                     f"mean 'rollout_epochs'?); set rollout_epochs: {self.num_iterations} and leave num_iterations "
                     f"at 1")
        if self.early_stop_kl is not None and self.early_stop_kl <= 0:
            p.append(f"early_stop_kl must be > 0 or null, got {self.early_stop_kl}")
        if self.beta_controller not in AdaptiveKLController.MODES:
            p.append(f"beta_controller must be one of {', '.join(AdaptiveKLController.MODES)}, "
                     f"got {self.beta_controller!r}")
        if self.kl_placement not in KL_PLACEMENTS:
            p.append(f"kl_placement must be one of {', '.join(KL_PLACEMENTS)}, got {self.kl_placement!r}")
        elif self.kl_placement == "reward" and self.kl_estimator not in REWARD_ESTIMATORS:
            p.append(f"kl_estimator {self.kl_estimator!r} with kl_placement: reward: a detached penalty k in the "
                     f"reward contributes E[k·∇log π] = ∇E[k] − E[∇k] to the gradient, and E[∇k] vanishes only for "
                     f"k1, so any other estimator there does not pull toward the reference (k3 can push away from "
                     f"it; rewardkit/algorithms/kl.py has the measurements). Use kl_estimator: k1, or kl_placement: "
                     f"loss for {self.kl_estimator}")
        if self.beta_horizon < 1:
            p.append(f"beta_horizon must be >= 1 episode, got {self.beta_horizon}")
        beta = getattr(self, "beta", 0.0)
        if self.beta_target is not None and (self.beta_target <= 0 or beta <= 0):
            p.append(f"beta_target={self.beta_target} adapts beta, which needs beta_target > 0 and a starting "
                     f"beta > 0 (got beta={beta}); an adaptive β multiplies the current one")
        return p


def estimator_kwarg(ctx) -> dict:
    """The trainer keyword carrying the stage's KL estimator, resolved from the run's registry."""
    name = ctx.spec.trainer_args.get("kl_estimator", RolloutKLConfig.kl_estimator)
    return {"kl_estimator_fn": ctx.registry.kl_estimator(name)}


def renamed_problems(args: dict) -> list[str]:
    """A recipe's trainer keys that use an old name, each with a did-you-mean for its new name."""
    return [f"{old}: renamed (did you mean '{RENAMED[old]}'?); PPO and grpo_is share one vocabulary, see "
            f"rewardkit/trainers/rollout_kl.py" for old in args if old in RENAMED]
