"""The trainer end to end on the tiny model: on-policy ratio, exact resume, learnability, every method runs."""
import json

import pandas as pd
import pytest
import torch

from bench.config import resolve
from bench.records import load_results
from bench.trainer import Trainer
from rollout import lora
from tests.tiny import tiny_config, tiny_policy, train_records


def test_flowgrpo_ratio_is_one_on_policy(tmp_path):
    tr = Trainer(tiny_config("flowgrpo", tmp_path), policy=tiny_policy())
    batch, _ = tr.rollout(0)
    tr.advantages(batch)
    idx = torch.arange(tr.cfg.rollout_batch_size)  # the first sampling batch, same batch size
    cond = (batch.embeds[idx], batch.pooled[idx])
    for j in tr.method.trained_steps(batch):
        log_prob, _, _ = tr.method._step_log_prob(batch, idx, j, cond, grad=False)
        ratio = torch.exp(log_prob - batch.log_probs[idx, j])
        assert (ratio - 1).abs().max() < 1e-5, (j, ratio)
    tr.close()


@pytest.mark.parametrize("method", ["nft", "flowgrpo", "flowgrpo-fast"])
def test_one_epoch_end_to_end_records(tmp_path, method):
    tr = Trainer(tiny_config(method, tmp_path, "eval_every=1", "eval_prompts=4", "eval_images_per_prompt=1",
                             epochs=1), policy=tiny_policy())
    result = tr.run()
    df = load_results(tmp_path)
    keys = set(df["key"])
    for key in ("reward/avg_mean", "train/loss", "train/policy_loss", "train/kl_loss", "train/grad_norm",
                "time/rollout_s", "time/train_s", "cum/gpu_hours", "cum/images", "eval/strict_accuracy",
                "eval/strict_accuracy/position"):
        assert key in keys, key
    assert sorted(df["epoch"].unique()) == [0, 1]  # epoch 0 (eval + train) and the final eval at 1
    assert df[df.key == "cum/images"].value.max() == 16
    assert result["epochs"] == 1 and (tmp_path / result["run_id"] / "checkpoint.pt").exists()


def test_cfg_baseline_only_evaluates(tmp_path):
    tr = Trainer(tiny_config("cfg", tmp_path, "eval_every=1", "eval_prompts=4", "eval_images_per_prompt=1",
                             "cfg.guidance=4.5"), policy=tiny_policy())
    assert tr.eval_cfg.guidance == 4.5
    result = tr.run()
    assert "eval/strict_accuracy" in result["final"] and result["epochs"] == 0


@pytest.mark.parametrize("method", ["nft", "flowgrpo"])
def test_resume_is_exact(tmp_path, method):
    straight = Trainer(tiny_config(method, tmp_path / "a", "run_id=r", epochs=3), policy=tiny_policy())
    straight.run()
    state_a = straight.method.state_dict()
    first = Trainer(tiny_config(method, tmp_path / "b", "run_id=r", epochs=1), policy=tiny_policy())
    first.run()  # stop after epoch 1 of 3, as a kill after the epoch-1 checkpoint
    resumed = Trainer(tiny_config(method, tmp_path / "b", "run_id=r", epochs=3), policy=tiny_policy())
    resumed.run()
    state_b = resumed.method.state_dict()
    for name in ("default", "old", "ema"):
        for k in state_a[name]:
            assert torch.equal(state_a[name][k], state_b[name][k]), (name, k)
    opt_a, opt_b = state_a["optimizer"]["state"], state_b["optimizer"]["state"]
    for k in opt_a:
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(opt_a[k][field]), torch.as_tensor(opt_b[k][field]))
    assert state_a["global_step"] == state_b["global_step"]
    pd.testing.assert_series_equal(train_records(tmp_path / "a"), train_records(tmp_path / "b"))


@pytest.mark.parametrize("method,extra,margin", [
    ("nft", ["optim.lr=3e-3"], 0.03),
    ("flowgrpo", ["optim.lr=1e-2", "flowgrpo.guidance=1.0", "flowgrpo.clip_range=1e-2"], 0.02),
])
def test_methods_raise_a_learnable_reward(tmp_path, method, extra, margin):
    """On the shipped shapes base model (the real entry point, 32 px), mean image brightness rises well beyond its
    epoch-to-epoch jitter (~0.01) within 8 epochs."""
    cfg = resolve({"method": method, "seed": 0, "epochs": 8}, None, [
        "prompts_per_epoch=4", "images_per_prompt=8", "rollout_batch_size=16", "eval_every=0", "reward=brightness",
        "nft.num_steps=4", "flowgrpo.num_steps=4", "nft.train_batch_size=16", "flowgrpo.train_batch_size=16",
        "tensorboard=false", "reward_workers=1", f"out={tmp_path}", *extra])
    Trainer(cfg).run()
    df = load_results(tmp_path)
    r = df[df.key == "reward/avg_mean"].sort_values("epoch").value.to_numpy()
    assert len(r) == 8 and r[-3:].mean() > r[:2].mean() + margin, r


def test_staged_reward_schedule_switches_reward_and_prompts(tmp_path):
    sched = tmp_path / "schedule.json"
    sched.write_text(json.dumps([{"epochs": 1, "prompt_set": "train", "weights": {"brightness": 1.0}},
                                 {"epochs": 1, "prompt_set": "test", "reward": "jpeg_compressibility:0.5"}]))
    tr = Trainer(tiny_config("nft", tmp_path, f"reward_schedule={sched}", epochs=2), policy=tiny_policy())
    tr.run()
    df = load_results(tmp_path)
    keys_by_row = df.groupby("epoch").key.apply(set)
    assert "reward/brightness_mean" in keys_by_row[1] and "reward/jpeg_compressibility_mean" not in keys_by_row[1]
    assert "reward/jpeg_compressibility_mean" in keys_by_row[2]
    stage = df[df.key == "train/stage"].sort_values("epoch").value.tolist()
    assert stage == [0, 1] and tr.train_set.name == "shapes_test"


def test_nft_raises_the_shapes_geneval_reward(tmp_path):
    """Issue 5's short learnability check: NFT with the shapes preset on the shipped base model and the shapes GenEval
    reward (real model, reward and trainer; no stand-ins), 20 epochs on four prompts the base model often gets wrong
    (one each of colors, two_object, color_attr, position). The training reward rises clearly, and so does the GenEval
    score of the same prompts under the same evaluation noise (EMA weights, 32 images per prompt).
    Measured when written (1 thread): score 0.339 -> 0.463, strict 0.18 -> 0.35, training reward 0.45 -> 0.54."""
    from worlds.shapes.world import load_prompts

    chosen = {"a photo of a purple square", "a photo of a triangle and a circle",
              "a photo of a yellow circle and a purple square", "a photo of a triangle above a square"}
    meta = {m["prompt"]: m for m in load_prompts("test").metadata if m["prompt"] in chosen}
    assert set(meta) == chosen
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in meta.values()))
    epochs = 20
    cfg = resolve({"method": "nft", "seed": 0, "epochs": epochs}, None, [
        f"train_prompts={prompts}", f"test_prompts={prompts}", "prompts_per_epoch=4", "images_per_prompt=8",
        "rollout_batch_size=16", "budget_wall_s=0", f"eval_every={epochs}", "eval_prompts=0",
        "eval_images_per_prompt=32", "tensorboard=false", "reward_workers=1", f"out={tmp_path}"])
    Trainer(cfg).run()
    df = load_results(tmp_path)
    score = df[df.key == "eval/score"].sort_values("epoch").value.to_numpy()
    reward = df[df.key == "reward/avg_mean"].sort_values("epoch").value.to_numpy()
    assert len(score) == 2 and score[1] > score[0] + 0.06, score
    assert len(reward) == epochs and reward[-5:].mean() > reward[:5].mean() + 0.03, reward
