"""PPO's pure functions against numbers worked by hand (see the comments for each calculation)."""

import math

import pytest
import torch

from rewardkit.algorithms import masked as pm
from rewardkit.algorithms import ppo as pc


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_token_rewards_score_on_last_real_token_and_kl_on_every_token():
    # beta 0.5; row 0 has 3 real tokens, row 1 has 2 (its third is padding with a garbage KL of 9).
    score = t([1.0, 2.0])
    kl = t([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    r = pc.token_rewards(score, kl, 0.5, mask)
    # row 0: -0.05, -0.10, -0.15 + 1 ; row 1: -0.25, -0.25 + 2, padding 0
    assert torch.allclose(r, t([[-0.05, -0.10, 0.85], [-0.25, 1.75, 0.0]]))


def test_token_rewards_empty_completion_gets_nothing():
    r = pc.token_rewards(t([5.0]), t([[0.3, 0.3]]), 1.0, t([[0, 0]]))
    assert torch.equal(r, t([[0.0, 0.0]]))


def test_last_token_index():
    assert pc.last_token_index(t([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])).tolist() == [1, 3, 0]


def test_gae_monte_carlo_case():
    # gamma = lam = 1: advantages are return - value; the return of every token is the final score 1.
    adv, ret = pc.gae(t([[0, 0, 1]]), t([[0.5, 0.5, 0.5]]), t([[1, 1, 1]]), gamma=1.0, lam=1.0)
    assert torch.allclose(adv, t([[0.5, 0.5, 0.5]]))
    assert torch.allclose(ret, t([[1.0, 1.0, 1.0]]))


def test_gae_discounted_by_hand():
    # gamma 0.9, lam 0.5, V = 0.5 everywhere, reward 1 on the last token:
    # t=2: d = 1 - 0.5 = 0.5, A = 0.5
    # t=1: d = 0.9*0.5 - 0.5 = -0.05, A = -0.05 + 0.45*0.5 = 0.175
    # t=0: d = -0.05, A = -0.05 + 0.45*0.175 = 0.02875
    adv, ret = pc.gae(t([[0, 0, 1]]), t([[0.5, 0.5, 0.5]]), t([[1, 1, 1]]), gamma=0.9, lam=0.5)
    assert torch.allclose(adv, t([[0.02875, 0.175, 0.5]]))
    assert torch.allclose(ret, t([[0.52875, 0.675, 1.0]]))


def test_gae_padding_is_terminal_and_ignored():
    # Row ends after 2 tokens; the padded value (7) and reward (3) must not leak into the real tokens.
    adv, ret = pc.gae(t([[0, 1, 3]]), t([[0.5, 0.5, 7.0]]), t([[1, 1, 0]]), gamma=1.0, lam=1.0)
    assert torch.allclose(adv, t([[0.5, 0.5, 0.0]]))
    assert torch.allclose(ret, t([[1.0, 1.0, 0.0]]))


def test_gae_skips_interior_masked_tokens():
    # A tool output (mask 0) inside the completion is not the end of the episode: with score 1 on the last token,
    # gamma = lam = 1 and V = 0, every real token's advantage is the return 1, including the tokens before the tool
    # output; the masked positions get 0 and do not pass on their (garbage) reward 5 or value 9.
    mask = t([[1, 1, 0, 0, 1, 1]])
    rewards = pc.token_rewards(t([1.0]), torch.zeros(1, 6), 0.0, mask)
    rewards[0, 2] = 5.0
    adv, ret = pc.gae(rewards, t([[0, 0, 9, 9, 0, 0]]), mask, gamma=1.0, lam=1.0)
    assert torch.equal(adv, t([[1, 1, 0, 0, 1, 1]]))
    assert torch.equal(ret, t([[1, 1, 0, 0, 1, 1]]))
    # discounted: the skipped positions cost no discount step (gamma 0.5, lam 1: 1 at t5, 0.5, then 0.25, 0.125)
    adv, _ = pc.gae(rewards * mask, torch.zeros(1, 6), mask, gamma=0.5, lam=1.0)
    assert torch.allclose(adv, t([[0.125, 0.25, 0, 0, 0.5, 1]]))


def test_whitening_over_processes_uses_the_global_statistics():
    # Two "processes" holding [1, 2] and [3, 4, 5, 6] (different lengths): whitening each with the summed
    # statistics must equal whitening the concatenation; the local whitening differs.
    a, b = t([[1, 2, 0, 0]]), t([[3, 4, 5, 6]])
    ma, mb = t([[1, 1, 0, 0]]), t([[1, 1, 1, 1]])
    parts = {"a": (a, ma), "b": (b, mb)}
    whole = pm.masked_whiten(t([[1, 2, 3, 4, 5, 6]]), t([[1, 1, 1, 1, 1, 1]]))

    def reducer_for(mine):
        """accelerator.reduce(..., "sum") as seen by one part: its tensor plus the other part's same statistic
        (first [Σx, n], then Σ(x − mean)² with the global mean 3.5)."""
        def reduce(tensor):
            other_x, other_m = parts["b" if mine == "a" else "a"]
            if tensor.ndim == 1:
                return tensor + torch.stack([(other_x * other_m).sum(), other_m.sum()])
            mean = 3.5
            return tensor + ((other_x - mean) ** 2 * other_m).sum()
        return reduce

    out_a = pm.masked_whiten(a, ma, all_reduce=reducer_for("a"))
    out_b = pm.masked_whiten(b, mb, all_reduce=reducer_for("b"))
    assert torch.allclose(out_a[0, :2], whole[0, :2], atol=1e-6) and torch.allclose(out_b, whole[:, 2:], atol=1e-6)
    assert not torch.allclose(pm.masked_whiten(a, ma)[0, :2], whole[0, :2], atol=1e-2)
    assert pm.global_masked_mean(b, mb, all_reduce=lambda x: x + torch.stack([(a * ma).sum(), ma.sum()])).item() \
        == pytest.approx(3.5)


def test_masked_whiten_uses_only_real_tokens():
    # real entries 1, 2, 3: mean 2, unbiased var 1 -> -1, 0, 1; padding stays 0
    out = pm.masked_whiten(t([[1, 2, 3, 100]]), t([[1, 1, 1, 0]]))
    assert torch.allclose(out, t([[-1, 0, 1, 0]]), atol=1e-6)
    assert pm.masked_mean(t([[1, 2, 3, 100]]), t([[1, 1, 1, 0]])).item() == pytest.approx(2.0)


def test_policy_loss_clip_by_hand_and_gradients():
    # ratios 1, 1.5, 0.5 (+ a padded token with a huge ratio), advantages 1, 1, -1, clip 0.2:
    # tok0: max(-1, -1) = -1 ; tok1: max(-1.5, -1.2) = -1.2 (clipped) ; tok2: max(0.5, 0.8) = 0.8 (clipped)
    # loss = (-1 - 1.2 + 0.8) / 3, clipfrac 2/3
    logp = torch.log(t([[1.0, 1.5, 0.5, 50.0]])).requires_grad_()
    loss, stats = pc.policy_loss(logp, torch.zeros(1, 4), t([[1, 1, -1, 1]]), t([[1, 1, 1, 0]]), clip=0.2)
    assert loss.item() == pytest.approx(-1.4 / 3, abs=1e-6)
    assert stats["clipfrac"] == pytest.approx(2 / 3)
    loss.backward()
    # d/dlogp of -A*ratio/3 where unclipped wins (tok0): -1/3; clipped tokens and padding: 0
    assert torch.allclose(logp.grad, t([[-1 / 3, 0.0, 0.0, 0.0]]), atol=1e-6)


def test_policy_loss_asymmetric_clip_and_approx_kl():
    # ratio 1.25, A = 1: clipped at 1.2 with clip_high=None, untouched with clip_high=0.3
    logp = torch.log(t([[1.25]]))
    assert pc.policy_loss(logp, torch.zeros(1, 1), t([[1.0]]), t([[1]]), 0.2)[0].item() == pytest.approx(-1.2)
    loss, stats = pc.policy_loss(logp, torch.zeros(1, 1), t([[1.0]]), t([[1]]), 0.2, clip_high=0.3)
    assert loss.item() == pytest.approx(-1.25)
    # k3 estimate of KL(old || new) with tokens from old: rho - 1 - log(rho) = 0.25 - log(1.25)
    assert stats["approx_kl"] == pytest.approx(0.25 - math.log(1.25), abs=1e-6)


def test_value_loss_clipped_by_hand():
    # tok0: (1-2)^2 = 1 vs clipped V 0.7: (0.7-2)^2 = 1.69 -> 1.69
    # tok1: (0-0)^2 = 0 vs clipped V 0.3: 0.09 -> 0.09 ; padded token ignored
    # loss = 0.5 * (1.69 + 0.09) / 2 = 0.445
    values, old, ret = t([[1.0, 0.0, 9.0]]), t([[0.5, 0.5, 0.0]]), t([[2.0, 0.0, 0.0]])
    mask = t([[1, 1, 0]])
    loss, stats = pc.value_loss(values, old, ret, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.445)
    assert stats["clipfrac"] == pytest.approx(1.0)
    plain, _ = pc.value_loss(values, old, ret, mask, clip=None)
    assert plain.item() == pytest.approx(0.25)  # 0.5 * (1 + 0) / 2


def test_explained_variance():
    ret, mask = t([[1, 2, 3, 0]]), t([[1, 1, 1, 0]])
    assert pc.explained_variance(t([[1, 2, 3, 5]]), ret, mask) == pytest.approx(1.0)
    assert pc.explained_variance(t([[2, 2, 2, 5]]), ret, mask) == pytest.approx(0.0)
    assert math.isnan(pc.explained_variance(t([[0, 0]]), t([[1, 1]]), t([[1, 1]])))


def test_dual_clip_bounds_negative_advantages_by_hand():
    # A = -1, ratio 5, clip 0.2: PPO-clip loss max(5, 1.2) = 5; dual clip c = 3 bounds it by -c·A = 3.
    # A = +1, ratio 5: clipped -1.2 wins, dual clip does not apply.
    logp = torch.log(t([[5.0, 5.0]])).requires_grad_()
    adv, mask = t([[-1.0, 1.0]]), t([[1, 1]])
    plain, _ = pc.policy_loss(logp, torch.zeros(1, 2), adv, mask, clip=0.2)
    assert plain.item() == pytest.approx((5.0 - 1.2) / 2)
    loss, stats = pc.policy_loss(logp, torch.zeros(1, 2), adv, mask, clip=0.2, dual_clip=3.0)
    assert loss.item() == pytest.approx((3.0 - 1.2) / 2) and stats["dual_clipfrac"] == pytest.approx(0.5)
    loss.backward()
    assert torch.equal(logp.grad, t([[0.0, 0.0]]))  # the bound is a constant: no gradient from that token


def test_penalty_policy_loss_by_hand():
    # ratio 2, A = 1, coef 0.5: -2 + 0.5 * (2 - 1 - log 2); ratio 1, A = -1: 1 + 0 ; mean of the two
    logp = torch.log(t([[2.0, 1.0]])).requires_grad_()
    loss, stats = pc.penalty_policy_loss(logp, torch.zeros(1, 2), t([[1.0, -1.0]]), t([[1, 1]]), coef=0.5)
    kl0 = 1 - math.log(2)
    assert loss.item() == pytest.approx((-2 + 0.5 * kl0 + 1) / 2)
    assert stats["approx_kl"] == pytest.approx(kl0 / 2)
    loss.backward()
    # d/dlogp [-A·ρ + c·(ρ - 1 - logp)] / 2 = (-A·ρ + c·(ρ - 1)) / 2: token 0: (-2 + 0.5) / 2, token 1: (1 + 0) / 2
    assert torch.allclose(logp.grad, t([[-0.75, 0.5]]))


def test_running_moments_by_hand():
    m = pc.RunningMoments()
    m.update(t([1.0, 2.0, 3.0]))
    m.update(t([4.0, 5.0]))
    assert m.mean == pytest.approx(3.0) and m.std == pytest.approx(2.5 ** 0.5)  # of 1..5, Bessel
    assert torch.allclose(m.normalize(t([3.0, 3.0 + 2.5 ** 0.5])), t([0.0, 1.0]), atol=1e-6)
    assert pc.RunningMoments().std == 1.0  # nothing seen: identity scale


def test_ends_with_eos():
    ids = torch.tensor([[5, 2, 0], [5, 6, 7], [2, 0, 0], [0, 0, 0]])
    mask = t([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert pc.ends_with(ids, mask, [2]).tolist() == [True, False, True, False]


def test_policy_loss_aggregations_by_hand():
    """Two sequences of 2 and 1 real tokens, on-policy (ρ = 1), advantages 1, 2 | 3: per-token loss −A."""
    import functools

    from rewardkit.algorithms.grpo_is import aggregate_loss

    logp = torch.zeros(2, 2)
    adv, mask = t([[1, 2], [3, 0]]), t([[1, 1], [1, 0]])
    per = {"bnpo": -(1 + 2 + 3) / 3, "grpo": -((1 + 2) / 2 + 3) / 2, "dr_grpo": -(1 + 2 + 3) / (2 * 4),
           "dapo": -(1 + 2 + 3) / 6}
    for loss_type, expected in per.items():
        reduce = functools.partial(aggregate_loss, loss_type=loss_type, max_completion_length=4, num_items=6.0)
        loss, _ = pc.policy_loss(logp, logp, adv, mask, reduce=reduce)
        assert loss.item() == pytest.approx(expected), loss_type
    assert pc.policy_loss(logp, logp, adv, mask)[0].item() == pytest.approx(per["bnpo"])  # the default


def test_sequence_level_ratio_is_gspo_token():
    """GSPO-token: every token's ratio has the value s_i = exp(mean log ρ over the sequence) and the gradient
    s_i·∇log π(y_t); the clip acts on s_i."""
    old = torch.zeros(1, 3)
    logp = t([[math.log(1.5), math.log(1.5), 5.0]]).requires_grad_()  # third token is padding
    mask = t([[1, 1, 0]])
    ratio = pc.sequence_level_ratio(logp, old, mask)
    assert torch.allclose(ratio[0, :2], t([1.5, 1.5]))
    (g,) = torch.autograd.grad(ratio[0, 0], logp)
    assert torch.allclose(g, t([[1.5, 0.0, 0.0]]))
    # A = 1, clip 0.2: s = 1.5 > 1.2, clipped on both real tokens: no gradient, loss −1.2
    loss, stats = pc.policy_loss(logp, old, t([[1, 1, 1]]), mask, clip=0.2, level="sequence")
    assert loss.item() == pytest.approx(-1.2) and stats["clipfrac"] == pytest.approx(1.0)
    # at token level the same tokens are clipped too, but a sequence of ratios 1.1, 1.5 is not clipped as a whole
    logp2 = t([[math.log(1.1), math.log(1.5), 0.0]])
    seq_loss, _ = pc.policy_loss(logp2, old, t([[1, 1, 1]]), mask, clip=0.2, level="sequence")
    tok_loss, _ = pc.policy_loss(logp2, old, t([[1, 1, 1]]), mask, clip=0.2, level="token")
    s = math.exp((math.log(1.1) + math.log(1.5)) / 2)  # 1.2845 > 1.2: clipped
    assert seq_loss.item() == pytest.approx(-1.2) and tok_loss.item() == pytest.approx(-(1.1 + 1.2) / 2)
    assert s > 1.2
