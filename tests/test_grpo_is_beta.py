"""grpo_is's adaptive β speaks PPO's units (issue 13): the KL target is nats per *sequence* and the proportional
controller's horizon is in episodes, so one rollout of n completions moves β by a factor 1 + e·n/horizon."""

import warnings

import pytest
import torch

from rewardkit import models
from rewardkit.builtin.datasets import arithmetic

warnings.filterwarnings("ignore")


def one_per_token(logp, ref_logp):
    """A KL 'estimator' that is exactly 1 nat per token, so the per-sequence KL is the completion length."""
    return torch.ones_like(logp)


def shaped_reward(prompts, completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / 5 for c in completions]


@pytest.mark.parametrize("target,sign", [(1.0, 1), (1e9, -1)], ids=["kl_above_target", "kl_below_target"])
def test_proportional_beta_uses_sequences_and_episodes(tmp_path, target, sign, registry):
    from transformers import AutoTokenizer

    from rewardkit.trainers.grpo_is import GRPOISConfig, GRPOISTrainer

    path = models.resolve("tiny-llama", registry)
    args = GRPOISConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                        steps_per_generation=2, rollout_epochs=1, max_steps=2, max_completion_length=4,
                        learning_rate=1e-3, report_to="none", save_strategy="no", logging_steps=1, bf16=False,
                        seed=0, beta=0.05, beta_target=target, beta_controller="proportional", beta_horizon=16,
                        use_bias_correction_kl=False, disable_tqdm=True)
    trainer = GRPOISTrainer(model=path, args=args, train_dataset=arithmetic(n_train=64, n_test=8)["train"],
                            processing_class=AutoTokenizer.from_pretrained(path), reward_funcs=[shaped_reward])
    trainer.kl_fn = one_per_token
    trainer.train()
    assert trainer.rollouts == 1 and args.generation_batch_size == 16
    mask = trainer.buffer.batch["completion_mask"]
    mean_length = (mask.sum() / mask.size(0)).item()
    (record,) = trainer.rollout_history
    assert record["ref_kl"] == pytest.approx(mean_length)  # per sequence, not 1 (per token)
    assert mean_length > 1.2  # so the target 1.0 is exceeded by more than the controller's clip
    # e = clip(KL/target - 1, -0.2, 0.2) = ±0.2; n = 16 episodes, horizon 16: β = 0.05 · (1 ± 0.2)
    assert record["beta"] == pytest.approx(0.05 * (1 + sign * 0.2))


def test_old_names_point_to_the_shared_vocabulary(registry):
    from rewardkit.trainers.grpo_is import GRPOISStage
    from rewardkit.trainers.ppo_config import PPOConfig

    problems = GRPOISStage.check_args({"target_kl": 0.1, "kl_target": 0.2, "kl_controller": "proportional",
                                       "kl_horizon": 10, "rollout_epochs": 2}, registry)
    assert [p.split(";")[0] for p in problems] == [
        "target_kl: renamed (did you mean 'early_stop_kl'?)", "kl_target: renamed (did you mean 'beta_target'?)",
        "kl_controller: renamed (did you mean 'beta_controller'?)",
        "kl_horizon: renamed (did you mean 'beta_horizon'?)"]
    # the same fields with the same defaults in both trainers, except where the KL penalty acts: PPO's is k1 in the
    # reward (Ziegler et al. 2019), grpo_is's k3 in the loss (TRL's); k3 in the reward does not regularise
    # (tests/test_kl_placement.py), so one shared default cannot serve both placements
    from rewardkit.trainers.grpo_is import GRPOISConfig
    from rewardkit.trainers.rollout_kl import RolloutKLConfig

    differ = {name for name in RolloutKLConfig.__dataclass_fields__
              if GRPOISConfig.__dataclass_fields__[name].default != PPOConfig.__dataclass_fields__[name].default}
    assert differ == {"kl_estimator", "kl_placement"}
    assert (PPOConfig.kl_placement, PPOConfig.kl_estimator) == ("reward", "k1")
    assert (GRPOISConfig.kl_placement, GRPOISConfig.kl_estimator) == ("loss", "k3")
