"""GRPO-Guard: RatioNorm's ratio and bias, the reweighted loss, stored step means and the variant end to end (against
hand-computed values from ../shared/spec/grpo-guard.md and invariants; tiny model, CPU)."""
import math

import pytest
import torch

from bench import records
from bench.config import resolve
from bench.cost import passes_per_image
from bench.trainer import Trainer
from methods.flowgrpo import grpo_loss, guard_loss, guard_ratio
from rollout.samplers import sample, sde_step
from rollout.schedule import sigmas
from tests import test_trainer
from tests.tiny import tiny_config, tiny_policy


@pytest.fixture(autouse=True)
def _recordable(monkeypatch):
    """Runs of the variant can be recorded even before bench.records.KNOWN_METHODS lists it."""
    if "grpo-guard" not in records.KNOWN_METHODS:
        monkeypatch.setattr(records, "KNOWN_METHODS", (*records.KNOWN_METHODS, "grpo-guard"))


def _step_pair(seed: int, s: float, s_next: float, batch: int = 4, shift: float = 0.1):
    """An old and a perturbed policy at one SDE step: (x' drawn from the old step, the old and new log-probs and
    means, std_t, sqrt(dt), the draw's eps)."""
    g = torch.Generator().manual_seed(seed)
    x, v_old = torch.randn(batch, 3, 8, 8, generator=g), torch.randn(batch, 3, 8, 8, generator=g)
    v_new = v_old + shift * torch.randn(batch, 3, 8, 8, generator=g) * torch.linspace(0.5, 2, batch).view(-1, 1, 1, 1)
    prev, lp_old, mu_old, std = sde_step(v_old, x, s, s_next, 0.7, generator=g)
    _, lp_new, mu_new, _ = sde_step(v_new, x, s, s_next, 0.7, prev_sample=prev)
    sqrt_dt = torch.full((batch,), math.sqrt(s - s_next))
    eps = (prev - mu_old) / (std * math.sqrt(s - s_next))
    return lp_new, lp_old, mu_new, mu_old, std, sqrt_dt, eps


def test_guard_ratio_is_one_on_policy():
    _, lp_old, _, mu_old, std, sqrt_dt, _ = _step_pair(0, 0.7073, 0.6022)
    assert torch.equal(guard_ratio(lp_old, lp_old, mu_old, mu_old, std, sqrt_dt), torch.ones(4))
    assert torch.equal(guard_ratio(lp_old, lp_old, mu_old, mu_old, std, sqrt_dt, per_sample_bias=True), torch.ones(4))


def test_guard_bias_is_one_number_per_micro_batch_unless_per_sample():
    lp, lp_old, mu, mu_old, std, sqrt_dt, eps = _step_pair(1, 0.7073, 0.6022)
    g = std.mean().item() * math.sqrt(0.7073 - 0.6022)
    d = mu - mu_old
    b_each = (d**2).mean(dim=(1, 2, 3)) / (2 * g**2)
    b_all = (d**2).mean() / (2 * g**2)
    assert b_each.max() > 2 * b_each.min()  # the samples' biases differ, so the two forms must too
    per_sample = guard_ratio(lp, lp_old, mu, mu_old, std, sqrt_dt, per_sample_bias=True)
    batch_mean = guard_ratio(lp, lp_old, mu, mu_old, std, sqrt_dt)
    assert torch.allclose(per_sample, torch.exp((lp - lp_old + b_each) * g), rtol=1e-6)
    assert torch.allclose(batch_mean, torch.exp((lp - lp_old + b_all) * g), rtol=1e-6)
    # per sample, the normalised log-ratio is exactly mean_CHW(eps * D): the bias cancels the squared-shift term
    assert torch.allclose(per_sample.log(), (eps * d).mean(dim=(1, 2, 3)), atol=1e-6)
    assert torch.allclose(batch_mean.log(), (eps * d).mean(dim=(1, 2, 3)) + g * (b_all - b_each), atol=1e-6)


def test_normalised_log_ratio_is_centred_at_every_step():
    """The paper's point: the raw log-ratio's mean drifts with the noise level (-|D|^2 / 2g^2) and its spread grows
    as g shrinks (here 370x from step 0 to step 8); RatioNorm's is centred, its spread far more even (8x)."""
    s = [float(v) for v in sigmas(10)]
    spreads = []
    for j in range(9):
        lp, lp_old, mu, mu_old, std, sqrt_dt, _ = _step_pair(10 + j, s[j], s[j + 1], batch=256, shift=2.0)
        raw = lp - lp_old
        normalised = guard_ratio(lp, lp_old, mu, mu_old, std, sqrt_dt, per_sample_bias=True).log()
        sem = lambda t: t.std() / math.sqrt(t.numel())  # noqa: E731
        assert raw.mean() < -5 * sem(raw), j
        assert normalised.mean().abs() < 4 * sem(normalised), j
        spreads.append((raw.std().item(), normalised.std().item()))
    raw_range, norm_range = (max(v) / min(v) for v in zip(*spreads))
    assert raw_range > 10 * norm_range, spreads


def test_guard_loss_by_hand():
    lp, old = torch.tensor([0.0, 0.2]), torch.zeros(2)
    adv = torch.tensor([1.0, -2.0])
    mean = torch.zeros(2, 1, 2, 2)
    std, sqrt_dt = torch.full((2, 1, 1, 1), 2.0), torch.full((2,), 0.5)  # g = 1, dt = 0.25
    # RatioNorm with mean = old mean: b = 0, ratio = exp(0.2 g) = exp(0.2); clip 0.1 as in test_grpo_loss_by_hand
    loss, info = guard_loss(lp, old, adv, 0.1, 5.0, mean, mean.clone(), std, sqrt_dt, None, 0.0)
    r2 = math.exp(0.2)
    assert loss.item() == pytest.approx((-1.0 + 2 * r2) / 2 / 0.25, rel=1e-6)
    assert info["policy_loss"].item() == pytest.approx(loss.item())
    assert (info["clipfrac"].item(), info["clipfrac_gt_one"].item(), info["clipfrac_lt_one"].item()) == (0.5, 0.5, 0)
    assert info["approx_kl"].item() == pytest.approx(0.5 * 0.04 / 2, rel=1e-6)
    plain, _ = grpo_loss(lp, old, adv, 0.1, 5.0, None, None, None, 0.0)
    no_reweight, _ = guard_loss(lp, old, adv, 0.1, 5.0, mean, mean.clone(), std, sqrt_dt, None, 0.0, reweight=False)
    assert no_reweight.item() == pytest.approx(plain.item())  # g = 1 and b = 0: RatioNorm is the identity here
    reweight_only, _ = guard_loss(lp, old, adv, 0.1, 5.0, mean, None, torch.full((2, 1, 1, 1), 0.3), sqrt_dt, None, 0.0,
                                  ratio_norm=False)
    assert reweight_only.item() == pytest.approx(plain.item() / 0.25)
    # a shifted mean: (mean - old)^2 = 0.25, g = 0.5 -> b = 0.25 / (2 * 0.25) = 0.5, ratio exp((0 + 0.5) 0.5)
    shifted = torch.full((2, 1, 2, 2), 0.5)
    _, info = guard_loss(torch.zeros(2), old, adv, 10.0, 5.0, shifted, mean, torch.ones(2, 1, 1, 1), sqrt_dt, None,
                         0.0, reweight=False)
    assert info["ratio_mean"].item() == pytest.approx(math.exp(0.25), rel=1e-6)
    # KL on means with std_t, not reweighted
    ref = torch.ones(2, 1, 2, 2)
    with_kl, info = guard_loss(lp, old, adv, 0.1, 5.0, mean, mean.clone(), std, sqrt_dt, ref, 0.5)
    assert info["kl_loss"].item() == pytest.approx(1 / (2 * 4.0))
    assert with_kl.item() == pytest.approx(loss.item() + 0.5 / 8, rel=1e-6)


def test_sampler_keeps_the_step_means():
    x = torch.randn(2, 1, 4, 4)
    vel = lambda x_, s: 0.3 * x_ + s  # noqa: E731
    out = sample(vel, x, sigmas(6), "sde", generator=torch.Generator().manual_seed(0), keep_means=True)
    assert len(out.means) == 6
    for i, (xi, nxt, mu) in enumerate(zip(out.latents, out.next_latents, out.means)):
        s, s_next = float(sigmas(6)[i]), float(sigmas(6)[i + 1])
        assert torch.equal(mu, sde_step(vel(xi, s), xi, s, s_next, 0.7, prev_sample=nxt)[2])
    ode = sample(vel, x, sigmas(6), "sde", noise_level=0.7, sde_window=(0, 2), keep_means=True,
                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(ode.means[3], ode.next_latents[3])  # a deterministic step's mean is its output
    assert sample(vel, x, sigmas(6), "sde", generator=torch.Generator().manual_seed(0)).means == []


def test_variant_presets_cost_and_refusals(tmp_path):
    cfg = resolve({"method": "grpo-guard", "world": "sd3", "task": "pickscore"}, None, [])
    f = cfg.flowgrpo
    assert (f.ratio_norm, f.grad_reweight, f.kl_beta, f.global_std, f.guard_per_sample_bias) == (True, True, 0, False,
                                                                                                 False)
    assert (f.clip_range, cfg.optim.lr) == (4e-6, 1e-4)
    geneval = resolve({"method": "grpo-guard", "world": "sd3", "task": "geneval"}, None, [])
    assert geneval.flowgrpo.clip_range == 2e-6 and geneval.images_per_prompt == 24
    counts = passes_per_image("grpo-guard", geneval)  # no reference forward: 20 + 18 + 2 x 18 = 74 (FlowGRPO: 92)
    assert (counts.rollout_forward, counts.train_forward, counts.train_backward, counts.forward_equivalents) == (
        20, 18, 18, 74)
    with pytest.raises(ValueError, match="solver=sde"):
        Trainer(tiny_config("grpo-guard", tmp_path, "flowgrpo.solver=cps"), policy=tiny_policy())


def test_rollout_stores_old_means_and_the_ratio_is_one_on_policy(tmp_path):
    tr = Trainer(tiny_config("grpo-guard", tmp_path), policy=tiny_policy())
    batch, _ = tr.rollout(0)
    tr.advantages(batch)
    assert batch.means.shape == batch.latents.shape
    idx = torch.arange(tr.cfg.rollout_batch_size)  # the first sampling batch, same batch size
    cond = (batch.embeds[idx], batch.pooled[idx])
    for j in tr.method.trained_steps(batch):
        log_prob, mean, std = tr.method._step_log_prob(batch, idx, j, cond, grad=False)
        sqrt_dt = torch.sqrt(batch.sigmas[j] - batch.sigmas[j + 1]).expand(len(idx))
        ratio = guard_ratio(log_prob, batch.log_probs[idx, j], mean, batch.means[idx, j], std, sqrt_dt)
        assert (ratio - 1).abs().max() < 1e-6, (j, ratio)
        assert torch.allclose(mean, batch.means[idx, j], atol=1e-5)
    tr.close()


def test_one_epoch_end_to_end_records(tmp_path):
    test_trainer.test_one_epoch_end_to_end_records(tmp_path, "grpo-guard")


def test_resume_is_exact(tmp_path):
    test_trainer.test_resume_is_exact(tmp_path, "grpo-guard")


def test_grpo_guard_raises_a_learnable_reward(tmp_path):
    """FlowGRPO's brightness settings (lr 1e-2, no CFG, clip 1e-2) on the shipped shapes model, with RatioNorm and
    the 1/dt reweight; measured when written: 0.719 -> 0.859 in 8 epochs."""
    test_trainer.test_methods_raise_a_learnable_reward(tmp_path, "grpo-guard", [
        "optim.lr=1e-2", "flowgrpo.guidance=1.0", "flowgrpo.clip_range=1e-2"], 0.02)
