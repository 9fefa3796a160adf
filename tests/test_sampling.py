"""Schedule and samplers against independent expectations (spec tables, identities, hand-computed densities)."""
import math

import pytest
import torch

from rollout.samplers import dpm2_step, euler_step, sample, sde_step
from rollout.schedule import sigmas, to_timestep

SPEC_SIGMAS_10 = [1.0, .9601, .9133, .8577, .7904, .7073, .6022, .4649, .2780, .0089, 0.0]
SPEC_STD_T_10 = [3.506, 3.435, 2.273, 1.719, 1.359, 1.088, 0.861, 0.652, 0.434, 0.066]


def test_sigma_table_matches_spec():
    s = sigmas(10, shift=3.0)
    assert s.shape == (11,)
    assert torch.allclose(s, torch.tensor(SPEC_SIGMAS_10), atol=5e-5)


def test_integer_timestep_truncates_like_reference():
    assert to_timestep(0.9601293, 2, "cpu", integer=True).tolist() == [960, 960]
    assert to_timestep(0.0089286, 1, "cpu", integer=True).tolist() == [8]
    assert to_timestep(0.0089286, 1, "cpu", integer=False).item() == pytest.approx(8.9286, abs=1e-3)


def test_sde_std_table_matches_spec():
    s = sigmas(10)
    x = torch.zeros(1, 1, 2, 2)
    stds = [sde_step(x, x, s[i].item(), s[i + 1].item(), 0.7)[3].item() for i in range(10)]
    assert stds == pytest.approx(SPEC_STD_T_10, abs=2e-3)


def _linear_velocity(x, sigma):
    return 0.3 * x + torch.sin(torch.as_tensor(sigma, dtype=torch.float32)) * torch.ones_like(x)


def test_sde_with_zero_noise_equals_euler():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 8)
    s = sigmas(10)
    ode = sample(_linear_velocity, x, s, "euler")
    sde = sample(_linear_velocity, x, s, "sde", noise_level=0.0)
    assert torch.allclose(ode.x0, sde.x0, atol=1e-6)
    v = torch.randn_like(x)
    assert torch.allclose(sde_step(v, x, 0.7, 0.6, 0.0)[0], euler_step(v, x, 0.7, 0.6))


def test_sde_log_prob_is_gaussian_density_mean_over_chw():
    torch.manual_seed(1)
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    s, s_next, a = 0.7073, 0.6022, 0.7
    prev, logp, mean, std_t = sde_step(v, x, s, s_next, a, generator=torch.Generator().manual_seed(3))
    dt = s_next - s
    std_expected = a * math.sqrt(s / (1 - s))
    assert std_t.flatten().tolist() == pytest.approx([std_expected] * 2, rel=1e-6)
    mu = x * (1 + std_expected**2 / (2 * s) * dt) + v * (1 + std_expected**2 * (1 - s) / (2 * s)) * dt
    assert torch.allclose(mean, mu, atol=1e-6)
    normal = torch.distributions.Normal(mu, std_expected * math.sqrt(-dt))
    assert torch.allclose(logp, normal.log_prob(prev).mean(dim=(1, 2, 3)), atol=1e-5)
    # evaluating the stored sample reproduces its log-prob
    _, logp2, _, _ = sde_step(v, x, s, s_next, a, prev_sample=prev)
    assert torch.equal(logp, logp2)


def test_sde_step_accepts_per_sample_sigmas():
    x, v = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    out = sde_step(v, x, torch.tensor([0.7, 0.5]), torch.tensor([0.6, 0.4]), 0.7, prev_sample=x)
    a = sde_step(v[:1], x[:1], 0.7, 0.6, 0.7, prev_sample=x[:1])
    b = sde_step(v[1:], x[1:], 0.5, 0.4, 0.7, prev_sample=x[1:])
    assert torch.allclose(out[1], torch.cat([a[1], b[1]]))


def test_first_sde_step_uses_sigma_next_in_std():
    x = torch.zeros(1, 1, 1, 1)
    std = sde_step(x, x, 1.0, 0.9601, 0.7)[3].item()
    assert std == pytest.approx(0.7 * math.sqrt(1 / (1 - 0.9601)), rel=1e-4)


def test_cps_step_and_log_prob():
    torch.manual_seed(2)
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    s, s_next, a = 0.6, 0.45, 0.8
    prev, logp, mean, std = sde_step(v, x, s, s_next, a, kind="cps", generator=torch.Generator().manual_seed(0))
    std_e = s_next * math.sin(a * math.pi / 2)
    mu = (x - s * v) * (1 - s_next) + (x + (1 - s) * v) * math.sqrt(s_next**2 - std_e**2)
    assert torch.allclose(mean, mu, atol=1e-6)
    assert std.flatten()[0].item() == pytest.approx(std_e)
    assert torch.allclose(logp, (-(prev - mu) ** 2).mean(dim=(1, 2, 3)), atol=1e-6)
    # CPS with noise 0 keeps the coefficients of x0_hat and x1_hat: mean = x0 (1-s') + x1 s' = Euler step
    p0 = sde_step(v, x, s, s_next, 0.0, kind="cps")[0]
    assert torch.allclose(p0, euler_step(v, x, s, s_next), atol=1e-6)


def test_dpm2_first_step_is_euler_and_last_returns_x0():
    torch.manual_seed(0)
    s = [float(v) for v in sigmas(10)]
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    d0 = x - s[0] * v
    assert torch.allclose(dpm2_step(x, d0, None, s, 0), euler_step(v, x, s[0], s[1]), atol=1e-6)
    d9 = x - s[9] * v
    assert torch.equal(dpm2_step(x, d9, d0, s, 9), d9)
    # whole solve: the returned sample is the last data prediction
    calls = []

    def vel(x_, sig):
        calls.append((x_.clone(), sig))
        return _linear_velocity(x_, sig)

    out = sample(vel, x, torch.tensor(s), "dpm2")
    x_last, s_last = calls[-1]
    assert torch.allclose(out.x0, x_last - s_last * _linear_velocity(x_last, s_last), atol=1e-6)


def test_dpm2_second_order_step_by_hand():
    s = [1.0, 0.8, 0.5, 0.0]
    x = torch.tensor([[[[1.0]]]])
    d_prev, d_now = torch.tensor([[[[0.2]]]]), torch.tensor([[[[0.4]]]])
    lam = lambda q: math.log((1 - q) / q)  # noqa: E731
    # at step 1 the previous log-SNR is -inf: first order
    h = lam(0.5) - lam(0.8)
    first = 0.5 / 0.8 * 1.0 - 0.5 * (math.exp(-h) - 1) * 0.4
    assert dpm2_step(x, d_now, d_prev, s, 1).item() == pytest.approx(first, rel=1e-6)
    s2 = [1.0, 0.9, 0.8, 0.5, 0.0]
    h = lam(0.5) - lam(0.8)
    r0 = (lam(0.8) - lam(0.9)) / h
    d = 0.4 + 0.5 * (0.4 - 0.2) / r0
    second = 0.5 / 0.8 * 1.0 - 0.5 * (math.exp(-h) - 1) * d
    assert dpm2_step(x, d_now, d_prev, s2, 2).item() == pytest.approx(second, rel=1e-6)


def test_sde_window_only_stochastic_inside():
    x = torch.randn(2, 1, 4, 4)
    out = sample(_linear_velocity, x, sigmas(10), "cps", noise_level=0.8, sde_window=(2, 5),
                 generator=torch.Generator().manual_seed(0))
    assert out.stochastic == [i in (2, 3, 4) for i in range(10)]
    assert all(torch.isnan(lp).all() for lp, st in zip(out.log_probs, out.stochastic) if not st)
    assert all(torch.isfinite(lp).all() for lp, st in zip(out.log_probs, out.stochastic) if st)


def test_sde_trajectory_chains():
    x = torch.randn(2, 1, 4, 4)
    out = sample(_linear_velocity, x, sigmas(4), "sde", generator=torch.Generator().manual_seed(0))
    assert len(out.latents) == 4
    for i in range(3):
        assert torch.equal(out.next_latents[i], out.latents[i + 1])
    assert torch.equal(out.next_latents[-1], out.x0)


def test_sde_step_parts_match_the_formula():
    """sde_step's Gaussian (mean, std_t, std_t sqrt(-dt)) and its log-density, as the shared helpers give them."""
    from rollout.samplers import sde_moments, sde_std_t

    torch.manual_seed(4)
    x, v = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    s, s_next = torch.full((2, 1, 1, 1), 1.0), torch.full((2, 1, 1, 1), 0.9601)
    mean, std_t, gauss = sde_moments(v, x, s, s_next, 0.7)
    assert std_t.flatten().tolist() == pytest.approx([0.7 * math.sqrt(1 / (1 - 0.9601))] * 2, rel=1e-5)
    assert gauss.flatten().tolist() == pytest.approx((std_t * math.sqrt(0.0399)).flatten().tolist(), rel=1e-5)
    assert torch.equal(sde_std_t(s, s_next, 0.7), std_t)
    prev, _, mean2, std2 = sde_step(v, x, 1.0, 0.9601, 0.7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mean, mean2) and torch.equal(std_t, std2)
