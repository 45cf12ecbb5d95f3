"""End-to-end: ``grpo`` with ``use_vllm: true`` (TRL's colocate mode, rewardkit's weight sync) from its CPU recipe,
offline. Runs in .venv-vllm (README's test command); skipped where vLLM is not installed."""

import json
import os

import pytest

from rewardkit import vllm_sync

if not vllm_sync.available():  # installed but broken (a mismatched torchvision, ...) fails here instead of skipping
    pytest.skip("vLLM is not installed here (it is in .venv-vllm)", allow_module_level=True)
import vllm  # noqa: E402, F401

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(recipe, tmp_path, *overrides):
    from rewardkit.pipeline import run
    from rewardkit.recipe import load_recipe
    from rewardkit.registry import get_registry

    recipe = load_recipe(os.path.join(ROOT, recipe), [f"output_dir={tmp_path}", *overrides])
    return run(recipe, get_registry())


def _records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_grpo_trains_on_vllm_samples_that_the_synced_engine_scores_like_the_trainer(tmp_path):
    """Each step's rollout comes from vLLM after the weights of the previous optimizer step were synced: TRL logs
    the largest gap between vLLM's and the trainer's log-prob of a sampled token, which stays at float32 rounding;
    the policy moved (so the syncs carried new weights) and the engine is gone after training."""
    import psutil
    import torch
    from safetensors.torch import load_file

    from rewardkit import models
    from rewardkit.registry import get_registry

    _run("recipes/cpu/arithmetic_grpo_vllm.yaml", tmp_path, "trainer.max_steps=5", "~eval")
    steps = [r for r in _records(tmp_path / "grpo" / "log.jsonl") if "sampling/sampling_logp_difference/max" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    assert any(r["grad_norm"] > 0 for r in steps[:-1])  # a rollout came after an update (else nothing to sync)
    assert max(r["sampling/sampling_logp_difference/max"] for r in steps) <= 1e-3, steps
    trained = load_file(str(tmp_path / "grpo" / "model" / "model.safetensors"))
    base = load_file(os.path.join(models.resolve("tiny-llama", get_registry()), "model.safetensors"))
    assert any(not torch.equal(trained[k], base[k]) for k in trained)
    assert psutil.Process().children(recursive=True) == []


def test_dynamic_sampling_refills_rollouts_from_vllm(tmp_path):
    """Every group of the untrained model scores 0 under plain exact match, so each rollout is regenerated up to
    dynamic_sampling_max_rounds times by vLLM; the merged rollout keeps each row's vLLM log-probs with its row."""
    _run("recipes/cpu/arithmetic_grpo_vllm.yaml", tmp_path, "trainer.max_steps=1", "~eval",
         "trainer.dynamic_sampling=true", "trainer.dynamic_sampling_max_rounds=2",
         "rewards=[{name: exact_match, weight: 1.0}]")
    steps = [r for r in _records(tmp_path / "grpo" / "log.jsonl") if "dynamic_sampling/rounds" in r]
    assert [r["step"] for r in steps] == [1]
    assert all(r["dynamic_sampling/rounds"] == 2 and r["dynamic_sampling/extra_completions"] > 0 for r in steps)
    assert max(r["sampling/sampling_logp_difference/max"] for r in steps) <= 1e-3, steps


@pytest.mark.parametrize("adapter", [True, False], ids=["as-adapter", "merged"])
def test_grpo_with_a_lora_adapter_trains_on_samples_of_the_synced_adapter(tmp_path, adapter):
    """By default the adapter is synced as a LoRA adapter (rewardkit.vllm_lora) and each rollout passes it to vLLM;
    with ``vllm_lora_adapter: false`` TRL merges it, yields the merged weights and unmerges them in place once its
    iterator is exhausted, so the sync must load each weight as it comes (loading them after the iterator ran out
    left vLLM on the base: a gap of 0.29 at the first rollout after an update). Either way vLLM's log-probs are the
    trainer's after every update; each sync's mode and seconds are logged."""
    _run("recipes/cpu/arithmetic_grpo_vllm.yaml", tmp_path, "trainer.max_steps=5", "~eval",
         "trainer.learning_rate=1.0e-2", "model.lora={r: 8, lora_alpha: 16, target_modules: all-linear}",
         f"trainer.vllm_lora_adapter={str(adapter).lower()}")
    records = _records(tmp_path / "grpo" / "log.jsonl")
    steps = [r for r in records if "sampling/sampling_logp_difference/max" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    assert any(r["grad_norm"] > 0 for r in steps[:-1])  # a rollout came after an update (else nothing to sync)
    assert max(r["sampling/sampling_logp_difference/max"] for r in steps) <= 1e-3, steps
    syncs = [r for r in records if "vllm/sync_seconds" in r]
    assert len(syncs) == 5 and all(r["vllm/lora_adapter"] == float(adapter) for r in syncs), syncs
