"""Per-token KL estimators, KL(policy || ref), from log-probs of tokens sampled from the policy.

KL(π‖π_ref), the expectation under the policy being trained, is the *reverse* KL that RLHF penalises (Ziegler
et al. 2019; mode-seeking); KL(π_ref‖π) is the forward one. With ``r = ref_logp - logp`` (log of ref/policy at
the sampled token), Schulman's estimators ("Approximating KL Divergence", 2020) are:

========== ======================== ======== =============== ===========================================
name       formula                  unbiased non-negative    use
========== ======================== ======== =============== ===========================================
k1         ``-r``                   yes      no              cheapest; high variance, can go negative
k2         ``r**2 / 2``             no       yes             low variance
k3         ``exp(r) - 1 - r``       yes      yes             TRL GRPO's and DeepSeek's choice
low_var_kl k3, r clamped to ±20,    no*      yes             verl's; the clamp before exp keeps value and
           value to [-10, 10]                                gradient finite (float32 exp overflows at 88.7)
abs        ``|r|``                  no       yes             robust penalty, biased upward
========== ======================== ======== =============== ===========================================

(* unbiased until a clamp bites.) Every function takes ``(B, T)`` tensors and returns ``(B, T)``; the caller
masks padding.

**As a loss, their gradients** (tokens sampled from π, differentiated through ``logp``) depend on whether the
term is multiplied by the importance ratio ρ = π_θ/π_old (TRL's ``use_bias_correction_kl``, default true in
TRL 1.16, used by ``grpo_is``). Exact expectations on a 6-way categorical, |∇KL(π‖π_ref)| = 0.218
(``python tests/test_kl_gradients.py``, which also checks a seeded 400k-sample estimate against them):

========== ================================== ======== =========================================
estimator  E[∇] without ρ                      error    E[∇] with ρ (``use_bias_correction_kl``)
========== ================================== ======== =========================================
k1         0 (E[∇log π] = 0): biased          0.218    ∇KL(π‖π_ref): unbiased (error 0)
k2         ∇KL(π‖π_ref): unbiased             0        biased, error 0.054
k3         ∇KL(π_ref‖π), the forward KL       0.100    ∇KL(π‖π_ref): unbiased (error 0)
low_var_kl as k3 inside the clamps            0.100    as k3 inside the clamps: unbiased
========== ================================== ======== =========================================

PPO (``trainer: ppo``) puts the KL into the reward, detached, so only its value matters (k1 and k3 unbiased).
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
    """verl's k3: the log-ratio is clamped to [-20, 20] *before* the exponential, so exp cannot overflow (float32
    overflows at exp(88.7)) and value and gradient stay finite; the value is then clamped to [-10, 10]. Where a
    clamp is active the gradient is 0."""
    import torch

    r = torch.clamp(ref_logp - logp, min=-20.0, max=20.0)  # (B, T)
    return torch.clamp(torch.exp(r) - r - 1, min=-10.0, max=10.0)


def abs_kl(logp, ref_logp):
    return (logp - ref_logp).abs()


ESTIMATORS = {
    "k1": ("rewardkit.algorithms.kl:k1", "log-ratio; unbiased, high variance, can be negative"),
    "k2": ("rewardkit.algorithms.kl:k2", "half squared log-ratio; biased, low variance, non-negative"),
    "k3": ("rewardkit.algorithms.kl:k3", "exp(r)-r-1; unbiased and non-negative (TRL GRPO default)"),
    "low_var_kl": ("rewardkit.algorithms.kl:low_var_kl", "k3 with the log-ratio clamped before exp, value to [-10, 10] (verl)"),
    "abs": ("rewardkit.algorithms.kl:abs_kl", "absolute log-ratio; biased, robust"),
}


def builtin_estimator(name: str):
    """A built-in estimator by name, for a trainer built without ``kl_estimator_fn`` (a recipe's stage always
    passes the one its registry resolved, so plugin estimators reach the trainer that way)."""
    if name not in ESTIMATORS:
        raise ValueError(f"kl_estimator {name!r} is not built in ({', '.join(ESTIMATORS)}); pass the estimator "
                         f"function as kl_estimator_fn (a recipe resolves it from the plugin registry)")
    from rewardkit.registry import import_target  # noqa: PLC0415

    return import_target(ESTIMATORS[name][0])


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
