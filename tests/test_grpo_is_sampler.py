"""grpo_is's loss with vLLM's sampler/trainer correction: w_samp multiplies TRL's per-token loss together with the
replay weight (docs/grpo_is.md, "How the weights combine"), without vLLM installed (the weight is given)."""

import warnings

import pytest
import torch

from tests.test_grpo_is import make, setup, synthetic_batch  # noqa: F401 (fixture)

warnings.filterwarnings("ignore")


def _loss(trainer, batch):
    trainer.model.train()
    trainer.model.zero_grad()
    return trainer.compute_loss(trainer.model, batch).item()


def test_sampler_weight_multiplies_trls_loss_with_the_replay_weight(setup, tmp_path):
    """β = 0, grpo aggregation (linear in the per-token loss): w_samp = 2 doubles the loss; w_samp = 2 with a replay
    weight 0.5 gives the plain loss back (the two factors multiply); the trainer's TRL flags are restored."""
    t = make(setup, tmp_path, rollout_epochs=1, beta=0.0, loss_type="grpo")
    t.current_gradient_accumulation_steps = 1
    t.buffer.cursor = (0, 0)
    batch = synthetic_batch(t.model)
    ones = batch["completion_mask"].float()
    plain = _loss(t, batch)
    assert abs(plain) > 1e-4
    assert _loss(t, dict(batch, sampler_weight=2.0 * ones)) == pytest.approx(2 * plain, rel=1e-6)
    assert _loss(t, dict(batch, sampler_weight=2.0 * ones, replay_weight=0.5 * ones)) == pytest.approx(plain,
                                                                                                      rel=1e-6)
    assert (t.use_vllm, t.vllm_importance_sampling_correction) == (False, True)  # TRL's defaults, as built
