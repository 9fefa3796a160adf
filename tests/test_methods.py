"""Methods against hand-computed values and invariants, on the tiny model (CPU)."""
import math

import pytest
import torch

from methods.flowgrpo import FlowGRPO, FlowGRPOConfig, filter_zero_advantage, grpo_loss
from methods.nft import nft_loss, old_policy_decay, optimality_weight


# ------------------------------------------------------------------------------------------------ NFT pieces
def test_optimality_weight_modes_by_hand():
    adv = torch.tensor([-7.0, -2.0, 0.0, 1.0, 6.0])
    assert optimality_weight(adv).tolist() == pytest.approx([0.0, 0.3, 0.5, 0.6, 1.0])
    assert optimality_weight(adv, mode="positive_only").tolist() == pytest.approx([0.5, 0.5, 0.5, 0.6, 1.0])
    assert optimality_weight(adv, mode="negative_only").tolist() == pytest.approx([0.0, 0.3, 0.5, 0.5, 0.5])
    assert optimality_weight(adv, mode="one_only").tolist() == pytest.approx([0.5, 0.5, 0.5, 0.6, 0.6])
    assert optimality_weight(adv, mode="binary").tolist() == pytest.approx([0.4, 0.4, 0.5, 0.6, 0.6])
    assert optimality_weight(adv, adv_clip_max=1.0).tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    assert optimality_weight(torch.tensor([-0.5, 3.0]), form="paper").tolist() == pytest.approx([0.25, 1.0])
    with pytest.raises(ValueError, match="adv_mode"):
        optimality_weight(adv, mode="nope")


def test_nft_loss_by_hand_one_pixel():
    # one sample, one pixel: x0 = 1, eps = 3, t = 0.5 -> x_t = 2
    x0, x_t, t = torch.tensor([[[[1.0]]]]), torch.tensor([[[[2.0]]]]), torch.tensor([0.5])
    v_th, v_old, v_ref = torch.tensor([[[[1.0]]]]), torch.tensor([[[[3.0]]]]), torch.tensor([[[[0.0]]]])
    r, b, c, kl_beta = torch.tensor([0.8]), 0.5, 5.0, 0.1
    v_pos = b * 1 + (1 - b) * 3  # 2.0
    v_neg = (1 + b) * 3 - b * 1  # 4.0
    e_pos = (2 - 0.5 * v_pos) - 1  # x0_pos - x0 = 0.0 -> clamped weight 1e-5, loss 0
    e_neg = (2 - 0.5 * v_neg) - 1  # -1.0 -> loss 1 / 1 = 1
    l_pos = e_pos**2 / max(abs(e_pos), 1e-5)
    l_neg = e_neg**2 / max(abs(e_neg), 1e-5)
    policy = c * (0.8 * l_pos + 0.2 * l_neg) / b
    kl = (1.0 - 0.0) ** 2
    loss, info = nft_loss(x0, x_t, t, v_th, v_old, v_ref, r, nft_beta=b, kl_beta=kl_beta, adv_clip_max=c)
    assert loss.item() == pytest.approx(policy + kl_beta * kl)
    assert info["policy_loss"].item() == pytest.approx(policy)
    assert info["kl_loss"].item() == pytest.approx(kl)
    assert info["negative_loss"].item() == pytest.approx(l_neg)
    assert loss.dtype == torch.float64  # the float64 adaptive weight makes the loss float64, as in the reference


def test_nft_loss_variants_by_hand():
    x0, x_t, t = torch.tensor([[[[1.0]]]]), torch.tensor([[[[2.0]]]]), torch.tensor([0.5])
    v_th, v_old = torch.tensor([[[[1.0]]]]), torch.tensor([[[[3.0]]]])
    r = torch.tensor([0.8])
    # plain velocity loss: target eps - x0 = 2; v_pos = v_th = 1 (b = 1), v_neg = 2*3 - 1 = 5
    loss, _ = nft_loss(x0, x_t, t, v_th, v_old, None, r, nft_beta=1.0, kl_beta=0.0, weighting="velocity")
    assert loss.item() == pytest.approx(5.0 * (0.8 * 1.0 + 0.2 * 9.0))
    # time weighting (1 - t) on x0-space error: x0_pos - x0 = 0.5, x0_neg - x0 = -1.5
    loss, _ = nft_loss(x0, x_t, t, v_th, v_old, None, r, nft_beta=1.0, kl_beta=0.0, weighting="time")
    assert loss.item() == pytest.approx(5.0 * 0.5 * (0.8 * 0.25 + 0.2 * 2.25))
    # no negative branch
    loss, _ = nft_loss(x0, x_t, t, v_th, v_old, None, r, nft_beta=1.0, kl_beta=0.0, weighting="velocity",
                       negative_branch=False)
    assert loss.item() == pytest.approx(5.0 * 0.8 * 1.0)


def test_r_half_pulls_theta_toward_old():
    torch.manual_seed(0)
    x0, eps = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    t = torch.rand(4) * 0.8 + 0.1
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    v_old = torch.randn_like(x0)
    v_th = (v_old + 0.5 * torch.randn_like(x0)).requires_grad_(True)
    loss, _ = nft_loss(x0, x_t, t, v_th, v_old, None, torch.full((4,), 0.5), kl_beta=0.0)
    loss.backward()
    # a small gradient step on v_theta moves it toward v_old
    moved = v_th.detach() - 1e-3 * v_th.grad
    assert (moved - v_old).norm() < (v_th.detach() - v_old).norm()
    # and the gradient direction has positive alignment with (v_theta - v_old)
    assert torch.sum(v_th.grad * (v_th.detach() - v_old)) > 0


def test_old_policy_decay_schedules():
    assert [old_policy_decay(s, 0) for s in (0, 10, 1000)] == [0.0, 0.0, 0.0]
    assert [old_policy_decay(s, 1) for s in (0, 1, 250, 500, 900)] == pytest.approx([0.0, 0.001, 0.25, 0.5, 0.5])
    assert [old_policy_decay(s, 2) for s in (0, 74, 75, 76, 175, 1000)] == pytest.approx([0, 0, 0, 0.0075, 0.75, 0.999])
    assert old_policy_decay(3, "const:0.9") == 0.9
    assert [old_policy_decay(s, "linear:0.01:0.5")
            for s in (0, 10, 49, 50, 400)] == pytest.approx([0, 0.1, 0.49, 0.5, 0.5])
    assert [old_policy_decay(s, "linear:0.001:0.5")
            for s in (1, 250, 900)] == [old_policy_decay(s, 1) for s in (1, 250, 900)]
    for bad in (7, "linear:0.01", "const:x", "linear:a:b"):
        with pytest.raises(ValueError, match="decay_type"):
            old_policy_decay(3, bad)


# ------------------------------------------------------------------------------------------------ FlowGRPO pieces
def test_grpo_loss_by_hand():
    lp, old = torch.tensor([0.0, 0.2]), torch.tensor([0.0, 0.0])
    adv = torch.tensor([1.0, -2.0])
    loss, info = grpo_loss(lp, old, adv, clip_range=0.1, adv_clip_max=5.0, mean=None, mean_ref=None, std=None, beta=0.0)
    r2 = math.exp(0.2)
    # sample 1: ratio 1 -> -1; sample 2: max(2 r2, 2 * 1.1) = 2 r2
    assert loss.item() == pytest.approx((-1.0 + 2 * r2) / 2, rel=1e-6)
    assert info["clipfrac"].item() == pytest.approx(0.5)
    assert info["approx_kl"].item() == pytest.approx(0.5 * (0.04 / 2), rel=1e-6)
    mean, mean_ref = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    std = torch.tensor([0.5, 1.0]).view(2, 1, 1, 1)
    loss2, info2 = grpo_loss(lp, old, adv, 0.1, 5.0, mean, mean_ref, std, beta=0.04)
    kl = (1 / (2 * 0.25) + 1 / 2) / 2
    assert info2["kl_loss"].item() == pytest.approx(kl)
    assert loss2.item() == pytest.approx(loss.item() + 0.04 * kl, rel=1e-6)


def test_zero_advantage_filter_keeps_multiple():
    g = torch.Generator().manual_seed(0)
    adv = torch.tensor([0.0, 1.0, -1.0, 0.0, 0.5, 0.0, 0.0, 0.0])
    kept = filter_zero_advantage(adv, 2, g)
    assert len(kept) % 2 == 0 and {1, 2, 4} <= set(kept.tolist()) and len(kept) == 4
    kept = filter_zero_advantage(torch.zeros(8), 4, g)
    assert len(kept) == 4


def test_zero_advantage_filter_on_per_step_rows():
    """TempFlow's rows carry one advantage per step: a row is kept when any of its steps is non-zero."""
    g = torch.Generator().manual_seed(0)
    adv = torch.tensor([[0.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
    kept = filter_zero_advantage(adv, 3, g)
    assert kept.tolist() == [1, 2, 4]
    kept = filter_zero_advantage(adv, 2, g)
    assert len(kept) == 4 and {1, 2, 4} <= set(kept.tolist())
