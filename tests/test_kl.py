"""KL estimators (bias, non-negativity, gradients), the registry road for a third-party estimator, and the
KL controllers, against exact values on small categorical distributions."""

import re
import types

import pytest
import torch

import rewardkit
import rewardkit.builtin
from rewardkit.algorithms import kl
from rewardkit.registry import Registry

P = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])  # policy
Q = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2])  # reference
EXACT = float((P * (P / Q).log()).sum())  # KL(P || Q) = 0.2803...
N = 200_000


def samples():
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(P, N, replacement=True, generator=g)
    return P.log()[x].view(1, -1), Q.log()[x].view(1, -1)  # (B=1, T=N)


@pytest.mark.parametrize("name", ["k1", "k3", "low_var_kl"])
def test_unbiased_estimators_match_exact_kl(name):
    logp, ref = samples()
    est = getattr(kl, name)(logp, ref)
    assert est.shape == logp.shape
    se = est.std().item() / N ** 0.5
    assert abs(est.mean().item() - EXACT) < 4 * se + 1e-4, (est.mean().item(), EXACT)


def test_k1_can_be_negative_others_cannot():
    logp, ref = samples()
    assert (kl.k1(logp, ref) < 0).any()  # tokens more likely under the reference
    for fn in (kl.k2, kl.k3, kl.low_var_kl, kl.abs_kl):
        assert (fn(logp, ref) >= 0).all()


def test_biased_estimators_are_biased_and_k3_has_lower_variance_than_k1():
    logp, ref = samples()
    assert abs(kl.k2(logp, ref).mean().item() - EXACT) > 0.01
    assert kl.abs_kl(logp, ref).mean().item() > EXACT + 0.05  # |r| >= r
    assert kl.k3(logp, ref).var() < kl.k1(logp, ref).var()


def test_low_var_kl_clamps():
    assert kl.low_var_kl(torch.tensor([[0.0]]), torch.tensor([[20.0]])).item() == 10.0


def test_low_var_kl_is_finite_where_exp_would_overflow():
    # r = ref - logp = 99: exp(99) overflows float32. The log-ratio is clamped first, so the value is the clamp (10)
    # and the gradient is finite (0: the clamp is active), not NaN (clamp after exp gave 0 * inf).
    logp = torch.tensor([[-100.0, -1.0]], requires_grad=True)
    out = kl.low_var_kl(logp, torch.tensor([[-1.0, -1.5]]))
    assert out[0, 0].item() == 10.0 and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(logp.grad).all()
    assert logp.grad[0, 0].item() == 0.0
    # inside the clamps it is k3, with k3's gradient 1 - exp(r), r = -0.5
    assert logp.grad[0, 1].item() == pytest.approx(1 - torch.exp(torch.tensor(-0.5)).item())


def _grad_of_mean(name, theta, x):
    """Mean over sampled tokens x of d estimator / d theta, samples held fixed (as in a KL penalty loss)."""
    logp_all = torch.log_softmax(theta, dim=0)
    est = getattr(kl, name)(logp_all[x].view(1, -1), Q.log()[x].view(1, -1))
    (g,) = torch.autograd.grad(est.mean(), theta)
    return g


def test_gradients_where_expected():
    # With sampled tokens held fixed: E[grad k2] = grad KL(P||Q) (Schulman 2020), E[grad k1] = E[grad log p] = 0,
    # E[grad k3] = grad KL(Q||P) (the forward KL; RLHF penalises the reverse one, KL(P||Q)).
    theta = P.log().clone().requires_grad_()
    g = torch.Generator().manual_seed(1)
    x = torch.multinomial(P, N, replacement=True, generator=g)
    forward = torch.autograd.grad((torch.softmax(theta, 0) * (torch.log_softmax(theta, 0) - Q.log())).sum(),
                                  theta)[0]
    reverse = torch.autograd.grad((Q * (Q.log() - torch.log_softmax(theta, 0))).sum(), theta)[0]
    assert torch.allclose(_grad_of_mean("k2", theta, x), forward, atol=0.01)
    assert torch.allclose(_grad_of_mean("k1", theta, x), torch.zeros(5), atol=0.01)
    assert torch.allclose(_grad_of_mean("k3", theta, x), reverse, atol=0.01)
    assert not torch.allclose(forward, reverse, atol=0.05)  # the test can tell the two apart


def test_every_builtin_is_registered_and_differentiable():
    reg = Registry(entry_points=False)
    reg.add_plugin(rewardkit.builtin, "builtin", dist="rewardkit")
    assert set(reg.names("kl_estimators")) == set(kl.ESTIMATORS)
    for name in reg.names("kl_estimators"):
        logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
        out = reg.kl_estimator(name)(logp, torch.tensor([[-1.5, -1.0]]))
        assert out.shape == (1, 2) and out.requires_grad


def test_the_docstring_table_lists_exactly_the_builtins():
    lines = kl.__doc__.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("=====")]  # above, below the header; closing
    rows = [re.match(r"[a-z][a-z0-9_]*", line).group(0) for line in lines[rules[1] + 1:rules[2]] if line[:1].isalpha()]
    assert rows == list(kl.ESTIMATORS)


def test_k3_plus_has_k3s_value_and_k2s_gradient():
    """verl's k3+: logged as k3, differentiated as k2 (a loss term without the ratio then follows ∇KL(π‖π_ref))."""
    logp, ref = torch.tensor([[-1.0, -2.5]], requires_grad=True), torch.tensor([[-1.5, -1.0]])
    value = kl.builtin_estimator("k3_plus")(logp, ref)
    assert torch.allclose(value, kl.k3(logp, ref))
    (g,) = torch.autograd.grad(value.sum(), logp)
    (g2,) = torch.autograd.grad(kl.k2(logp, ref).sum(), logp)
    assert torch.allclose(g, g2) and not torch.allclose(g, torch.autograd.grad(kl.k3(logp, ref).sum(), logp)[0])


def _fake_plugin():
    def squared_ratio(logp, ref_logp):
        return (torch.exp(logp - ref_logp) - 1) ** 2

    @rewardkit.hookimpl
    def register_kl_estimators(register):
        register("chi2", squared_ratio, description="chi-squared, from a third-party package")

    return types.SimpleNamespace(register_kl_estimators=register_kl_estimators), squared_ratio


def test_third_party_estimator_reaches_ppo_through_the_registry():
    from rewardkit.trainers.ppo import PPOStage

    plugin, fn = _fake_plugin()
    reg = Registry(entry_points=False)
    reg.add_plugin(rewardkit.builtin, "builtin", dist="rewardkit")
    reg.add_plugin(plugin, "fake_kl", dist="fake-kl-pkg")
    assert reg.kl_estimator("chi2") is fn
    assert reg.get("kl_estimators", "chi2").dist == "fake-kl-pkg"
    assert PPOStage.check_args({"kl_estimator": "chi2", "kl_placement": "loss"}, reg) == []
    # in the reward (PPO's default placement) only k1 regularises: any other estimator is refused with the reason
    (refused,) = PPOStage.check_args({"kl_estimator": "chi2"}, reg)
    assert "kl_estimator 'chi2' with kl_placement: reward" in refused and "E[∇k] vanishes only for k1" in refused
    problems = PPOStage.check_args({"kl_estimator": "chi3"}, reg)
    assert len(problems) == 1 and problems[0].startswith("kl_estimator: unknown kl_estimator 'chi3'")
    assert "did you mean 'chi2'" in problems[0]


# ---------------------------------------------------------------- controllers
def test_fixed_controller():
    c = kl.kl_controller(0.1)
    assert isinstance(c, kl.FixedKLController) and c.update(100.0) == 0.1


def test_halve_double_rule():
    c = kl.AdaptiveKLController(0.1, target=6.0, mode="halve_double")
    assert c.update(3.9) == pytest.approx(0.05)  # < 6/1.5 = 4: halve
    assert c.update(5.0) == pytest.approx(0.05)  # in [4, 9]: keep
    assert c.update(9.1) == pytest.approx(0.10)  # > 9: double


def test_proportional_controller_by_hand():
    c = kl.AdaptiveKLController(0.1, target=6.0, mode="proportional", horizon=10000)
    # e = clip(12/6 - 1, -0.2, 0.2) = 0.2; beta = 0.1 * (1 + 0.2 * 100/10000) = 0.1002
    assert c.update(12.0, n_steps=100) == pytest.approx(0.1002)
    # e = clip(5.4/6 - 1) = -0.1; beta = 0.1002 * (1 - 0.1 * 1000/10000) = 0.1002 * 0.99
    assert c.update(5.4, n_steps=1000) == pytest.approx(0.1002 * 0.99)


def test_controller_errors_name_the_problem():
    with pytest.raises(ValueError, match="target must be > 0"):
        kl.AdaptiveKLController(0.1, target=0.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        kl.AdaptiveKLController(0.1, target=1.0, mode="pid")
