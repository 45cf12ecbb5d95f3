"""grpo_is's reuse levers TRL does not have: replay of the last K rollouts corrected to the policy that generated
each sample, reuse that stops on the effective sample size, and the KL early stop at thresholds it reaches."""

import warnings

import pytest
import torch

from tests.test_grpo_is import (  # noqa: F401 (fixtures: one_thread is autouse here too)
    _params, make, one_thread, setup, shaped_reward, synthetic_batch)

warnings.filterwarnings("ignore")


def _loss_and_grads(trainer, batch):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_replay_weight_multiplies_trls_per_token_loss(setup, tmp_path):
    """A replayed sample's loss is w · (TRL's clipped term): with w = 2 on every token the loss and every gradient
    double (β = 0, grpo aggregation, linear in the per-token loss); w = 0 on a row removes it exactly as dropping
    the row from the token means would. TRL's vLLM flags are back as they were afterwards."""
    t = make(setup, tmp_path, rollout_epochs=1, beta=0.0, loss_type="grpo")
    t.current_gradient_accumulation_steps = 1
    t.buffer.cursor = (0, 0)
    flags = t.use_vllm, t.vllm_importance_sampling_correction
    batch = synthetic_batch(t.model)
    plain, g_plain = _loss_and_grads(t, batch)
    doubled, g_doubled = _loss_and_grads(t, dict(batch, replay_weight=2.0 * batch["completion_mask"].float()))
    assert doubled.item() == pytest.approx(2 * plain.item(), rel=1e-6) and abs(plain.item()) > 1e-4
    assert max((g_doubled[k] - 2 * g_plain[k]).abs().max().item() for k in g_plain) < 1e-6
    w = batch["completion_mask"].float().clone()
    w[0] = 0.0
    dropped, _ = _loss_and_grads(t, dict(batch, replay_weight=w))
    rest, _ = _loss_and_grads(t, {k: (v[1:] if torch.is_tensor(v) and v.ndim else v) for k, v in batch.items()})
    assert dropped.item() == pytest.approx(rest.item() * 7 / 8, rel=1e-5)  # grpo: mean over 8 sequences, one is 0
    assert (t.use_vllm, t.vllm_importance_sampling_correction) == flags and flags[0] is False


@pytest.mark.slow
def test_replay_trains_the_last_k_rollouts_with_their_behaviour_weights(setup, tmp_path):
    """K = 2, μ = 1, 2 minibatches of 8 per rollout: rollout 1 trains alone (2 steps), rollout 2 with rollout 1
    (4 steps), rollout 3 with rollouts 2 and 1 (6 steps): 12 steps are 3 rollouts. A replayed row's weight is
    min(π_prox/π_behav, cap) with π_prox the policy when its rollout began, recomputed here from the stored
    behaviour log-probs; fresh rows weigh 1."""
    t = make(setup, tmp_path, rollout_epochs=1, steps_per_generation=2, max_steps=12, replay_rollouts=2,
             replay_is_cap=1.05, logging_steps=100)
    seen = []
    original = t._with_replay

    def spy(batch):
        out = original(batch)
        seen.append((len(t.replay.rollouts), {k: v.clone() for k, v in out.items() if torch.is_tensor(v)}))
        return out

    t._with_replay = spy
    t.train()
    assert t.state.global_step == 12 and t.rollouts == 3
    assert [r["optimizer_steps"] for r in t.rollout_history] == [2, 4, 6]
    assert [b["advantages"].shape[0] for _, b in seen] == [16, 32, 48]
    last = seen[-1][1]
    fresh_w, replay_w = last["replay_weight"][:16], last["replay_weight"][16:]
    assert torch.equal(fresh_w, last["completion_mask"][:16].float())
    mask = last["completion_mask"][16:].bool()
    assert replay_w[mask].max() <= 1.05 + 1e-6 and (replay_w[mask] != 1.0).any()  # the policy moved: w ≠ 1
    stored = dict(t.replay.rollouts)  # rollout 2's stored rows are the first replayed ones of rollout 3
    behav, rows = stored[2]["behaviour_logps"], stored[2]
    expected = torch.exp((last["old_per_token_logps"][16:32] - behav).clamp(max=torch.log(torch.tensor(1.05))))
    m2 = rows["completion_mask"].bool()
    assert torch.allclose(replay_w[:16][m2], expected[m2], atol=1e-5)


@pytest.mark.slow
def test_replay_drops_a_rollout_past_the_staleness_bound(setup, tmp_path):
    """replay_max_kl tiny: every stored rollout is already too far from the policy at the next rollout, so none is
    replayed (each rollout is 2 steps again) and each is counted as dropped."""
    t = make(setup, tmp_path, rollout_epochs=1, steps_per_generation=2, max_steps=6, replay_rollouts=2,
             replay_max_kl=1e-12, logging_steps=1)
    t.train()
    assert t.rollouts == 3 and [r["optimizer_steps"] for r in t.rollout_history] == [2, 2, 2]
    logged = [r for r in t.state.log_history if "rollout/replay_dropped" in r]
    assert logged and all(r.get("rollout/replayed", 0) == 0 for r in logged)
    assert sum(r["rollout/replay_dropped"] for r in logged) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("min_ess", [1.0, 1e-9], ids=["always", "never"])
def test_reuse_stops_on_effective_sample_size(setup, tmp_path, min_ess):
    """μ = 3, one step per epoch: ESS of 1 is reached only by equal weights, so early_stop_ess 1.0 retires every
    rollout at its first reuse, with 'ess' as the reason; 1e-9 never stops (3 epochs each). Steps are kept."""
    t = make(setup, tmp_path, rollout_epochs=3, early_stop_ess=min_ess, max_steps=6, logging_steps=1)
    t.train()
    assert t.state.global_step == 6
    finished = t.rollout_history
    if min_ess == 1.0:
        assert finished and all(r["stop_reason"] == "ess" and r["epochs_used"] == 1.0 for r in finished)
    else:
        assert [(r["stop_reason"], r["epochs_used"]) for r in finished] == [(None, 3.0)] * 2
    ess = [e["ess"] for e in t.epoch_history]
    assert all(0.0 < x <= 1.0 for x in ess)
    assert any("rollout/ess" in r for r in t.state.log_history)


@pytest.mark.slow
def test_kl_early_stop_fires_at_thresholds_of_a_few_hundredths(setup, tmp_path):
    """The KL early stop can act in the range the benchmark screens (0.01–0.03 nats per token): at this test's
    learning rate the per-epoch KL(old‖new) passes 0.02 within μ = 8 epochs and the stop retires rollouts early."""
    t = make(setup, tmp_path, rollout_epochs=8, early_stop_kl=0.02, max_steps=16, logging_steps=1)
    t.train()
    assert any(r["stop_reason"] == "kl" and r["epochs_used"] < 8 for r in t.rollout_history)
    assert max(e["approx_kl"] for e in t.epoch_history) > 0.005


@pytest.mark.slow
def test_resume_with_replay_continues_the_same_rollouts(setup, tmp_path):
    """The replay store travels in rollout_state.pt: a run with K = 1 checkpointed mid-rollout and resumed ends with
    the weights of the uninterrupted run."""
    kw = dict(rollout_epochs=1, steps_per_generation=2, max_steps=6, replay_rollouts=1, save_strategy="steps",
              save_steps=3)
    full = make(setup, tmp_path / "full", **kw)
    full.train()
    resumed = make(setup, tmp_path / "resumed", **kw)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "ours" / "checkpoint-3"))
    assert resumed.rollout_history == full.rollout_history
    p_full, p_res = _params(full), _params(resumed)
    assert max((p_full[k] - p_res[k]).abs().max().item() for k in p_full) < 1e-5


@pytest.mark.parametrize("field, value, message", [
    ("early_stop_ess", 1.5, "early_stop_ess is a fraction"), ("replay_rollouts", -1, "replay_rollouts must be"),
    ("replay_max_kl", 0.0, "replay_max_kl must be"), ("replay_is_cap", 0.0, "replay_is_cap must be"),
    ("replay_is_level", "batch", "replay_is_level must be")])
def test_config_rejects_bad_reuse_values_naming_the_field(tmp_path, field, value, message):
    from rewardkit.trainers.grpo_is import GRPOISConfig

    with pytest.raises(ValueError, match=message):
        GRPOISConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, bf16=False,
                     **{field: value})
