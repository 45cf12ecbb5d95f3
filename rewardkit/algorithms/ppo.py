"""PPO's arithmetic as small pure functions on tensors (no model, no trainer), each unit-tested by hand.

Shapes: ``B`` episodes (one completion each), ``T`` completion tokens, right-padded. ``mask`` is ``(B, T)``
with 1 on real completion tokens and 0 on padding; every reduction here ignores padding. Token ``t``'s
log-prob, value and advantage all belong to the state *before* token ``t`` was emitted.

References: Schulman et al. 2017 "Proximal Policy Optimization Algorithms" (clipped objective, adaptive KL);
Schulman et al. 2016 "High-Dimensional Continuous Control Using GAE" (GAE(γ, λ)); Ziegler et al. 2019
"Fine-Tuning Language Models from Human Preferences" (score on the last token, per-token KL penalty).
"""

from __future__ import annotations

import torch

from rewardkit.algorithms.grpo_is import SUPPORTED_LOSS_TYPES
from rewardkit.algorithms.kl import k3
from rewardkit.algorithms.masked import global_masked_mean, kl_old_new, masked_mean, summed

# How a per-token loss may be averaged (TRL's loss_type names; ``rewardkit.algorithms.grpo_is.aggregate_loss``).
LOSS_AGGREGATIONS = SUPPORTED_LOSS_TYPES


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row of a right-padded ``(B, T)`` mask -> ``(B,)`` (0 if empty)."""
    t = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), t, torch.zeros_like(t)).max(dim=1).values


def ends_with(ids: torch.Tensor, mask: torch.Tensor, token_ids) -> torch.Tensor:
    """Whether each row's last real token is one of ``token_ids`` (an EOS): ids, mask ``(B, T)`` -> ``(B,)`` bool;
    an empty row does not end with one."""
    last = ids.gather(1, last_token_index(mask)[:, None]).squeeze(1)  # (B,)
    eos = torch.as_tensor(list(token_ids), device=ids.device)
    return torch.isin(last, eos) & (mask.sum(1) > 0)


def token_rewards(score: torch.Tensor, kl: torch.Tensor, beta: float, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards: ``-β·kl_t`` on every real token, plus the sequence ``score`` on the last one.

    score ``(B,)``, kl ``(B, T)`` (any estimator, already per token), mask ``(B, T)`` -> ``(B, T)``, 0 on padding.
    """
    mask = mask.to(kl.dtype)
    rewards = -beta * kl * mask  # (B, T)
    last = last_token_index(mask)  # (B,)
    has_tokens = mask.sum(1) > 0  # an empty completion gets no score (nothing to credit it to)
    at_last = torch.nn.functional.one_hot(last, mask.size(1)).to(kl.dtype)  # (B, T)
    score = torch.where(has_tokens, score.to(kl.dtype), torch.zeros((), dtype=kl.dtype, device=kl.device))
    return rewards + at_last * score[:, None]


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over episodes that end at their last real token.

    rewards, values, mask: ``(B, T)`` -> (advantages, returns), both ``(B, T)`` and 0 where mask is 0.
    δ_t = r_t + γ·V_next − V_t,  A_t = δ_t + γλ·A_next,  returns = A + V (the value target), where "next" is the
    next position with mask 1: positions with mask 0 *inside* a completion (tool outputs, which the policy did
    not choose) are skipped, not terminal, so credit flows through them to the tokens before them. After the last
    real token V_next = 0 (the episode is over).
    """
    mask = mask.to(values.dtype)
    values = values * mask
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    next_adv = torch.zeros_like(values[:, 0])  # (B,)
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.size(1))):
        real = mask[:, t].bool()  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(real, adv, torch.zeros_like(adv))
        next_value = torch.where(real, values[:, t], next_value)  # a masked position passes its successor on
        next_adv = torch.where(real, adv, next_adv)
    return advantages, (advantages + values) * mask


def sequence_level_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO-token's ratio (Zheng et al. 2025, eq. 13): sg[s_i]·π_θ(y_t)/sg[π_θ(y_t)], s_i = exp(mean over the
    sequence's real tokens of log π_θ/π_old). Its value is s_i on every token, its gradient s_i·∇log π_θ(y_t), so
    per-token advantages still apply. (B, T) -> (B, T)."""
    seq = ((logp - old_logp) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (B,)
    return torch.exp(seq.detach()[:, None] + logp - logp.detach())


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float = 0.2, clip_high: float | None = None, dual_clip: float | None = None,
                level: str = "token", reduce=masked_mean, weight: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict]:
    """PPO-clip: max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε_high)) per real token, averaged by ``reduce(per_token, mask)``
    (default: the mean over real tokens; ``rewardkit.algorithms.grpo_is.aggregate_loss`` gives the others).
    ρ = exp(logp − old_logp) at ``level="token"``, :func:`sequence_level_ratio` at ``level="sequence"`` (GSPO).

    ``dual_clip`` = c > 1 (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL", eq. 5) also
    bounds the loss of a token with A < 0 by −c·A, so a huge ratio on a bad action cannot dominate the update.
    ``weight`` (B, T), detached, multiplies each token's loss (the sampler/trainer correction w_samp with vLLM
    generation, :mod:`rewardkit.algorithms.sampler`; None: 1).
    All inputs ``(B, T)``. Returns (scalar loss, stats) with ``clipfrac`` (share of tokens where the clipped
    term won), ``dual_clipfrac``, and ``approx_kl`` (k3 estimate of KL(old‖new) from tokens sampled by the old
    policy: ρ − 1 − log ρ, Schulman 2020), all detached floats.
    """
    if level == "sequence":
        ratio = sequence_level_ratio(logp, old_logp, mask)
    elif level == "token":
        ratio = torch.exp(logp - old_logp)
    else:
        raise ValueError(f"importance_sampling_level must be token or sequence, got {level!r}")
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + (clip if clip_high is None else clip_high))
    per_token = torch.maximum(unclipped, clipped)  # (B, T)
    dual = torch.zeros_like(per_token, dtype=torch.bool)
    if dual_clip is not None:
        bound = -dual_clip * advantages  # (B, T)
        dual = (advantages < 0) & (per_token > bound)
        per_token = torch.where(advantages < 0, torch.minimum(per_token, bound), per_token)
    loss = reduce(per_token if weight is None else per_token * weight, mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask).item(),
                 "dual_clipfrac": masked_mean(dual.float(), mask).item(),
                 "approx_kl": kl_old_new(logp, old_logp, mask).item(),
                 "ratio_mean": masked_mean(ratio, mask).item()}
    return loss, stats


def penalty_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        coef: float, reduce=masked_mean, weight: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, dict]:
    """PPO's adaptive-KL-penalty objective (Schulman et al. 2017 §4), as a loss: mean over real tokens of
    −A·ρ + coef·KL(old‖new), the KL estimated by k3 = ρ − 1 − log ρ on the old policy's tokens (unbiased in value,
    and its gradient (ρ − 1)∇log π has expectation ∇KL(old‖new)). Inputs ``(B, T)``; ``coef`` is the β the
    caller adapts toward d_targ (``rewardkit.algorithms.kl.AdaptiveKLController``, mode halve_double). ``weight``
    (B, T) multiplies each token's term, as in :func:`policy_loss`."""
    ratio = torch.exp(logp - old_logp)
    kl = k3(old_logp, logp)  # (B, T)
    per_token = -advantages * ratio + coef * kl
    loss = reduce(per_token if weight is None else per_token * weight, mask)
    with torch.no_grad():
        stats = {"clipfrac": 0.0, "dual_clipfrac": 0.0, "approx_kl": masked_mean(kl, mask).item(),
                 "ratio_mean": masked_mean(ratio, mask).item()}
    return loss, stats


class RunningMoments:
    """Running mean and std of every score seen so far (Chan et al.'s parallel update), for reward normalisation
    (Engstrom et al. 2020 "Implementation Matters in Deep Policy Gradients", reward scaling; Ziegler et al. 2019
    normalise the reward model's scores). ``all_reduce`` sums over processes, so every process keeps the same
    statistics."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0.0, 0.0, 0.0

    def update(self, x: torch.Tensor, all_reduce=None) -> None:
        """Add the entries of the 1-D tensor ``x`` (this process's share of the batch)."""
        x = x.detach().double()
        s = summed(torch.stack([x.new_tensor(float(x.numel())), x.sum(), (x ** 2).sum()]), all_reduce)
        n, total, sq = (float(v) for v in s)
        if n == 0:
            return
        mean = total / n
        m2 = sq - n * mean ** 2
        delta = mean - self.mean
        new_count = self.count + n
        self.m2 += m2 + delta ** 2 * self.count * n / new_count
        self.mean += delta * n / new_count
        self.count = new_count

    @property
    def std(self) -> float:
        return (self.m2 / (self.count - 1)) ** 0.5 if self.count > 1 else 1.0

    def normalize(self, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        return (x - self.mean) / (self.std + eps)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float | None = 0.2) -> tuple[torch.Tensor, dict]:
    """Clipped value loss: ½·mean over real tokens of max((V − R)², (V_clip − R)²),
    V_clip = V_old + clip(V − V_old, −c, c). ``clip=None`` gives the plain squared error. Inputs ``(B, T)``."""
    unclipped = (values - returns) ** 2
    if clip is None:
        loss = 0.5 * masked_mean(unclipped, mask)
        return loss, {"clipfrac": 0.0}
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask).item()}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, all_reduce=None) -> float:
    """1 − Var[R − V] / Var[R] over real tokens (of all processes with ``all_reduce``): 1 is a perfect critic,
    0 no better than a constant."""
    def var(x):
        mean = global_masked_mean(x, mask, all_reduce)
        return global_masked_mean((x - mean) ** 2, mask, all_reduce)

    var_r = var(returns)
    if var_r.item() == 0:
        return float("nan")
    return (1.0 - var(returns - values) / var_r).item()
