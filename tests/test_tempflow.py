"""TempFlow-GRPO: noise-aware weights, per-step advantages, its loss, the branching sampler and the method end to end
(against hand-computed values from ../shared/spec/tempflow-grpo.md and invariants; tiny model, CPU)."""
import math

import pytest
import torch

from bench import records
from bench.config import resolve
from bench.cost import passes_per_image
from bench.records import load_results
from bench.trainer import Trainer
from methods.flowgrpo import grpo_loss
from methods.tempflow import noise_aware_weight, step_advantages, tempflow_loss
from rollout.prompts import GroupedSampler
from rollout.samplers import branch_cost, sample, sample_branches, sde_step
from rollout.schedule import sigmas
from tests import test_trainer
from tests.tiny import tiny_config, tiny_policy

SPEC_WEIGHTS_10 = [1.575, 1.672, 1.206, 1.003, 0.882, 0.794, 0.718, 0.635, 0.507]  # steps 0..8, N = 10, a = 0.7


# ------------------------------------------------------------------------------------------------ pieces
def test_noise_aware_weights_on_the_sigma_table_by_hand():
    s = [float(v) for v in sigmas(10)]
    first = 2.25 * 0.7 * math.sqrt(s[0] / (1 - s[1])) * math.sqrt(s[0] - s[1])  # s~ = sigma_1 at sigma = 1
    last = 2.25 * 0.7 * math.sqrt(s[8] / (1 - s[8])) * math.sqrt(s[8] - s[9])
    assert noise_aware_weight(s[0], s[1]).item() == pytest.approx(first, rel=1e-6)
    assert noise_aware_weight(s[8], s[9]).item() == pytest.approx(last, rel=1e-6)
    table = torch.cat([noise_aware_weight(s[j], s[j + 1]) for j in range(9)])
    assert table.tolist() == pytest.approx(SPEC_WEIGHTS_10, abs=2e-3)
    assert table.mean().item() == pytest.approx(0.999, abs=1e-3)  # what the scale 2.25 is for
    per_sample = noise_aware_weight(torch.tensor(s[:9]), torch.tensor(s[1:10]), scale=1.0)
    assert per_sample.dtype == torch.float32 and torch.allclose(per_sample, table / 2.25)
    assert noise_aware_weight(s[3], s[4], noise_level=0.35).item() == pytest.approx(table[3].item() / 2, rel=1e-6)


def test_step_advantages_per_group_and_column_by_hand():
    rewards = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 8.0], [7.0, 8.0]])
    groups = ["a", "a", "b", "b"]
    adv = step_advantages(rewards, groups)
    e = 1e-4
    assert adv.dtype == torch.float64
    assert adv[:, 0].tolist() == pytest.approx([-1 / (1 + e), 1 / (1 + e), -1 / (1 + e), 1 / (1 + e)])
    assert adv[:, 1].tolist() == pytest.approx([-1 / (1 + e), 1 / (1 + e), 0.0, 0.0])  # group b: equal rewards
    col1_std = math.sqrt(((2 - 5.5) ** 2 + (4 - 5.5) ** 2 + 2 * (8 - 5.5) ** 2) / 4)
    glob = step_advantages(rewards, torch.tensor([0, 0, 1, 1]), global_std=True)
    assert glob[:, 1].tolist() == pytest.approx([-1 / (col1_std + e), 1 / (col1_std + e), 0.0, 0.0])
    assert glob[:, 0].tolist() == pytest.approx([v / (math.sqrt(5) + e) for v in (-1, 1, -1, 1)])


def test_tempflow_loss_weights_the_policy_terms_by_hand():
    lp, old = torch.tensor([0.0, 0.2, 0.0]), torch.zeros(3)
    adv, w = torch.tensor([1.0, -2.0, 7.0]), torch.tensor([0.5, 0.5, 2.0])
    loss, info = tempflow_loss(lp, old, adv, w, 0.1, 5.0, None, None, None, 0.0)
    r2 = math.exp(0.2)
    # row 1: -0.5; row 2: max(0.5*2 r2, 0.5*2*1.1) = r2; row 3: A clipped to 5 first, then x 2 -> -10
    assert loss.item() == pytest.approx((-0.5 + r2 - 10.0) / 3, rel=1e-6)
    assert info["clipfrac"].item() == pytest.approx(1 / 3)
    same, _ = tempflow_loss(lp, old, adv, torch.ones(3), 0.1, 5.0, None, None, None, 0.0)
    plain, _ = grpo_loss(lp, old, adv, 0.1, 5.0, None, None, None, 0.0)
    assert same.item() == pytest.approx(plain.item())
    mean, mean_ref, std = torch.ones(3, 1, 2, 2), torch.zeros(3, 1, 2, 2), torch.full((3, 1, 1, 1), 0.5)
    with_kl, info = tempflow_loss(lp, old, adv, w, 0.1, 5.0, mean, mean_ref, std, 0.004)
    assert info["kl_loss"].item() == pytest.approx(2.0)  # 1 / (2 * 0.25), the KL is not weighted
    assert with_kl.item() == pytest.approx(loss.item() + 0.004 * 2.0, rel=1e-6)


# ------------------------------------------------------------------------------------------------ branching sampler
def _velocity(x, sigma):
    return 0.3 * x + torch.sin(torch.as_tensor(sigma, dtype=torch.float32)) * torch.ones_like(x)


def test_branch_shapes_and_a_noiseless_branch_is_the_ode_trunk():
    x, k = torch.randn(3, 2, 4, 4), 4
    out = sample_branches(_velocity, x, sigmas(10), k, noise_level=0.0)
    s = 9  # len(sigmas) - 2
    assert out.latents.shape == (3, s, 2, 4, 4) and out.next_latents.shape == (3 * k, s, 2, 4, 4)
    assert out.log_probs.shape == (3 * k, s) and out.x0.shape == (s, 3 * k, 2, 4, 4)
    ode = sample(_velocity, x, sigmas(10), "euler", keep_trajectory=True)
    assert torch.equal(out.latents, torch.stack(ode.latents[:s], 1))  # the trunk is the ODE's trajectory
    for r in range(3 * k):  # row r belongs to sample r // K
        assert torch.equal(out.next_latents[r], torch.stack(ode.next_latents[:s], 1)[r // k])
        assert torch.allclose(out.x0[:, r], ode.x0[r // k].expand(s, -1, -1, -1), atol=1e-6)


def test_branch_rows_belong_to_their_trunk_sample():
    x, k, sig = torch.randn(3, 2, 4, 4), 3, sigmas(5)
    noise = torch.randn(4, 3 * k, 2, 4, 4)  # 5 steps: 4 branch points
    out = sample_branches(_velocity, x, sig, k, noise=noise)
    s = [float(v) for v in sig]
    for r in range(3 * k):
        for i in range(4):
            xi = out.latents[r // k, i:i + 1]
            _, log_prob, mean, std_t = sde_step(_velocity(xi, s[i]), xi, s[i], s[i + 1], 0.7,
                                                prev_sample=out.next_latents[r:r + 1, i])
            by_hand = mean + std_t * math.sqrt(s[i] - s[i + 1]) * noise[i, r]
            assert torch.allclose(out.next_latents[r, i], by_hand[0], atol=1e-6), (r, i)
            assert out.log_probs[r, i].item() == pytest.approx(log_prob.item(), abs=1e-5)
            assert torch.allclose(out.x0[i, r],
                                  sample(_velocity, out.next_latents[r:r + 1, i], s[i + 1:], "euler").x0[0])


def test_per_sample_generators_make_branches_independent_of_the_batch():
    x, k, sig = torch.randn(2, 1, 4, 4), 3, sigmas(5)
    gens = lambda *seeds: [torch.Generator().manual_seed(v) for v in seeds]  # noqa: E731
    both = sample_branches(_velocity, x, sig, k, generator=gens(10, 11))
    alone = sample_branches(_velocity, x[1:], sig, k, generator=gens(11))
    assert torch.equal(both.next_latents[k:], alone.next_latents)
    assert torch.equal(both.x0[:, k:], alone.x0)
    assert not torch.equal(both.next_latents[:k], alone.next_latents)
    assert not torch.equal(both.next_latents[0], both.next_latents[1])  # the K branches of a sample differ


def test_branch_cost_counts_the_velocity_rows_and_images():
    rows, finals = [], []

    def counting(x_, s):
        rows.append(x_.shape[0])
        return _velocity(x_, s)

    sample_branches(counting, torch.randn(2, 1, 4, 4), sigmas(10), 6, on_branch=lambda i, x0: finals.append(i))
    assert branch_cost(10, 6) == (9 + 6 * 45, 54) == (279, 54)  # the spec's 279 forwards, 54 images per noise
    assert sum(rows) == 2 * 279 and finals == list(range(9))
    rows.clear()
    out = sample_branches(counting, torch.randn(2, 1, 4, 4), sigmas(10), 6, branch_points=3)
    assert out.log_probs.shape == (12, 3) and sum(rows) == 2 * branch_cost(10, 6, 3)[0] == 2 * (3 + 6 * 24)
    with pytest.raises(ValueError, match="branch_points"):
        branch_cost(10, 6, 10)


def test_tempflow_cost_per_epoch_matches_the_spec():
    cfg = resolve({"method": "tempflow-grpo", "world": "sd3", "task": "geneval"}, None, [])
    tf = passes_per_image("tempflow-grpo", cfg)
    assert (tf.rollout_forward, tf.train_forward, tf.train_backward, tf.images) == (558, 216, 108, 54)
    assert tf.forward_equivalents == 990  # 18.3 per scored image; FlowGRPO: 92 per image
    grpo = resolve({"method": "flowgrpo", "world": "sd3", "task": "geneval"}, None, [])
    per_epoch = {m: c.prompts_per_epoch * c.images_per_prompt * passes_per_image(m, c).images
                 for m, c in (("tempflow-grpo", cfg), ("flowgrpo", grpo))}
    assert per_epoch == {"tempflow-grpo": 10368, "flowgrpo": 1152}  # 9x the decodes and reward calls


# ------------------------------------------------------------------------------------------------ method and harness
def test_variant_and_presets_resolve(tmp_path):
    cfg = resolve({"method": "tempflow-grpo", "world": "sd3", "task": "pickscore"}, None, [])
    f = cfg.flowgrpo
    assert (f.branches, f.step_weight, f.adv_group, f.kl_form, f.global_std) == (6, "noise_aware", "seed", "std_dt",
                                                                                  False)
    assert (f.kl_beta, cfg.images_per_prompt, cfg.rollout_batch_size, f.train_batch_size) == (0.001, 4, 1, 6)
    assert resolve({"method": "tempflow-grpo", "world": "sd3", "task": "geneval"}, None, []).flowgrpo.kl_beta == 0.004
    shapes = resolve({"method": "tempflow-grpo"}, None, [])  # its search's winning change: no KL on the shapes world
    assert (shapes.flowgrpo.kl_beta, shapes.images_per_prompt, shapes.rollout_batch_size) == (0.0, 2, 16)
    with pytest.raises(ValueError, match="tempflow-grpo"):
        Trainer(tiny_config("flowgrpo", tmp_path, "flowgrpo.branches=6"), policy=tiny_policy())


def test_rollout_rows_advantages_and_on_policy_ratio(tmp_path):
    tr = Trainer(tiny_config("tempflow-grpo", tmp_path), policy=tiny_policy())
    batch, roll = tr.rollout(0)
    k, s, trunks = 6, 3, 16  # 4 sampler steps -> 3 branch points; 4 prompts x 4 noises
    assert len(batch) == trunks * k and batch.log_probs.shape == (trunks * k, s)
    assert batch.rewards["avg"].shape == (trunks * k, s) and batch.stochastic == [True] * s
    assert roll["images"] == trunks * s * k and roll["count/rollout_forward"] == trunks * branch_cost(4, k)[0] * 2
    assert all(batch.prompts[r] == batch.prompts[(r // k) * k] for r in range(len(batch)))
    assert torch.equal(batch.sample_ids, torch.arange(trunks).repeat_interleave(k))
    tr.advantages(batch)
    assert batch.advantages.shape == (trunks * k, s)
    for t in range(trunks):  # seed groups: each noise's K branches, per step, with their own std
        rows = slice(t * k, (t + 1) * k)
        by_hand = step_advantages(batch.rewards["avg"][rows], [0] * k).float()
        assert torch.allclose(batch.advantages[rows], by_hand, atol=1e-5)
    # on-policy: branch 0 of each noise of the first sampling batch, at that batch's size, reproduces its log-prob
    idx = torch.arange(0, tr.cfg.rollout_batch_size * k, k)
    cond = (batch.embeds[idx], batch.pooled[idx])
    for j in tr.method.trained_steps(batch):
        log_prob, _, _ = tr.method._step_log_prob(batch, idx, j, cond, grad=False)
        assert (torch.exp(log_prob - batch.log_probs[idx, j]) - 1).abs().max() < 1e-5, j
    tr.close()


def test_rank_shard_reproduces_its_rows_of_the_whole_epoch(tmp_path):
    """Rank invariance of the rollout and the seed-group advantages: rank 1 of 2 (sampling batches of 4) samples,
    scores and normalises exactly its half of what one process (batches of 8) does."""
    one = Trainer(tiny_config("tempflow-grpo", tmp_path / "one"), policy=tiny_policy())
    whole, _ = one.rollout(0)
    one.advantages(whole)
    one.close()
    two = Trainer(tiny_config("tempflow-grpo", tmp_path / "two", "rollout_batch_size=4"), policy=tiny_policy())
    two.rank, two.sampler = 1, GroupedSampler(len(two.train_set), 4, 4, 4, world_size=2, rank=1)
    half, _ = two.rollout(0)
    two.close()
    rows = slice(len(whole) // 2, len(whole))
    assert torch.equal(half.sample_ids, whole.sample_ids[rows]) and half.prompts == whole.prompts[rows]
    # equal on one thread; with several, BLAS blocks a batch of 4 differently from one of 8, and float32 rounding
    # moves latents by a few 1e-6 (measured 2.4e-6 in CI on 2 threads)
    close = lambda a, b: torch.testing.assert_close(a, b, atol=2e-5, rtol=0)  # noqa: E731
    for name in ("latents", "next_latents", "log_probs"):
        close(getattr(half, name), getattr(whole, name)[rows])
    close(half.rewards["avg"], whole.rewards["avg"][rows])
    close(two.method.advantages(half.rewards["avg"].double(), half.prompts, half.sample_ids).float(),
          whole.advantages[rows])


def test_one_epoch_end_to_end_records(tmp_path):
    tr = Trainer(tiny_config("tempflow-grpo", tmp_path, "eval_every=1", "eval_prompts=4", "eval_images_per_prompt=1",
                             epochs=1), policy=tiny_policy())
    result = tr.run()
    df = load_results(tmp_path)
    keys = set(df["key"])
    for key in ("reward/avg_mean", "train/loss", "train/policy_loss", "train/kl_loss", "train/clipfrac",
                "count/rollout_forward", "cum/images", "eval/strict_accuracy"):
        assert key in keys, key
    assert df[df.key == "cum/images"].value.max() == 16 * 3 * 6
    assert df[df.key == "train/count/train_backward"].value.max() <= 16 * 6 * 3 * 2
    meta = records.read_meta(tmp_path / result["run_id"])
    assert meta["config"]["flowgrpo"]["branches"] == 6 and meta["config"]["flowgrpo"]["adv_group"] == "seed"


def test_resume_is_exact(tmp_path):
    test_trainer.test_resume_is_exact(tmp_path, "tempflow-grpo")


def test_tempflow_raises_a_learnable_reward(tmp_path):
    """On the shipped shapes base model, brightness of the branch images rises beyond its jitter within 8 epochs
    (16 noises x 6 branches x 3 branch points per epoch)."""
    test_trainer.test_methods_raise_a_learnable_reward(tmp_path, "tempflow-grpo", [
        "images_per_prompt=4", "flowgrpo.train_batch_size=24", "optim.lr=1e-2", "flowgrpo.guidance=1.0",
        "flowgrpo.clip_range=1e-2"], 0.02)
