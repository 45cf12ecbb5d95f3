"""Per-token KL estimators, KL(policy || ref), from log-probs of tokens sampled from the policy.

KL(π‖π_ref), the expectation under the policy being trained, is the *reverse* KL that RLHF penalises (Ziegler
et al. 2019; mode-seeking); KL(π_ref‖π) is the forward one. With ``r = ref_logp - logp`` (log of ref/policy at
the sampled token), Schulman's estimators ("Approximating KL Divergence", 2020):

========== ======================== ======== =============== ===========================================
name       value                    unbiased non-negative    use
========== ======================== ======== =============== ===========================================
k1         ``-r``                   yes      no              the reward penalty (Ziegler et al. 2019)
k2         ``r**2 / 2``             no       yes             low variance; ∇ of the reverse KL as a loss
k3         ``exp(r) - 1 - r``       yes      yes             TRL GRPO's and DeepSeek's choice
low_var_kl k3, r clamped to ±20,    no*      yes             verl's; the clamp before exp keeps value and
           value to [-10, 10]                                gradient finite (float32 exp overflows at 88.7)
k3_plus    value of k3, gradient    yes      yes             verl's ``k3+``: k3's value, k2's gradient (a
           of k2                                             loss term without the ratio)
abs        ``|r|``                  no       yes             robust penalty, biased upward
========== ======================== ======== =============== ===========================================

(* unbiased until a clamp bites.) Every function takes ``(B, T)`` tensors and returns ``(B, T)``; the caller
masks padding.

**Where the estimate goes decides its gradient** (``kl_placement`` of ``trainer: ppo`` and ``grpo_is``):

- ``reward``: the estimate, detached, is subtracted from the per-token reward (PPO) or from the advantage as a
  reward-to-go (grpo_is: A_t = Â_group − β·Σ_{t'≥t} k_{t'}). Its gradient is then E_π[k·∇log π] =
  ∇E_π[k] − E_π[∇k], and E_π[∇k] vanishes only for k1 (E[∇log π] = 0). For k3 the penalty's expected gradient is
  ∇KL(π‖π_ref) − ∇KL(π_ref‖π), second order near the reference and able to point away from it (Tang & Munos
  2025, arXiv:2506.09477). **Only k1 is accepted there.** With Monte-Carlo returns (PPO's γ = λ = 1, or
  grpo_is's reward-to-go) it is the exact gradient of the sequence KL; GAE with λ < 1 and a learned critic
  trades that for variance, as it does for the score.
- ``loss``: β·k·ρ is added to the loss, ρ = π_θ/π_old per token (TRL's ``use_bias_correction_kl``, on by
  default), and differentiated. E[∇(k·ρ)] = E[k∇log π + ∇k] at θ = old: ∇KL(π‖π_ref) for k1, k3 and
  low_var_kl; biased for k2 and k3_plus. Without ρ (``use_bias_correction_kl: false``) E[∇k] is ∇KL(π‖π_ref) for k2
  and k3_plus and ∇KL(π_ref‖π), the forward KL, for k3 and low_var_kl. Even the unbiased choices give only part of
  the *sequence* KL's gradient: Σ_t ρ_t·k_t differentiates each token's KL with its state held fixed and leaves
  out how earlier tokens change later tokens' KL.

Measured (``tests/test_kl_placement.py``, exact expectations, no sampling). A 6-armed bandit, R = [1, 0, 0, 0,
0, 0.5], uniform reference, gradient ascent on E[R] − β·(KL term) until the gradient vanishes; KL(π‖π_ref)
reached, against the regularised optimum's (π* ∝ π_ref·exp(R/β)):

- β = 0.5 (optimum 0.385). Reward, detached: k1 0.385; k2 1.79; low_var_kl 1.79; k3 and k3_plus run to the
  unregularised argmax (diverge). Loss with ρ: k1, k3, low_var_kl 0.385; k2 0.326; k3_plus diverges. Loss
  without ρ: k2, k3_plus 0.385; k3, low_var_kl 0.448 (the forward KL's optimum); k1 1.79 (no pull at all).
- β = 2 (optimum 0.0207). Reward: k1 0.0207; k2 1.11; low_var_kl 1.12. Loss with ρ: k1, k3, low_var_kl 0.0207;
  k2 0.0175; k3_plus 0.0179. Loss without ρ: k2, k3_plus 0.0207; k3, low_var_kl 0.0256.

A 2-token tabular policy (3 tokens, seeded logits; ``test_sequence_kl_gradient``): |∇KL_seq(π‖π_ref)| = 0.656;
the bias of the expected gradient of Σ_t k_t·ρ_t as a loss is 0.079 for k1, k3 and low_var_kl alike (the
cross-token part it leaves out), of Σ_t k3_t without ρ 0.448; k1 in the reward with reward-to-go is exact
(bias 2e-16). (The review that found this measured 0.814 and 0.649 on its own policy.)

A single categorical, |∇KL(π‖π_ref)| = 0.218 (``tests/test_kl_gradients.py``, which also checks a seeded
400k-sample estimate): without ρ k1's expected gradient is 0, k3's that of the forward KL (error 0.100); with ρ
k2's error is 0.054, k3_plus's 0.100.

**Importance sampling at sequence level** (GSPO, ``importance_sampling_level: sequence``): the ρ that makes k·ρ
unbiased is the *token* ratio, so the KL term always uses the token ratio, whatever the level of the policy
term's ratio (TRL multiplies by its sequence ratio there, for which the correction does not hold).
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


def k3_plus(logp, ref_logp):
    """verl's ``k3+``: the value of k3 with the gradient of k2 (a straight-through sum), so as a loss term without
    the importance ratio its expected gradient is ∇KL(π‖π_ref) while the logged value stays k3's."""
    value, grad = k3(logp, ref_logp), k2(logp, ref_logp)  # (B, T)
    return value.detach() + grad - grad.detach()


def abs_kl(logp, ref_logp):
    return (logp - ref_logp).abs()


# The built-in estimators, name -> ("module:function", one line): the one list of their names. The builtin plugin
# registers these; the config help, the hook docs and the tests derive theirs from it.
ESTIMATORS = {
    "k1": ("rewardkit.algorithms.kl:k1", "log-ratio; unbiased, high variance, can be negative"),
    "k2": ("rewardkit.algorithms.kl:k2", "half squared log-ratio; biased, low variance, non-negative"),
    "k3": ("rewardkit.algorithms.kl:k3", "exp(r)-r-1; unbiased and non-negative (TRL GRPO default)"),
    "low_var_kl": ("rewardkit.algorithms.kl:low_var_kl", "k3 with the log-ratio clamped before exp, value to [-10, 10] (verl)"),
    "k3_plus": ("rewardkit.algorithms.kl:k3_plus", "value of k3, gradient of k2: unbiased as a loss without the ratio (verl)"),
    "abs": ("rewardkit.algorithms.kl:abs_kl", "absolute log-ratio; biased, robust"),
}
# The one estimator whose detached value, put into the reward, penalises KL(π‖π_ref) (module docstring).
REWARD_ESTIMATORS = ("k1",)
# As a loss term, those whose expected gradient is ∇KL(π‖π_ref): with TRL's ratio correction ρ (True) and without
# (False); the others are biased (module docstring; tests/test_kl_gradients.py measures every pair).
LOSS_UNBIASED = {True: ("k1", "k3", "low_var_kl"), False: ("k2", "k3_plus")}
KL_PLACEMENTS = ("reward", "loss")


def builtin_estimator(name: str):
    """A built-in estimator by name, for a trainer built without ``kl_estimator_fn`` (a recipe's stage always
    passes the one its registry resolved, so plugin estimators reach the trainer that way)."""
    if name not in ESTIMATORS:
        raise ValueError(f"kl_estimator {name!r} is not built in ({', '.join(ESTIMATORS)}); pass the estimator "
                         f"function as kl_estimator_fn (a recipe resolves it from the plugin registry)")
    return globals()[ESTIMATORS[name][0].rpartition(":")[2]]


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
