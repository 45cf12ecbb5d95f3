"""End-to-end: ``grpo_is`` and ``ppo`` with ``use_vllm: true`` (TRL's colocate mode, rewardkit's weight sync) from
their CPU recipes, offline: the sampler/trainer correction is applied and its raw ratios are logged. Runs in
.venv-vllm (README's test command); skipped where vLLM is not installed."""

import json
import os

import pytest

from rewardkit import vllm_sync

if not vllm_sync.available():  # installed but broken (a mismatched torchvision, ...) fails here instead of skipping
    pytest.skip("vLLM is not installed here (it is in .venv-vllm)", allow_module_level=True)
import vllm  # noqa: E402, F401

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLER_METRICS = ("sampler/ratio_mean", "sampler/ratio_min", "sampler/ratio_max", "sampler/capped", "sampler/kl")


def _run(recipe, tmp_path, *overrides):
    from rewardkit.pipeline import run
    from rewardkit.recipe import load_recipe
    from rewardkit.registry import get_registry

    recipe = load_recipe(os.path.join(ROOT, recipe), [f"output_dir={tmp_path}", "~eval", *overrides])
    return run(recipe, get_registry())


def _check_rollouts(log_path):
    """Every rollout logged all the sampler/* figures; at least one rollout came from vLLM after an optimizer step
    that moved the policy (so the sync carried new weights); in float32 the raw ratios π_trainer/π_vLLM stay within
    1e-3 of 1, none is capped, and the sampler/trainer KL is at rounding level. Returns the rollout records."""
    with open(log_path) as f:
        records = [json.loads(line) for line in f]
    rollouts = [r for r in records if "sampler/ratio_mean" in r]
    assert len(rollouts) >= 3, rollouts
    assert all(all(k in r for k in SAMPLER_METRICS) for r in rollouts)
    first_update = min(r["step"] for r in records if r.get("grad_norm", 0) > 0)
    assert any(r["step"] > first_update for r in rollouts), (first_update, rollouts)
    for r in rollouts:
        assert abs(r["sampler/ratio_min"] - 1) <= 1e-3 and abs(r["sampler/ratio_max"] - 1) <= 1e-3, r
        assert abs(r["sampler/ratio_mean"] - 1) <= 1e-4 and r["sampler/capped"] == 0.0, r
        assert 0.0 <= r["sampler/kl"] <= 1e-6, r
    return rollouts


def test_grpo_is_with_replay_corrects_vllm_samples(tmp_path):
    """The recipe as shipped: token_truncate, rollouts reused for 2 epochs and the previous one replayed."""
    import psutil

    _run("recipes/cpu/arithmetic_grpo_is_vllm.yaml", tmp_path)
    records = [json.loads(line) for line in open(tmp_path / "grpo_is" / "log.jsonl")]
    _check_rollouts(tmp_path / "grpo_is" / "log.jsonl")
    assert any(r.get("rollout/replayed") == 1.0 for r in records)  # the replay weight combined with w_samp
    assert psutil.Process().children(recursive=True) == []


def test_ppo_corrects_vllm_samples_at_sequence_level(tmp_path):
    """PPO's recipe in TRL's sequence_mask mode: one ratio per completion, the policy (not only the critic) moved,
    and the critic stays out of vLLM's weights (a sync with it would fail on names vLLM does not know)."""
    import torch
    from safetensors.torch import load_file

    from rewardkit import models
    from rewardkit.registry import get_registry

    _run("recipes/cpu/arithmetic_ppo_vllm.yaml", tmp_path, "trainer.vllm_importance_sampling_mode=sequence_mask")
    _check_rollouts(tmp_path / "ppo" / "log.jsonl")
    trained = load_file(str(tmp_path / "ppo" / "model" / "model.safetensors"))
    base = load_file(os.path.join(models.resolve("tiny-llama", get_registry()), "model.safetensors"))
    assert any(not torch.equal(trained[k], base[k]) for k in base)
