"""The PPO trainer and stage on the tiny embedded model: config checks, one real (tiny) training run each for
the value-head critic, LoRA + 4-bit, and the separate critic."""

import os

import pytest
import torch


pytest.importorskip("trl")
from rewardkit.trainers.ppo import PPOStage, PPOTrainer
from rewardkit.trainers.ppo_config import PPOConfig  # noqa: E402


def digits(prompts, completions, **kwargs):
    """A reward any policy can move: the share of digit characters in the completion."""
    return [sum(ch.isdigit() for ch in c) / 4 for c in completions]


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=4, learning_rate=3e-3, per_device_train_batch_size=8,
                steps_per_generation=2, rollout_epochs=1, max_completion_length=4, report_to="none",
                logging_steps=1, bf16=False, gradient_checkpointing=False, seed=0)
    return PPOConfig(**{**base, **kw})


# ---------------------------------------------------------------- config checks
@pytest.mark.parametrize("field,value,message", [
    ("gamma", 1.5, "gamma must be in [0, 1], got 1.5"),
    ("lam", -0.1, "lam must be in [0, 1]"),
    ("critic", "twin", "critic must be one of value_head, separate"),
    ("beta_controller", "pid", "beta_controller must be one of"),
    ("cliprange_value", 0.0, "cliprange_value must be > 0"),
    ("rollout_epochs", 0, "rollout_epochs must be >= 1"),
    ("num_iterations", 2, "did you mean 'rollout_epochs'?"),
    ("policy_loss", "spo", "policy_loss must be one of clip, penalty"),
    ("dual_clip", 0.5, "dual_clip must be > 1"),
    ("reward_normalization", "batch", "reward_normalization must be one of none, running"),
    ("reward_clip", -1.0, "reward_clip must be > 0"),
    ("critic_warmup_steps", -1, "critic_warmup_steps must be >= 0"),
    ("critic_learning_rate", 0.0, "critic_learning_rate must be > 0"),
    ("early_stop_kl", 0.0, "early_stop_kl must be > 0"),
    ("kl_placement", "advantage", "kl_placement must be one of reward, loss"),
    ("kl_estimator", "k3", "kl_estimator 'k3' with kl_placement: reward"),
    ("loss_type", "cispo", "loss_type must be one of grpo, bnpo, dr_grpo, dapo"),
    ("importance_sampling_level", "group", "importance_sampling_level must be token or sequence"),
])
def test_config_errors_name_the_field(tmp_path, field, value, message):
    with pytest.raises(ValueError) as exc:
        config(tmp_path, **{field: value})
    assert message in str(exc.value)


def test_kl_target_needs_a_starting_beta(tmp_path):
    with pytest.raises(ValueError, match="beta_target=3.0 adapts beta"):
        config(tmp_path, beta_target=3.0, beta=0.0)


def test_one_generation_per_prompt_and_batch_arithmetic(tmp_path):
    cfg = config(tmp_path, per_device_train_batch_size=16, steps_per_generation=4, rollout_epochs=3)
    assert cfg.num_generations == 1 and cfg.generation_batch_size == 64
    assert ("rollout = generation_batch_size 64 episodes (64 prompts x num_generations 1) in steps_per_generation "
            "4 minibatches of per_device_train_batch_size 16; rollout_epochs 3 PPO epochs -> 12 optimizer steps"
            in cfg.describe_batches())
    with pytest.raises(ValueError, match="must be even"):
        config(tmp_path, per_device_train_batch_size=3, steps_per_generation=1)


def test_kl_defaults_regularise(tmp_path):
    """PPO's default KL penalty is k1 in the reward, the one detached estimate whose gradient pulls toward the
    reference (tests/test_kl_placement.py); the old default, k3 in the reward, is refused with the reason."""
    cfg = config(tmp_path)
    assert (cfg.kl_placement, cfg.kl_estimator, cfg.loss_type, cfg.disable_dropout) == ("reward", "k1", "bnpo", True)
    assert config(tmp_path, kl_placement="loss", kl_estimator="k3").kl_estimator == "k3"


def test_stage_rejects_grpo_only_fields_and_unknown_estimators(registry):
    assert PPOStage.check_args({"scale_rewards": "none"}, registry) == [
        "scale_rewards: a GRPO option; PPO's loss does not use it"]
    assert "kl_estimator: unknown kl_estimator 'k4'" in PPOStage.check_args({"kl_estimator": "k4"}, registry)[0]
    assert PPOStage.check_args({"gamma": 2.0}, registry)[0].startswith("PPOConfig rejects these values: gamma must")
    assert PPOStage.check_args({"kl_estimator": "k3", "kl_placement": "loss", "gamma": 0.99, "vf_coef": 0.5,
                                "loss_type": "dr_grpo", "importance_sampling_level": "sequence"}, registry) == []
    # the old names, shared with grpo_is, point to the new ones
    problems = PPOStage.check_args({"target_kl": 0.1, "kl_target": 2.0, "kl_controller": "proportional",
                                    "kl_horizon": 100, "num_iterations": 2}, registry)
    for old, new in [("target_kl", "early_stop_kl"), ("kl_target", "beta_target"),
                     ("kl_controller", "beta_controller"), ("kl_horizon", "beta_horizon"),
                     ("num_iterations", "rollout_epochs")]:
        assert any(p.startswith(f"{old}: renamed (did you mean '{new}'?)") for p in problems), (old, problems)


# ---------------------------------------------------------------- training
def _train(tiny, cfg, registry, **kw):
    path, tok, ds = tiny
    trainer = PPOTrainer(model=path, reward_funcs=[digits], args=cfg, train_dataset=ds["train"],
                         processing_class=tok, kl_estimator_fn=registry.kl_estimator(cfg.kl_estimator), **kw)
    trainer.train()
    return trainer


def _logged(trainer, key):
    return [r[key] for r in trainer.state.log_history if r.get(key) is not None]


def test_value_head_ppo_trains_policy_and_critic(tiny, registry, tmp_path):
    cfg = config(tmp_path, beta_target=0.5, beta_controller="halve_double")
    trainer = _train(tiny, cfg, registry)
    critic = trainer.model.critic
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in critic.parameters())
    assert critic.head.weight.abs().sum() > 0  # zero-initialised, so it moved
    assert trainer.ref_model is not None  # full fine-tuning: TRL's reference copy
    # Two rollouts (2 minibatches x 1 epoch each over 4 steps); the second one sees a policy that moved.
    kls = _logged(trainer, "ppo/kl")
    assert len(kls) == 2 and kls[0] == 0.0 and kls[1] != 0.0
    # halve/double toward 0.5: first KL 0 < 0.5/1.5 halves beta
    assert _logged(trainer, "ppo/beta")[:2] == [pytest.approx(0.05), pytest.approx(0.025)]
    for key in ("ppo/score", "ppo/loss/value", "ppo/explained_variance", "ppo/policy/clipfrac",
                "ppo/value/clipfrac", "ppo/policy/approx_kl", "ppo/entropy", "ppo/advantages/mean"):
        assert _logged(trainer, key), key
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    from safetensors.torch import load_file

    assert not [k for k in load_file(str(out / "model.safetensors")) if "critic" in k]
    assert (out / "critic.pt").exists() and (tmp_path / "critic.pt").exists()


def test_lora_4bit_ppo_uses_base_as_reference(tiny, registry, tmp_path):
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, PeftModel
    from transformers import BitsAndBytesConfig

    cfg = config(tmp_path, learning_rate=1e-2)
    trainer = _train(tiny, cfg, registry,
                     peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
                     quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                            bnb_4bit_compute_dtype=torch.float32))
    assert isinstance(trainer.model, PeftModel) and trainer.ref_model is None  # no second copy of the weights
    assert trainer.model.critic.head.weight.requires_grad
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert id(trainer.model.critic.head.weight) in in_opt
    assert _logged(trainer, "ppo/kl")[1] != 0.0  # adapters moved the policy away from the disabled-adapter base


def test_separate_critic(tiny, registry, tmp_path):
    trainer = _train(tiny, config(tmp_path, critic="separate"), registry)
    critic = trainer.model.critic
    assert critic.backbone is not None
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in critic.backbone.parameters())
    assert os.path.exists(tmp_path / "critic.pt")


def test_validate_rejects_old_names_with_exit_code_2(capsys):
    from rewardkit.cli import main

    recipe = os.path.join(os.path.dirname(__file__), "..", "recipes", "cpu", "reverse_ppo.yaml")
    code = main(["validate", recipe, "stages.ppo.trainer.kl_target=2.0", "stages.ppo.trainer.num_iterations=2"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "stages.ppo.trainer.kl_target: renamed (did you mean 'beta_target'?)" in err
    assert "stages.ppo.trainer.num_iterations: renamed (did you mean 'rollout_epochs'?)" in err


def test_kl_in_the_loss_instead_of_the_reward(tiny, registry, tmp_path):
    """kl_placement: loss: the reward carries no KL (non_score_reward 0) and β·k3·ρ is a loss term, non-zero once
    the policy has moved from the reference."""
    trainer = _train(tiny, config(tmp_path, kl_placement="loss", kl_estimator="k3", beta=0.1), registry)
    assert set(_logged(trainer, "ppo/non_score_reward")) == {0.0}
    kl_loss = _logged(trainer, "ppo/loss/kl")
    assert kl_loss and kl_loss[0] == 0.0 and kl_loss[-1] > 0.0
    assert _logged(trainer, "ppo/kl")[-1] > 0.0  # the rollout's KL, which an adaptive β would read, is still measured


@pytest.mark.parametrize("disable_dropout", [True, False])
def test_dropout_is_off_so_a_rollouts_first_ratio_is_one(tiny, registry, tmp_path, disable_dropout):
    """With LoRA dropout on, the passes that define the old policy (generation, old log-probs, values) and the
    update saw different functions: KL(old‖new) > 0 on a rollout's first minibatch. PPO turns dropout off by default."""
    from peft import LoraConfig

    cfg = config(tmp_path, steps_per_generation=1, max_steps=2, disable_dropout=disable_dropout)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.5, target_modules="all-linear", task_type="CAUSAL_LM",
                      init_lora_weights=False)  # random B: dropout acts from the start
    trainer = _train(tiny, cfg, registry, peft_config=lora)
    first_kls = _logged(trainer, "ppo/policy/approx_kl")  # every minibatch opens its rollout here
    assert len(first_kls) == 2
    if disable_dropout:
        assert max(first_kls) < 1e-6, first_kls
    else:
        assert min(first_kls) > 1e-4, first_kls  # what the default prevents


def test_trls_old_logprob_rule_is_checked_not_assumed(tiny, registry, tmp_path, monkeypatch):
    """PPO skips TRL's old-log-prob pass by TRL 1.16's rule; the installed TRL is checked to still decide it that
    way, and if it does not, TRL's pass is left to run (one wasted forward, same results) with a warning."""
    from rewardkit.trainers import ppo

    assert ppo.trl_old_logps_rule_holds()  # the pinned TRL: a TRL upgrade that changes it fails here first
    path, tok, ds = tiny
    cfg = config(tmp_path)
    trainer = PPOTrainer(model=path, reward_funcs=[digits], args=cfg, train_dataset=ds["train"], processing_class=tok)
    with trainer._without_trl_old_logps():
        assert trainer.args.gradient_accumulation_steps == 0
    monkeypatch.setattr(ppo, "trl_old_logps_rule_holds", lambda: False)
    with pytest.warns(UserWarning, match="decides its old-log-prob pass differently"):
        with trainer._without_trl_old_logps():
            assert trainer.args.gradient_accumulation_steps == cfg.gradient_accumulation_steps
