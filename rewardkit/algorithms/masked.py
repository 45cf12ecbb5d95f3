"""Reductions over masked tokens, the one place they are defined (PPO, GRPO-IS and the trainers use these).

Shapes: ``B`` sequences, ``T`` completion tokens, right-padded; ``mask`` is ``(B, T)`` with 1 on real tokens.
``all_reduce`` (a function summing a tensor over processes, e.g. ``accelerator.reduce(t, "sum")``) makes a
statistic that of every process's tokens together; ``None`` keeps it local.
"""

from __future__ import annotations

import torch

from rewardkit.algorithms.kl import k3


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (all of them, or along ``dim``)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of ``x`` (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  all_reduce=None) -> torch.Tensor:
    """(x - mean) / std over the masked entries; padding comes out as 0. ``(B, T) -> (B, T)``.

    ``all_reduce`` (a function summing a tensor over processes, e.g. ``accelerator.reduce(t, "sum")``) makes the
    mean and variance those of every process's entries together, as whitening a rollout split over processes
    must; ``None`` whitens this process's entries only.
    """
    mask = mask.to(x.dtype)
    total = summed(torch.stack([(x * mask).sum(), mask.sum()]), all_reduce)  # [Σx, n]
    n = total[1]
    mean = total[0] / n.clamp(min=1.0)
    sq = summed(((x - mean) ** 2 * mask).sum(), all_reduce)
    var = sq / n.clamp(min=1.0)
    if n > 1:
        var = var * n / (n - 1)  # Bessel, as masked_var
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def summed(t: torch.Tensor, all_reduce) -> torch.Tensor:
    """``t`` summed over processes (``all_reduce``), or ``t`` itself."""
    return t if all_reduce is None else all_reduce(t)


def global_masked_mean(x: torch.Tensor, mask: torch.Tensor, all_reduce=None) -> torch.Tensor:
    """Mean of the masked entries of ``x`` over all processes (``all_reduce`` sums over them; ``None``: local).
    Works for any shape; a process may hold no entries (or a different number from the others)."""
    mask = mask.to(x.dtype)
    total = summed(torch.stack([(x * mask).sum(), mask.sum()]), all_reduce)
    return total[0] / total[1].clamp(min=1.0)


def kl_old_new(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, all_reduce=None) -> torch.Tensor:
    """KL(old ‖ new) estimated on tokens the old policy sampled: Schulman's k3 of log r = logp − old_logp,
    mean(exp(log r) − 1 − log r), unbiased under old-policy samples and never negative; the statistic of PPO's
    ``clipfrac``-style logging and of target-KL early stopping (PPO and grpo_is). 0-d, no gradient."""
    return global_masked_mean(k3(old_logp, logp.detach()), mask, all_reduce)
