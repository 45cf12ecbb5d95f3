"""The sampler/trainer correction as grpo_is and PPO apply it with ``use_vllm`` (the arithmetic:
:mod:`rewardkit.algorithms.sampler`; the formulas: docs/grpo_is.md, "How the weights combine", and docs/ppo.md).

TRL computes its correction inside its generation, truncated, and logs only the truncated ratios; both trainers
instead let TRL generate with its correction off (:func:`deferred`: TRL then also skips the extra old-log-prob
pass it forces for the correction) and compute it themselves from the trainer's log-probs at generation, so the
raw ratios are logged before truncation and the weight can be combined with their own ratios.

Logged per rollout (every process's tokens), ``sampler/`` + ``ratio_mean``, ``ratio_min``, ``ratio_max`` (raw
π_behav/π_samp at the mode's level, token or sequence), ``capped`` (share of those ratios truncated or masked by
``vllm_importance_sampling_clip_min``/``_max``) and ``kl`` (KL(π_samp‖π_behav), k3, nats per token).
"""

from __future__ import annotations

import contextlib

import torch

from rewardkit.algorithms import sampler
from rewardkit.trainers.base import over_processes


def active(trainer) -> bool:
    """Whether this trainer corrects for its sampler: vLLM generation with TRL's correction switched on."""
    return bool(trainer.use_vllm and trainer.args.vllm_importance_sampling_correction)


@contextlib.contextmanager
def deferred(trainer):
    """TRL's generation with its own correction switched off for the call (the trainer applies it afterwards)."""
    flag = trainer.vllm_importance_sampling_correction
    trainer.vllm_importance_sampling_correction = False
    try:
        yield
    finally:
        trainer.vllm_importance_sampling_correction = flag


def weights(trainer, batch: dict, trainer_logps: torch.Tensor, mask: torch.Tensor, mode: str = "train"):
    """w_samp (B, T) for ``batch`` (its ``sampling_per_token_logps``: vLLM's) against ``trainer_logps`` (the
    trainer's log-probs at generation), in the config's mode and bounds; logs the raw ratios' statistics under
    ``sampler/*``. None when the trainer does not correct or vLLM returned no log-probs."""
    if not active(trainer) or batch.get("sampling_per_token_logps") is None:
        return None
    a = trainer.args
    w, s = sampler.sampler_weights(trainer_logps, batch["sampling_per_token_logps"], mask,
                                   a.vllm_importance_sampling_mode, a.vllm_importance_sampling_clip_min,
                                   a.vllm_importance_sampling_clip_max)
    acc = trainer.accelerator
    n, total, outside, kl_sum, tokens = over_processes(acc, [s["n"], s["sum"], s["outside"], s["kl_sum"],
                                                             s["tokens"]])
    (low,) = over_processes(acc, [s["min"]], "min")
    (high,) = over_processes(acc, [s["max"]], "max")
    summary = sampler.summarise({"n": n, "sum": total, "outside": outside, "kl_sum": kl_sum, "tokens": tokens,
                                 "min": low, "max": high})
    for key, value in summary.items():
        trainer._metrics[mode][f"sampler/{key}"].append(value)
    return w
