"""PPO's optional algorithm pieces (issue 13), each on the tiny model for a few steps: target-KL early stop,
PPO-penalty, dual clip, a critic learning rate and warm-up, the missing-EOS penalty, reward normalisation and
clipping."""

import pytest
import torch

import rewardkit.builtin
from rewardkit import models
from rewardkit.algorithms.ppo import ends_with
from rewardkit.registry import Registry

pytest.importorskip("trl")
from rewardkit.trainers.ppo import PPOTrainer
from rewardkit.trainers.ppo_config import PPOConfig  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoTokenizer

    from rewardkit.builtin.datasets import arithmetic

    reg = Registry(entry_points=False)
    reg.add_plugin(rewardkit.builtin, "builtin", dist="rewardkit")
    path = models.resolve("tiny-llama", reg)
    return path, AutoTokenizer.from_pretrained(path), arithmetic(n_train=64, n_test=8, max_operand=10), reg


def digits(prompts, completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / 4 for c in completions]


def five(prompts, completions, **kwargs):
    return [5.0] * len(completions)


def zero(prompts, completions, **kwargs):
    return [0.0] * len(completions)


def train(tiny, tmp_path, reward=digits, **kw):
    path, tok, ds, reg = tiny
    base = dict(output_dir=str(tmp_path), max_steps=2, learning_rate=3e-3, per_device_train_batch_size=8,
                steps_per_generation=1, rollout_epochs=1, max_completion_length=4, report_to="none",
                logging_steps=1, bf16=False, gradient_checkpointing=False, seed=0, save_strategy="no",
                disable_tqdm=True)
    cfg = PPOConfig(**{**base, **kw})
    trainer = PPOTrainer(model=path, reward_funcs=[reward], args=cfg, train_dataset=ds["train"],
                         processing_class=tok, kl_estimator_fn=reg.kl_estimator(cfg.kl_estimator))
    trainer.train()
    return trainer


def logged(trainer, key):
    return [r[key] for r in trainer.state.log_history if r.get(key) is not None]


@pytest.mark.parametrize("threshold", [1e-12, 1e12], ids=["always_stop", "never_stop"])
def test_early_stop_kl_retires_rollouts_without_skipping_steps(tiny, tmp_path, threshold):
    t = train(tiny, tmp_path, rollout_epochs=2, max_steps=4, early_stop_kl=threshold)
    assert t.state.global_step == 4
    rollouts = len(logged(t, "ppo/score"))  # logged once per generated rollout
    if threshold < 1:
        assert rollouts == 4 and logged(t, "rollout/early_stop") == [1.0, 1.0, 1.0]  # each stopped at its first reuse
        assert logged(t, "rollout/epochs_used") == [1.0, 1.0, 1.0]
    else:
        assert rollouts == 2 and logged(t, "rollout/early_stop") == [0.0, 0.0]  # logged as each rollout finishes
        assert logged(t, "rollout/epochs_used") == [2.0, 2.0]


@pytest.mark.parametrize("target,factor", [(1e-9, 2.0), (1e3, 0.5)], ids=["kl_above", "kl_below"])
def test_ppo_penalty_coefficient_doubles_or_halves(tiny, tmp_path, target, factor):
    t = train(tiny, tmp_path, max_steps=3, policy_loss="penalty", ppo_penalty_target=target, ppo_penalty_coef=1.0)
    assert logged(t, "ppo/policy/penalty_coef") == pytest.approx([1.0, factor, factor ** 2])
    assert all(d > 0 for d in logged(t, "ppo/policy/penalty_kl"))  # measured after the update, not before it


def test_dual_clip_trains_and_logs(tiny, tmp_path):
    t = train(tiny, tmp_path, dual_clip=3.0, rollout_epochs=2)
    assert len(logged(t, "ppo/policy/dual_clipfrac")) == 2


def test_critic_learning_rate_and_warmup(tiny, tmp_path):
    path = tiny[0]
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(path).state_dict()
    t = train(tiny, tmp_path, critic_learning_rate=1e-2, learning_rate=1e-3, critic_warmup_steps=2)
    critic = {id(p) for p in t.model.critic.parameters()}
    lrs = {g["initial_lr"] for g in t.optimizer.param_groups if any(id(p) in critic for p in g["params"])}
    others = {g["initial_lr"] for g in t.optimizer.param_groups if not any(id(p) in critic for p in g["params"])}
    assert lrs == {1e-2} and others == {1e-3}
    assert t.model.critic.head.weight.abs().sum() > 0  # the critic learned during warm-up
    now = {k: v for k, v in t.model.state_dict().items() if not k.startswith("critic.")}
    assert all(torch.equal(now[k], v) for k, v in start.items())  # the policy (and shared backbone) did not move


def test_missing_eos_penalty_scores_truncated_completions(tiny, tmp_path):
    t = train(tiny, tmp_path, reward=zero, max_steps=1, missing_eos_penalty=1.0)
    r = t.buffer.batch
    truncated = (~ends_with(r["completion_ids"], r["completion_mask"], t.eos_token_ids)).float()
    assert truncated.sum() > 0  # an untrained model runs out of its 4 tokens
    assert logged(t, "ppo/score")[0] == pytest.approx(-truncated.mean().item())


def test_running_reward_normalisation_and_clip(tiny, tmp_path):
    t = train(tiny, tmp_path, max_steps=2, reward_normalization="running")
    assert abs(logged(t, "ppo/score")[0]) < 1e-5  # the first rollout normalised by its own statistics
    assert t.score_moments.count == 16
    t = train(tiny, tmp_path / "clip", reward=five, max_steps=1, reward_clip=1.0)
    assert logged(t, "ppo/score") == [1.0]


def test_critic_from_a_reward_model_and_from_a_saved_critic(tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification

    path = tiny[0]
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    torch.nn.init.normal_(rm.score.weight)
    rm.save_pretrained(tmp_path / "rm")
    t = train(tiny, tmp_path / "a", max_steps=1, learning_rate=0.0, critic="separate",
              critic_model=str(tmp_path / "rm"))
    assert torch.equal(t.model.critic.head.weight, rm.score.weight)  # value head = the RM's score head
    rm_backbone = rm.base_model.state_dict()
    assert all(torch.equal(v, rm_backbone[k]) for k, v in t.model.critic.backbone.state_dict().items())

    # a later stage starts from the critic the earlier one saved (lr 0: what it holds after training is what it loaded)
    t2 = train(tiny, tmp_path / "b", max_steps=1, learning_rate=0.0, critic="separate",
               critic_checkpoint=str(tmp_path / "a"))
    saved = torch.load(tmp_path / "a" / "critic.pt")
    loaded = t2.model.critic.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert saved["head.weight"].abs().sum() > 0  # not a fresh (zero) head
    with pytest.raises(ValueError, match="does not fit this critic"):  # a value-head critic into a separate one
        train(tiny, tmp_path / "c", max_steps=1, critic_checkpoint=str(tmp_path / "a"))


def test_stage_fills_output_dir_into_critic_paths(tmp_path):
    import types

    from rewardkit.trainers.ppo import PPOStage

    ctx = types.SimpleNamespace(spec=types.SimpleNamespace(name="ppo", trainer_args={"critic_checkpoint": "{output_dir}/ppo"}),
                                recipe=types.SimpleNamespace(seed=0, output_dir="runs/x"), output_dir=str(tmp_path))
    assert PPOStage().config(ctx).critic_checkpoint == "runs/x/ppo"


@pytest.mark.slow
def test_resume_keeps_adapted_beta_penalty_and_reward_statistics(tiny, tmp_path):
    kw = dict(max_steps=4, beta_target=1e3, beta_controller="halve_double", policy_loss="penalty",
              ppo_penalty_target=1e-9, reward_normalization="running", save_strategy="steps", save_steps=2)
    full = train(tiny, tmp_path / "full", **kw)
    assert (tmp_path / "full" / "checkpoint-2" / "rollout_state.pt").exists()
    path, tok, ds, reg = tiny
    cfg = PPOConfig(**{**dict(output_dir=str(tmp_path / "resumed"), learning_rate=3e-3, per_device_train_batch_size=8,
                              steps_per_generation=1, rollout_epochs=1, max_completion_length=4, report_to="none",
                              logging_steps=1, bf16=False, gradient_checkpointing=False, seed=0, disable_tqdm=True),
                       **kw})
    resumed = PPOTrainer(model=path, reward_funcs=[digits], args=cfg, train_dataset=ds["train"], processing_class=tok,
                         kl_estimator_fn=reg.kl_estimator(cfg.kl_estimator))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    # β halves every rollout (KL far below 1e3); β_pen doubles after every rollout's update (the 4th's at the final
    # checkpoint); 4 rollouts of 8 episodes counted in the statistics
    assert full.kl_ctl.beta == pytest.approx(0.05 / 16) and full.penalty_ctl.beta == pytest.approx(16.0)
    assert resumed.kl_ctl.beta == full.kl_ctl.beta and resumed.penalty_ctl.beta == full.penalty_ctl.beta
    assert resumed.score_moments.count == full.score_moments.count == 32
