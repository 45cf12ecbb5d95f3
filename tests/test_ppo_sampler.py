"""PPO's loss with vLLM's sampler/trainer correction: the rollout's ``sampler_weight`` multiplies the policy loss
of every token (docs/ppo.md, "vLLM generation"); no vLLM needed (the weight is given)."""

import pytest
import torch

from tests.test_ppo_options import digits, tiny, train  # noqa: F401 (fixture)


def _policy_loss(trainer, batch):
    trainer.model.train()
    trainer.buffer.cursor = (0, 0)
    trainer._metrics["train"].clear()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    return trainer._metrics["train"]["ppo/loss/policy"][-1], trainer._metrics["train"]["ppo/loss/value"][-1]


def test_sampler_weight_scales_the_policy_loss_not_the_value_loss(tiny, tmp_path):
    trainer = train(tiny, tmp_path, max_steps=1)
    batch = {k: v[:8] if torch.is_tensor(v) and v.ndim else v for k, v in trainer.buffer.batch.items()}
    policy, value = _policy_loss(trainer, batch)
    w = 2.0 * batch["loss_mask"].float()
    policy_w, value_w = _policy_loss(trainer, dict(batch, sampler_weight=w))
    assert abs(policy) > 1e-6 and policy_w == pytest.approx(2 * policy, rel=1e-5)
    assert value_w == pytest.approx(value, rel=1e-6)  # the critic's regression is not reweighted
