"""Which KL estimators give an unbiased gradient of KL(π‖π_ref), with and without TRL's IS-ratio correction
(``use_bias_correction_kl``: the per-token KL term is multiplied by ρ = π_θ/π_old, ρ = 1 in value at θ = old).

Exact, not only sampled: on a 6-way categorical every sample of category x contributes the same gradient g(x),
so E[ĝ] = Σ_x π(x)·g(x) is computed exactly and compared with the exact ∇KL(π‖π_ref) = ∇Σ π log(π/π_ref). A
seeded 400k-sample estimate is also checked against its expectation within 5 standard errors, so the table in
``rewardkit/algorithms/kl.py`` and ``docs/ppo.md`` is what a training run would see on average.

Run ``python tests/test_kl_gradients.py`` to print the table.
"""

import pytest
import torch

from rewardkit.algorithms import kl

THETA = torch.tensor([1.0, 0.2, -0.5, 0.3, -1.2, 0.6], dtype=torch.float64)  # policy logits
REF = torch.softmax(torch.tensor([0.1, 0.4, 0.0, -0.6, 0.2, -0.1], dtype=torch.float64), 0)
N = 400_000


def exact_grad() -> torch.Tensor:
    theta = THETA.clone().requires_grad_()
    logp = torch.log_softmax(theta, 0)
    (g,) = torch.autograd.grad((logp.exp() * (logp - REF.log())).sum(), theta)
    return g  # (6,)


def per_category_grads(name: str, corrected: bool) -> torch.Tensor:
    """g(x) for each category x: gradient of the loss term of one sampled token x, (6 categories, 6 logits)."""
    rows = []
    for x in range(THETA.numel()):
        theta = THETA.clone().requires_grad_()
        logp = torch.log_softmax(theta, 0)[x].view(1, 1)
        term = kl.builtin_estimator(name)(logp, REF.log()[x].view(1, 1))
        if corrected:
            term = term * torch.exp(logp - logp.detach())  # TRL: per_token_kl * coef_1, ρ = π_θ/π_old
        (g,) = torch.autograd.grad(term.sum(), theta)
        rows.append(g)
    return torch.stack(rows)


def expected_grad(name: str, corrected: bool) -> torch.Tensor:
    return (torch.softmax(THETA, 0)[:, None] * per_category_grads(name, corrected)).sum(0)


def sampled_grad(name: str, corrected: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean gradient over N seeded samples and its standard error per component."""
    g = torch.Generator().manual_seed(seed)
    x = torch.multinomial(torch.softmax(THETA, 0), N, replacement=True, generator=g)
    per = per_category_grads(name, corrected)[x]  # (N, 6)
    return per.mean(0), per.std(0) / N ** 0.5


UNBIASED = {("k1", False): False, ("k2", False): True, ("k3", False): False, ("low_var_kl", False): False,
            ("k1", True): True, ("k2", True): False, ("k3", True): True, ("low_var_kl", True): True,
            ("k3_plus", False): True, ("k3_plus", True): False}


@pytest.mark.parametrize("name,corrected", list(UNBIASED), ids=[f"{n}-{'is' if c else 'plain'}" for n, c in UNBIASED])
def test_gradient_bias_table(name, corrected):
    truth = exact_grad()
    expected = expected_grad(name, corrected)
    bias = (expected - truth).norm().item()
    if UNBIASED[(name, corrected)]:
        assert bias < 1e-12, bias
    else:
        assert bias > 0.05 * truth.norm().item(), bias  # far from float error: a real bias
    mean, se = sampled_grad(name, corrected)
    assert ((mean - expected).abs() <= 5 * se + 1e-12).all()  # what 400k samples measure is that expectation


def test_the_declared_unbiased_estimators_are_the_measured_ones():
    """kl.LOSS_UNBIASED (what the config help and docs say) is this table's verdict, for every pair measured."""
    for (name, corrected), unbiased in UNBIASED.items():
        assert (name in kl.LOSS_UNBIASED[corrected]) == unbiased, (name, corrected)
    assert {(n, c) for c, names in kl.LOSS_UNBIASED.items() for n in names} <= set(UNBIASED)


def test_plain_k3_follows_the_forward_kl():
    """Without the correction k3's gradient is that of the *forward* KL(π_ref‖π), not the reverse KL(π‖π_ref)
    RLHF penalises (Schulman 2020; the reason TRL added use_bias_correction_kl)."""
    theta = THETA.clone().requires_grad_()
    (fwd,) = torch.autograd.grad((REF * (REF.log() - torch.log_softmax(theta, 0))).sum(), theta)
    assert torch.allclose(expected_grad("k3", False), fwd, atol=1e-12)
    assert torch.allclose(expected_grad("k1", False), torch.zeros(6, dtype=torch.float64), atol=1e-12)  # E[∇log π] = 0


def table() -> str:
    truth = exact_grad()
    lines = [f"|∇KL(π‖π_ref)| = {truth.norm():.4f}", "estimator  correction  |E[ĝ] − ∇KL|  sampled |ĝ − ∇KL| (400k)"]
    for name, corrected in UNBIASED:
        mean, _ = sampled_grad(name, corrected)
        bias = (expected_grad(name, corrected) - truth).norm()
        lines.append(f"{name:10s} {'IS ratio' if corrected else 'none':10s} {bias:12.4f}  {(mean - truth).norm():.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
