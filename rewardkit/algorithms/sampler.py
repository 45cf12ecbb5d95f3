"""The sampler/trainer correction: vLLM (the *sampler*, π_samp) draws a rollout, the trainer's own forward pass of
the same weights (π_behav) scores it; the two differ by kernels, precision and, if any is set, by the sampling
filters. A token's weight w_samp = π_behav(y_t) / π_samp(y_t) corrects for the samples having come from π_samp,
in TRL's four modes (``vllm_importance_sampling_mode``):

- ``token_truncate``: w_t = clamp(r_t, c_min, c_max), r_t = exp(log π_behav − log π_samp) per token
- ``token_mask``: w_t = r_t where c_min ≤ r_t ≤ c_max, else 0
- ``sequence_truncate`` / ``sequence_mask``: the same on r_i = exp Σ_t (log π_behav − log π_samp) of the sequence,
  the one value given to every token of it

(c_min absent: no lower bound; c_max absent: no upper bound.) :func:`combined_weight` multiplies it with grpo_is's
replay weight, each factor truncated on its own (docs/grpo_is.md, "How the weights combine"; docs/ppo.md).
The statistics are of the **raw** ratios, before truncation or masking: what the correction had to act on.
"""

from __future__ import annotations

import math

import torch

MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
BIASING_SETTINGS = ("top_p", "top_k", "min_p")


def sampler_log_ratio(trainer_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log π_behav − log π_samp per real token, 0 on padding and where vLLM gave no log-prob (NaN). (B, T)"""
    return torch.nan_to_num((trainer_logps - sampler_logps) * mask, nan=0.0)


def sampler_weights(trainer_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor, mode: str,
                    clip_min: float | None, clip_max: float | None) -> tuple[torch.Tensor, dict]:
    """(w (B, T) detached, local statistics) for TRL's ``mode`` with its bounds (module docstring). A sequence
    mode's weight is repeated on every token of the sequence. The statistics are sums over this process's rows, to
    be added over processes and finished by :func:`summarise`: ``n`` ratios (real tokens, or sequences with a real
    token), their ``sum``, ``min`` and ``max``, ``outside`` (ratios outside [c_min, c_max], i.e. truncated or
    masked), ``kl_sum`` over ``tokens``: Σ k3 of KL(π_samp‖π_behav) per token (r − 1 − log r, unbiased on tokens
    π_samp drew)."""
    if mode not in MODES:
        raise ValueError(f"vllm_importance_sampling_mode must be one of {', '.join(MODES)}, got {mode!r}")
    mask = mask.to(trainer_logps.dtype)
    with torch.no_grad():
        log_r = sampler_log_ratio(trainer_logps.detach(), sampler_logps, mask)  # (B, T)
        if mode.startswith("sequence"):
            log_r_seq = log_r.sum(-1, keepdim=True)  # (B, 1)
            ratio, valid = torch.exp(log_r_seq), mask.sum(-1, keepdim=True) > 0  # (B, 1) each
        else:
            ratio, valid = torch.exp(log_r), mask > 0  # (B, T) each
        low = -math.inf if clip_min is None else clip_min
        high = math.inf if clip_max is None else clip_max
        outside = (ratio < low) | (ratio > high)
        if mode.endswith("truncate"):
            weight = ratio.clamp(min=clip_min, max=clip_max)
        else:
            weight = ratio.masked_fill(outside, 0.0)
        raw = ratio[valid]
        k3 = (torch.exp(log_r) - 1.0 - log_r) * mask  # (B, T)
        stats = {"n": float(raw.numel()), "sum": raw.sum().item(),
                 "min": raw.min().item() if raw.numel() else math.inf,
                 "max": raw.max().item() if raw.numel() else -math.inf,
                 "outside": (outside & valid).sum().item(), "kl_sum": k3.sum().item(), "tokens": mask.sum().item()}
        return weight.expand_as(mask) * mask, stats


def summarise(stats: dict) -> dict:
    """The logged figures from statistics summed over processes (``min`` the minimum, ``max`` the maximum):
    ``ratio_mean``/``ratio_min``/``ratio_max`` of the raw ratios, ``capped`` (share truncated or masked),
    ``kl`` (KL(π_samp‖π_behav), nats per token)."""
    n, tokens = stats["n"], stats["tokens"]
    return {"ratio_mean": stats["sum"] / n if n else float("nan"),
            "ratio_min": stats["min"] if n else float("nan"), "ratio_max": stats["max"] if n else float("nan"),
            "capped": stats["outside"] / n if n else float("nan"),
            "kl": stats["kl_sum"] / tokens if tokens else float("nan")}


def combined_weight(sampler_weight: torch.Tensor | None, replay_weight: torch.Tensor | None) -> torch.Tensor | None:
    """The per-token factor on the clipped surrogate: w_samp · w_replay (each already truncated on its own; a
    missing factor is 1; None when both are). (B, T)"""
    if sampler_weight is None:
        return replay_weight
    if replay_weight is None:
        return sampler_weight
    return sampler_weight * replay_weight


def biasing_sampling_problems(use_vllm: bool, correction: bool, top_p: float, top_k: int | None,
                              min_p: float | None, generation_kwargs: dict | None) -> list[str]:
    """Sampling filters that make the sampler/trainer ratio biased, refused with vLLM generation: vLLM reports the
    log-probs of the filtered, renormalised distribution it sampled from, the trainer scores the full softmax, so
    every ratio π_behav/π_samp is below 1 by the mass the filter removed, and the correction (and, without it, the
    old-policy ratio) would be computed against a different distribution. vLLM's ``min_tokens`` (in
    ``generation_kwargs``) does the same to the end-of-sequence token (README, "Generation with vLLM")."""
    if not use_vllm:
        return []
    kw = generation_kwargs or {}
    values = {"top_p": kw.get("top_p", top_p), "top_k": kw.get("top_k", top_k), "min_p": kw.get("min_p", min_p)}
    biased = {"top_p": values["top_p"] is not None and values["top_p"] < 1.0,
              "top_k": values["top_k"] is not None and values["top_k"] > 0,
              "min_p": values["min_p"] is not None and values["min_p"] > 0.0}
    what = "the sampler/trainer correction" if correction else "the importance ratios"
    found = [f"{name}={values[name]!r} with use_vllm: vLLM's log-probs are those of the truncated distribution "
             f"it samples from, the trainer's of the full one, so {what} would be biased by the mass the filter "
             f"removes; sample from the full distribution (top_p: 1.0, top_k: 0, min_p: null) or use_vllm: false"
             for name in BIASING_SETTINGS if biased[name]]
    if (kw.get("min_tokens") or 0) > 0:
        found.append(f"generation_kwargs.min_tokens={kw['min_tokens']!r} with use_vllm: vLLM masks the end-of-sequence "
                     f"token in the log-probs it returns until min_tokens, the trainer does not, so {what} would be "
                     f"biased by the end-of-sequence probability; drop min_tokens or use_vllm: false")
    return found
