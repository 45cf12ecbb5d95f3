"""Pure functions of the grpo_is trainer (no model)."""

import math

import pytest
import torch

from rewardkit.algorithms import grpo_is as core
from rewardkit.algorithms.masked import kl_old_new


def _mask():
    return torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)


def test_approx_kl_is_zero_on_policy_and_positive_off_policy():
    logp = torch.randn(3, 4)
    assert kl_old_new(logp, logp, _mask()).item() == 0.0
    shifted = logp + torch.tensor([[0.3, -0.2, 0.1, 5.0]] * 3)  # the masked 4th column must not count
    kl = kl_old_new(shifted, logp, _mask()).item()
    manual = ((torch.exp(shifted - logp) - 1 - (shifted - logp)) * _mask()).sum() / _mask().sum()
    assert kl == pytest.approx(manual.item(), rel=1e-6)
    assert kl > 0


def test_sequence_level_weights_are_masked_means():
    logp, old = torch.randn(3, 4), torch.randn(3, 4)
    w = core.importance_log_weights(logp, old, _mask(), "sequence")
    assert w.shape == (3, 1)
    assert w[1, 0].item() == pytest.approx(((logp - old)[1, :2]).mean().item(), rel=1e-6)
    with pytest.raises(ValueError):
        core.importance_log_weights(logp, old, _mask(), "tokens")


def test_clip_masks_mark_where_the_clip_zeroes_the_gradient():
    coef, adv = torch.tensor([[0.5, 1.0, 1.5]]), torch.tensor([[1.0]])
    # ratio 0.5 with A>0: the unclipped branch is the min; 1.5 > 1.28 with A>0: clipped
    low, high = core.clip_masks(coef, adv, 0.2, 0.28)
    assert low.tolist() == [[False, False, False]] and high.tolist() == [[False, False, True]]


def test_aggregations_differ_as_documented():
    ptl = torch.ones(3, 4)
    m = _mask()
    assert core.aggregate_loss(ptl, m, "grpo").item() == pytest.approx(1.0)
    assert core.aggregate_loss(ptl, m, "bnpo").item() == pytest.approx(1.0)
    assert core.aggregate_loss(ptl, m, "dr_grpo", max_completion_length=4).item() == pytest.approx(9 / 12)
    assert core.aggregate_loss(ptl, m, "dapo", num_items=18.0).item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        core.aggregate_loss(ptl, m, "sapo")


def test_ratio_range_ignores_padding():
    coef = torch.tensor([[0.9, 1.1, 1.0, 99.0], [0.5, 1.0, 0.01, 7.0], [1.0, 1.0, 1.0, 1.2]])
    assert core.ratio_range(coef, _mask()) == (pytest.approx(0.5), pytest.approx(1.2))
    assert all(math.isnan(v) for v in core.ratio_range(coef, torch.zeros(3, 4)))


def test_epoch_permutation_is_deterministic_and_varies_by_epoch():
    state = torch.random.get_rng_state()
    a = core.epoch_permutation(16, 0, 3, 1)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(a, core.epoch_permutation(16, 0, 3, 1))
    assert not torch.equal(a, core.epoch_permutation(16, 0, 3, 2))
    assert sorted(a.tolist()) == list(range(16))


def test_permute_rows_keeps_scalars_and_permutes_lists():
    batch = {"x": torch.arange(4), "names": list("abcd"), "n": torch.tensor(7), "none": None}
    out = core.permute_rows(batch, torch.tensor([3, 2, 1, 0]))
    assert out["x"].tolist() == [3, 2, 1, 0] and out["names"] == list("dcba")
    assert out["n"].item() == 7 and out["none"] is None


def test_batch_problems_explain_with_the_users_numbers():
    assert core.batch_problems(per_device_train_batch_size=8, num_processes=1, steps_per_generation=4,
                               gradient_accumulation_steps=2, num_generations=4, rollout_epochs=3) == []
    (msg,) = core.batch_problems(per_device_train_batch_size=8, num_processes=1, steps_per_generation=3,
                                 gradient_accumulation_steps=2, num_generations=4, rollout_epochs=3)
    assert "8 × 1 × 3 = 24" in msg and "1.5 optimizer steps" in msg and "multiple of 2" in msg
    probs = core.batch_problems(per_device_train_batch_size=6, num_processes=1, steps_per_generation=1,
                                gradient_accumulation_steps=1, num_generations=4, rollout_epochs=0)
    assert any("rollout_epochs" in p for p in probs) and any("num_generations = 4" in p for p in probs)


def test_kl_reward_to_go_by_hand():
    """kl_placement: reward for GRPO: A_t = Â − β·Σ_{t'≥t} k_t', padding 0."""
    adv = torch.tensor([1.0, -0.5])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    out = core.kl_reward_to_go(adv, kl, mask, beta=2.0)
    expected = torch.tensor([[1 - 2 * 0.6, 1 - 2 * 0.5, 1 - 2 * 0.3], [-0.5 - 2 * 0.9, -0.5 - 2 * 0.5, 0.0]])
    assert torch.allclose(out, expected)
