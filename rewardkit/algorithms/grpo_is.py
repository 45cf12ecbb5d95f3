"""Pure tensor functions behind the ``grpo_is`` trainer (no trainer state, unit-testable on their own).

Shapes: ``B`` sequences, ``T`` completion tokens. ``mask`` is the ``(B, T)`` 0/1 completion mask.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# TRL 1.16's loss types grpo_is runs (TRL computes the loss; ``aggregate_loss`` adds the KL term with the same
# aggregation): all of them are the PPO clipped surrogate, they differ only in how per-token terms are averaged.
SUPPORTED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def importance_log_weights(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor,
                           level: str) -> torch.Tensor:
    """log π_θ/π_old per token (``level="token"``, (B, T)) or its masked mean per sequence (GSPO, (B, 1))."""
    log_ratio = logps - old_logps
    if level == "token":
        return log_ratio
    if level == "sequence":
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {level!r}")


def clip_masks(coef: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float):
    """Where the clip is active (the gradient is zeroed): low side for A<0, high side for A>0."""
    low = (coef < 1 - eps_low) & (advantages < 0)
    high = (coef > 1 + eps_high) & (advantages > 0)
    return low, high


def aggregate_loss(per_token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str, *,
                   max_completion_length: int | None = None, num_items: torch.Tensor | float | None = None
                   ) -> torch.Tensor:
    """Reduce a per-token loss the way TRL's ``loss_type`` does, before gradient-accumulation scaling.

    ``grpo``: mean over tokens of each sequence, then over sequences (GRPO, Shao et al. 2024);
    ``bnpo``: mean over all tokens of the minibatch; ``dr_grpo``: sum / (B · max_completion_length)
    (Dr. GRPO, Liu et al. 2025); ``dapo``: sum / ``num_items`` (tokens of the whole accumulation window).
    """
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
    if loss_type == "dapo":
        return (per_token_loss * mask).sum() / num_items
    raise ValueError(f"loss_type {loss_type!r} is not one of {SUPPORTED_LOSS_TYPES}")


def kl_reward_to_go(advantages: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """``kl_placement: reward`` for GRPO: A_t = Â − β·Σ_{t'≥t} kl_{t'}, the group-normalised advantage ``(B,)``
    (or ``(B, T)``) minus the KL still to come from token t on (a reward-to-go of the per-token penalty, applied
    after group normalisation). kl, mask ``(B, T)``, kl detached (k1 at the rollout's tokens) -> ``(B, T)``."""
    kl = (kl * mask).detach()
    to_go = kl.flip(-1).cumsum(-1).flip(-1)  # (B, T): Σ_{t'≥t}
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    return (adv - beta * to_go) * mask


def ratio_range(coef: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(min, max) of the importance ratio over valid tokens (or sequences at sequence level)."""
    if coef.shape[-1] == 1 and mask.shape[-1] != 1:
        valid = coef.reshape(-1)
    else:
        valid = coef[mask.bool()]
    if valid.numel() == 0:
        return float("nan"), float("nan")
    return valid.min().item(), valid.max().item()


def epoch_permutation(n: int, seed: int, rollout: int, epoch: int) -> torch.Tensor:
    """The sample order of ``epoch`` (≥ 1) of rollout number ``rollout``: a fixed function of its arguments, so a
    resumed run reshuffles exactly as the uninterrupted one did, and the global RNG is left untouched."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(rollout)) * 1_009 + int(epoch))
    return torch.randperm(n, generator=g)


def permute_rows(batch: dict[str, Any], perm: torch.Tensor) -> dict[str, Any]:
    """Reorder every per-sample entry of a rollout dict (tensors with a batch dim, lists); keep scalars."""
    n = len(perm)
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n:
            out[key] = value[perm]
        elif isinstance(value, list) and len(value) == n:
            out[key] = [value[i] for i in perm.tolist()]
        else:
            out[key] = value
    return out


def batch_problems(*, per_device_train_batch_size: int, num_processes: int, steps_per_generation: int,
                   gradient_accumulation_steps: int, num_generations: int, rollout_epochs: int) -> list[str]:
    """What is wrong with this batch arithmetic, explained with the user's numbers (empty when fine)."""
    b, p, s, a, g = (per_device_train_batch_size, num_processes, steps_per_generation,
                     gradient_accumulation_steps, num_generations)
    rollout = b * p * s
    problems = []
    if rollout_epochs < 1:
        problems.append(f"rollout_epochs must be >= 1 (got {rollout_epochs})")
    if s % a != 0:
        problems.append(
            f"one rollout holds per_device_train_batch_size × processes × steps_per_generation = {b} × {p} × {s} = "
            f"{rollout} completions, split into {s} minibatches of {b} per process; an optimizer step accumulates "
            f"gradient_accumulation_steps = {a} minibatches, so {s} minibatches make {s / a:g} optimizer steps "
            f"per epoch. An epoch must end on an optimizer step (early stopping and reshuffling act on epochs): "
            f"set steps_per_generation to a multiple of {a} (e.g. {a * max(1, round(s / a))})")
    if rollout % g != 0:
        problems.append(f"a rollout of {b} × {p} × {s} = {rollout} completions is not a whole number of groups "
                        f"of num_generations = {g}")
    return problems


def rollout_epochs_used(windows_done: int, windows_per_epoch: int) -> float:
    """Epochs a rollout was actually used for, counting a partial last epoch as a fraction."""
    return windows_done / windows_per_epoch


# ---------------------------------------------------------------------------------------------- reuse levers
def sequence_log_weights(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log of each sequence's importance weight π_θ(y|x)/π_old(y|x) = Σ_t (log π_θ − log π_old) over its
    completion tokens. logps, old_logps, mask ``(B, T)`` -> ``(B,)``."""
    return ((logps - old_logps) * mask).sum(-1)


def ess_fraction(log_w: torch.Tensor, reduce_sum=None, reduce_max=None) -> torch.Tensor:
    """Normalised effective sample size of importance weights w = exp(log_w) (Kong 1992):
    ESS / n = (Σ w)² / (n · Σ w²) ∈ [1/n, 1]; 1 when every weight is equal. Computed from the shifted weights
    exp(log_w − max) (the ratio does not change), so a long completion's weight cannot overflow. With several
    processes, ``reduce_max`` / ``reduce_sum`` (all-reduce functions) make it the ESS of all their weights.
    log_w ``(n,)`` -> scalar."""
    log_w = log_w.detach().double().reshape(-1)
    top = log_w.max() if log_w.numel() else torch.tensor(0.0, dtype=torch.float64)
    top = reduce_max(top) if reduce_max else top
    w = torch.exp(log_w - top)
    stats = torch.stack([w.sum(), (w * w).sum(), torch.tensor(float(w.numel()), dtype=torch.float64)])
    s, s2, n = (reduce_sum(stats) if reduce_sum else stats).tolist()
    return torch.tensor(s * s / (n * s2) if n and s2 > 0 else 1.0)


def truncated_behaviour_weights(prox_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor,
                                level: str, cap: float) -> torch.Tensor:
    """The replay correction of a sample generated by an older policy π_behav and trained against the proximal
    policy π_prox (the policy when the current rollout began; decoupled PPO, Hilton et al. 2021):
    w = min(π_prox / π_behav, cap), truncated importance sampling (IMPALA's ρ̄, Espeholt et al. 2018).
    ``level="token"``: one weight per token, w_t = min(exp(log π_prox − log π_behav)_t, cap); ``"sequence"``: one
    per completion, w = min(exp(Σ_t (log π_prox − log π_behav)_t), cap), repeated over its tokens. Detached;
    0 on padding. prox_logps, behaviour_logps, mask ``(B, T)`` -> ``(B, T)``."""
    log_ratio = (prox_logps - behaviour_logps).detach() * mask
    if level == "token":
        w = torch.exp(log_ratio.clamp(max=math.log(cap)))
    elif level == "sequence":
        w = torch.exp(log_ratio.sum(-1, keepdim=True).clamp(max=math.log(cap))).expand_as(log_ratio)
    else:
        raise ValueError(f"replay_is_level must be 'token' or 'sequence', got {level!r}")
    return w * mask


def _pad_right(t: torch.Tensor, length: int, value) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)


def _pad_left(t: torch.Tensor, length: int, value) -> torch.Tensor:
    return torch.nn.functional.pad(t, (length - t.shape[1], 0), value=value)


# per-row (B, T) keys of a rollout: which side they are padded on, and with what, when rollouts are concatenated
ROW_KEYS = {"prompt_ids": "left", "prompt_mask": "left", "completion_ids": "right", "completion_mask": "right",
            "old_per_token_logps": "right", "ref_per_token_logps": "right", "tool_mask": "right",
            "replay_weight": "right", "sampling_per_token_logps": "right", "sampler_weight": "right"}


def concat_rollouts(parts: list[dict], pad_token_id: int) -> dict:
    """Rows of several rollouts as one: prompts left-padded and completions right-padded to the longest
    (masks and log-probs padded with 0, ids with ``pad_token_id``), ``advantages`` concatenated. Every part must
    have the same keys among ``ROW_KEYS`` + ``advantages`` + ``num_items_in_batch`` (anything else, e.g. images,
    is refused). ``num_items_in_batch`` becomes the parts' sum divided by the number of parts: TRL's ``dapo``
    normaliser is the tokens of one rollout's worth of minibatches, and a combined rollout has len(parts) times as
    many minibatches."""
    keys = set(parts[0])
    for p in parts[1:]:
        if set(p) != keys:
            raise ValueError(f"rollouts with different fields cannot be replayed together: {sorted(keys ^ set(p))}")
    unknown = keys - set(ROW_KEYS) - {"advantages", "num_items_in_batch"}
    if unknown:
        raise ValueError(f"replay cannot combine rollouts carrying {sorted(unknown)} (text-only rollouts)")
    out = {}
    for key in keys & set(ROW_KEYS):
        length = max(p[key].shape[1] for p in parts)
        pad = _pad_left if ROW_KEYS[key] == "left" else _pad_right
        value = pad_token_id if key.endswith("_ids") else 0
        out[key] = torch.cat([pad(p[key], length, value) for p in parts])
    out["advantages"] = torch.cat([p["advantages"] for p in parts])
    if "num_items_in_batch" in keys:
        out["num_items_in_batch"] = sum(p["num_items_in_batch"] for p in parts) / len(parts)
    return out
