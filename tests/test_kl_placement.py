"""Where a KL estimate goes decides whether it regularises (``kl_placement``; rewardkit/algorithms/kl.py).

Exact expectations, no sampling. A 6-armed bandit (R = [1, 0, 0, 0, 0, 0.5], uniform reference) is trained by
gradient ascent on E[R] minus the KL term, placed as PPO and grpo_is place it, until the gradient vanishes; the
KL(π‖π_ref) it settles at is compared with the regularised optimum π* ∝ π_ref·exp(R/β). A 2-token tabular
policy shows what the per-token loss term leaves out of the sequence KL's gradient.

``python tests/test_kl_placement.py`` prints both tables (quoted in the kl.py docstring and docs/ppo.md).
"""

import itertools
import math

import pytest
import torch

from rewardkit.algorithms import kl
from rewardkit.algorithms.grpo_is import kl_reward_to_go

R = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.5], dtype=torch.float64)
REF = torch.full((6,), 1 / 6, dtype=torch.float64)


def optimum_kl(beta: float) -> float:
    p = torch.softmax(REF.log() + R / beta, 0)
    return (p * (p / REF).log()).sum().item()


def converged_kl(name: str, placement: str, ratio: bool, beta: float, steps: int = 4000, lr: float = 1.0) -> float:
    """KL(π‖π_ref) where ascent on the bandit's surrogate stops (NaN if the policy ran off to a corner)."""
    theta = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    est = kl.builtin_estimator(name)
    for _ in range(steps):
        logp = torch.log_softmax(theta, 0)
        p = logp.exp().detach()
        k = est(logp, REF.log())
        rho = torch.exp(logp - logp.detach())  # π_θ/π_old, 1 in value
        if placement == "reward":  # detached penalty inside the return: E[(R − β·k)·∇log π]
            surrogate = (p * logp * (R - beta * k).detach()).sum()
        else:  # the loss term β·k(·ρ), differentiated
            surrogate = (p * rho * R).sum() - beta * (p * (rho * k if ratio else k)).sum()
        (g,) = torch.autograd.grad(surrogate, theta)
        if not torch.isfinite(g).all():
            return float("nan")
        with torch.no_grad():
            theta += lr * g
        if g.norm() < 1e-10:
            break
    p = torch.softmax(theta.detach(), 0)
    return (p * (p / REF).log()).sum().item()


# (estimator, placement, ratio, β) -> whether it reaches the regularised optimum
ROWS = {
    ("k1", "reward", False, 0.5): True, ("k2", "reward", False, 0.5): False, ("k3", "reward", False, 0.5): False,
    ("low_var_kl", "reward", False, 0.5): False, ("k3_plus", "reward", False, 0.5): False,
    ("k1", "reward", False, 2.0): True, ("k2", "reward", False, 2.0): False, ("low_var_kl", "reward", False, 2.0): False,
    ("k1", "loss", True, 0.5): True, ("k3", "loss", True, 0.5): True, ("low_var_kl", "loss", True, 0.5): True,
    ("k2", "loss", True, 0.5): False, ("k3_plus", "loss", True, 2.0): False,
    ("k2", "loss", False, 0.5): True, ("k3_plus", "loss", False, 0.5): True, ("k3", "loss", False, 0.5): False,
    ("low_var_kl", "loss", False, 0.5): False, ("k1", "loss", False, 0.5): False,
}


def _id(row):
    name, placement, ratio, beta = row
    return f"{name}-{placement}{'-ratio' if ratio else ''}-beta{beta}"


@pytest.mark.parametrize("row", list(ROWS), ids=[_id(r) for r in ROWS])
def test_bandit_reaches_the_regularised_optimum_only_where_the_gradient_is_right(row):
    reached = converged_kl(*row)
    target = optimum_kl(row[3])
    if ROWS[row]:
        assert abs(reached - target) < 1e-4 * max(1.0, target), (reached, target)
    else:  # a real miss: off by more than 10% of the optimum's KL (or diverged)
        assert math.isnan(reached) or abs(reached - target) > 0.1 * target, (reached, target)


def test_k1_penalty_in_the_reward_regularises_where_k3_does_not():
    """The defect PPO's old default had: k3 in the reward runs to the unregularised argmax (KL → log 6)."""
    k3 = converged_kl("k3", "reward", False, 0.5, steps=400)
    assert math.isnan(k3) or k3 > 1.5
    assert abs(converged_kl("k1", "reward", False, 0.5) - optimum_kl(0.5)) < 1e-4


# ---------------------------------------------------------------- the sequence KL's gradient
V = 3
_g = torch.Generator().manual_seed(0)
A0, B0 = torch.randn(V, generator=_g, dtype=torch.float64), torch.randn(V, V, generator=_g, dtype=torch.float64)
REF_A = torch.log_softmax(torch.randn(V, generator=_g, dtype=torch.float64), 0)
REF_B = torch.log_softmax(torch.randn(V, V, generator=_g, dtype=torch.float64), 1)


def sequence_gradient(kind: str, name: str = "k1") -> torch.Tensor:
    """Expected gradient w.r.t. the policy's logits (first-token a, second-token B[y1]) over all 9 sequences."""
    a, b = A0.clone().requires_grad_(), B0.clone().requires_grad_()
    la, lb = torch.log_softmax(a, 0), torch.log_softmax(b, 1)
    est = kl.builtin_estimator(name)
    total = 0.0
    for y1, y2 in itertools.product(range(V), range(V)):
        logp = torch.stack([la[y1], lb[y1, y2]]).view(1, 2)  # (1, T=2)
        ref = torch.stack([REF_A[y1], REF_B[y1, y2]]).view(1, 2)
        p = logp.sum().exp()
        if kind == "exact":  # ∇ E[Σ_t log π/π_ref]
            total = total + p * (logp - ref).sum()
        elif kind == "loss_ratio":  # Σ_t k_t·ρ_t, TRL's and grpo_is's loss term
            total = total + p.detach() * (est(logp, ref) * torch.exp(logp - logp.detach())).sum()
        elif kind == "loss":  # Σ_t k_t
            total = total + p.detach() * est(logp, ref).sum()
        elif kind == "reward_to_go":  # grpo_is kl_placement reward: A_t = −Σ_{t'≥t} k1_{t'} (Â = 0), β = 1
            adv = kl_reward_to_go(torch.zeros(1), est(logp, ref), torch.ones(1, 2), 1.0)
            total = total - p.detach() * (logp * adv.detach()).sum()
    return torch.cat([g.flatten() for g in torch.autograd.grad(total, (a, b))])


def test_sequence_kl_gradient():
    """k1 as a reward-to-go is the exact gradient of the sequence KL; Σ_t k_t·ρ_t as a loss is not, for any
    estimator (it holds each token's state fixed), and k3 without ρ is further off."""
    truth = sequence_gradient("exact")
    assert (sequence_gradient("reward_to_go") - truth).norm() < 1e-12
    biases = {n: (sequence_gradient("loss_ratio", n) - truth).norm().item() for n in ("k1", "k3", "low_var_kl")}
    assert all(b > 0.05 * truth.norm().item() for b in biases.values()), biases
    assert max(biases.values()) - min(biases.values()) < 1e-9  # the same missing cross-token part
    assert (sequence_gradient("loss", "k3") - truth).norm() > 2 * biases["k1"]


def tables() -> str:
    lines = ["bandit: KL(π‖π_ref) reached (optimum)"]
    for beta in (0.5, 2.0):
        lines.append(f"β = {beta} (optimum {optimum_kl(beta):.4f})")
        for name in ("k1", "k2", "k3", "low_var_kl", "k3_plus"):
            cells = [f"{converged_kl(name, pl, r, beta):.4f}" for pl, r in (("reward", False), ("loss", True),
                                                                               ("loss", False))]
            lines.append(f"  {name:10} reward {cells[0]:>8}  loss·ρ {cells[1]:>8}  loss {cells[2]:>8}")
    truth = sequence_gradient("exact")
    lines.append(f"2-token policy: |∇KL_seq| = {truth.norm():.4f}")
    for kind, name in (("loss_ratio", "k1"), ("loss_ratio", "k3"), ("loss", "k3"), ("loss", "k2"),
                       ("reward_to_go", "k1")):
        lines.append(f"  {kind:12} {name:4} bias {(sequence_gradient(kind, name) - truth).norm():.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(tables())
