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


# ---------------------------------------------------------------------------------------------- reuse levers
def test_sequence_log_weights_sum_the_masked_token_log_ratios():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    old = torch.tensor([[-1.5, -1.0, -3.0], [-1.0, -0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # row 0: 0.5 − 1 + 0 = −0.5; row 1: 0.5 + 0 (the padded −9 is ignored)
    assert core.sequence_log_weights(logps, old, mask).tolist() == pytest.approx([-0.5, 0.5])


def test_ess_fraction_by_hand_and_without_overflow():
    assert core.ess_fraction(torch.zeros(4)).item() == pytest.approx(1.0)  # equal weights: every sample counts
    # w = (1, 3): (1 + 3)² / (2 · (1 + 9)) = 16 / 20
    assert core.ess_fraction(torch.tensor([0.0, math.log(3.0)])).item() == pytest.approx(0.8)
    # the same weights times e^1000 (a long completion's product of ratios): same ESS, no inf/nan
    assert core.ess_fraction(torch.tensor([1000.0, 1000.0 + math.log(3.0)], dtype=torch.float64)).item() == pytest.approx(0.8)
    # one weight dominating: ESS → 1/n
    assert core.ess_fraction(torch.tensor([0.0, 0.0, 0.0, 50.0])).item() == pytest.approx(0.25, abs=1e-6)


def test_ess_fraction_over_processes_uses_every_processs_weights():
    """Two 'processes' with w = (1) and (3): the reductions make it the ESS of (1, 3), not a mean of per-process
    ESS (each of which is 1)."""
    parts = [torch.tensor([0.0]), torch.tensor([math.log(3.0)])]
    top = max(p.max() for p in parts)
    shifted = [torch.exp(p - top) for p in parts]
    total = sum(torch.stack([w.sum(), (w * w).sum(), torch.tensor(1.0)]) for w in shifted)
    ess = core.ess_fraction(parts[0], reduce_sum=lambda t: total, reduce_max=lambda t: top)
    assert ess.item() == pytest.approx(0.8)


def test_truncated_behaviour_weights_token_and_sequence_level():
    prox = torch.log(torch.tensor([[0.5, 0.6, 0.3], [0.9, 0.2, 0.7]]))
    behav = torch.log(torch.tensor([[1.0, 0.2, 0.3], [0.6, 0.2, 0.1]]))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # token ratios: (0.5, 3, 1) and (1.5, 1, [7, padding]); cap 2
    w = core.truncated_behaviour_weights(prox, behav, mask, "token", cap=2.0)
    assert w.tolist() == [pytest.approx([0.5, 2.0, 1.0]), pytest.approx([1.5, 1.0, 0.0])]
    # sequence: products 0.5·3·1 = 1.5 and 1.5·1 = 1.5 (padding excluded), cap 1.2 cuts both
    w = core.truncated_behaviour_weights(prox, behav, mask, "sequence", cap=2.0)
    assert w.tolist() == [pytest.approx([1.5, 1.5, 1.5]), pytest.approx([1.5, 1.5, 0.0])]
    w = core.truncated_behaviour_weights(prox, behav, mask, "sequence", cap=1.2)
    assert w.tolist() == [pytest.approx([1.2] * 3), pytest.approx([1.2, 1.2, 0.0])]
    with pytest.raises(ValueError, match="replay_is_level"):
        core.truncated_behaviour_weights(prox, behav, mask, "batch", cap=2.0)


def test_concat_rollouts_pads_prompts_left_and_completions_right():
    a = {"prompt_ids": torch.tensor([[5, 6]]), "prompt_mask": torch.tensor([[1, 1]]),
         "completion_ids": torch.tensor([[7]]), "completion_mask": torch.tensor([[1]]),
         "old_per_token_logps": torch.tensor([[-0.5]]), "advantages": torch.tensor([1.0]),
         "num_items_in_batch": torch.tensor(10.0)}
    b = {"prompt_ids": torch.tensor([[4]]), "prompt_mask": torch.tensor([[1]]),
         "completion_ids": torch.tensor([[8, 9, 3]]), "completion_mask": torch.tensor([[1, 1, 1]]),
         "old_per_token_logps": torch.tensor([[-1.0, -2.0, -3.0]]), "advantages": torch.tensor([-1.0]),
         "num_items_in_batch": torch.tensor(30.0)}
    out = core.concat_rollouts([a, b], pad_token_id=0)
    assert out["prompt_ids"].tolist() == [[5, 6], [0, 4]] and out["prompt_mask"].tolist() == [[1, 1], [0, 1]]
    assert out["completion_ids"].tolist() == [[7, 0, 0], [8, 9, 3]]
    assert out["completion_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert out["old_per_token_logps"].tolist() == [[-0.5, 0.0, 0.0], [-1.0, -2.0, -3.0]]
    assert out["advantages"].tolist() == [1.0, -1.0]
    assert out["num_items_in_batch"].item() == 20.0  # one rollout's worth: dapo's normaliser per minibatch
    with pytest.raises(ValueError, match="pixel_values"):
        core.concat_rollouts([dict(a, pixel_values=torch.zeros(1, 3)), dict(b, pixel_values=torch.zeros(1, 3))], 0)
    with pytest.raises(ValueError, match="different fields"):
        core.concat_rollouts([a, {k: v for k, v in b.items() if k != "old_per_token_logps"}], 0)
