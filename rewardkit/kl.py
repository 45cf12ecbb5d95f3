"""Per-token KL estimators, KL(policy || ref), from log-probs of tokens sampled from the policy.

With ``r = ref_logp - logp`` (log of ref/policy at the sampled token), Schulman's estimators
("Approximating KL Divergence", 2020) are:

========== ======================== ======== =============== ===========================================
name       formula                  unbiased non-negative    use
========== ======================== ======== =============== ===========================================
k1         ``-r``                   yes      no              cheapest; high variance, can go negative
k2         ``r**2 / 2``             no       yes             low variance; its gradient is the true KL's
k3         ``exp(r) - 1 - r``       yes      yes             TRL GRPO's and DeepSeek's choice
low_var_kl k3 clamped to [-10, 10]  no*      yes             verl's; guards against exp overflow
abs        ``|r|``                  no       yes             robust penalty, biased upward
========== ======================== ======== =============== ===========================================

(* unbiased until the clamp bites.) Every function takes ``(B, T)`` tensors and returns ``(B, T)``;
the caller masks padding.
"""

from __future__ import annotations


def k1(logp, ref_logp):
    return logp - ref_logp  # (B, T)


def k2(logp, ref_logp):
    return 0.5 * (logp - ref_logp) ** 2  # (B, T)


def k3(logp, ref_logp):
    import torch

    r = ref_logp - logp  # (B, T)
    return torch.exp(r) - r - 1


def low_var_kl(logp, ref_logp):
    import torch

    return torch.clamp(k3(logp, ref_logp), min=-10.0, max=10.0)


def abs_kl(logp, ref_logp):
    return (logp - ref_logp).abs()


ESTIMATORS = {
    "k1": ("rewardkit.kl:k1", "log-ratio; unbiased, high variance, can be negative"),
    "k2": ("rewardkit.kl:k2", "half squared log-ratio; biased, low variance, non-negative"),
    "k3": ("rewardkit.kl:k3", "exp(r)-r-1; unbiased and non-negative (TRL GRPO default)"),
    "low_var_kl": ("rewardkit.kl:low_var_kl", "k3 clamped to [-10, 10] (verl)"),
    "abs": ("rewardkit.kl:abs_kl", "absolute log-ratio; biased, robust"),
}


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, beta: float):
        self.beta = float(beta)

    def update(self, kl: float, n_steps: int = 1) -> float:
        return self.beta


class AdaptiveKLController:
    """β adapted toward a KL target.

    ``mode="halve_double"``: the PPO paper's rule (Schulman et al. 2017, §4): after each update, β ← β/2 when
    the measured KL < target/1.5 and β ← 2β when KL > 1.5·target.
    ``mode="proportional"``: the controller of Ziegler et al. 2019 ("Fine-Tuning LMs from Human Preferences"):
    e = clip(KL/target − 1, −0.2, 0.2); β ← β·(1 + e·n_steps/horizon).
    """

    MODES = ("halve_double", "proportional")

    def __init__(self, beta: float, target: float, mode: str = "halve_double", horizon: int = 10000):
        if target <= 0:
            raise ValueError(f"KL target must be > 0, got {target}")
        if mode not in self.MODES:
            raise ValueError(f"KL controller mode must be one of {self.MODES}, got {mode!r}")
        self.beta, self.target, self.mode, self.horizon = float(beta), float(target), mode, horizon

    def update(self, kl: float, n_steps: int = 1) -> float:
        if self.mode == "halve_double":
            if kl < self.target / 1.5:
                self.beta /= 2.0
            elif kl > self.target * 1.5:
                self.beta *= 2.0
        else:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta


def kl_controller(beta: float, target: float | None = None, mode: str = "halve_double", horizon: int = 10000):
    """A fixed controller without a target, an adaptive one with it."""
    return FixedKLController(beta) if target is None else AdaptiveKLController(beta, target, mode, horizon)
