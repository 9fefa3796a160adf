"""Tiny shapes-world policies and run configs for fast end-to-end tests."""
from __future__ import annotations

from bench.config import resolve
from rollout.models import PolicyOptions, T2IPolicy, build_tiny_sd3


def tiny_policy(seed: int = 0) -> T2IPolicy:
    from worlds.shapes.prompts import VOCAB

    pipe = build_tiny_sd3(VOCAB, sample_size=16, patch_size=4, layers=2, heads=2, head_dim=16, clip_hidden=32,
                          with_t5=False, with_vae=False, max_len=20, seed=seed)
    return T2IPolicy(pipe, PolicyOptions(max_sequence_length=0))


def tiny_config(method: str, out, *extra: str, epochs: int = 2, seed: int = 0):
    overrides = ["resolution=16", "prompts_per_epoch=4", "images_per_prompt=4", "rollout_batch_size=8",
                 "eval_every=0", "reward=brightness", "nft.num_steps=4", "flowgrpo.num_steps=4", "cfg.num_steps=4",
                 "nft.train_batch_size=8", "flowgrpo.train_batch_size=8", "lora.rank=4", "lora.alpha=8",
                 "awm.num_steps=6", "awm.train_timesteps=2", "awm.train_batch_size=4",
                 "dgpo.num_steps=4", "dgpo.trunc_steps=3", "dgpo.num_train_timesteps=2", "dgpo.train_batch_size=8",
                 "tensorboard=false", "reward_workers=1", f"out={out}", *extra]
    return resolve({"method": method, "seed": seed, "epochs": epochs}, None, overrides)


# timing keys: the only values two equal runs may differ in
CLOCKS = ("time/", "cum/wall", "cum/cpu", "cum/gpu", "cum/eval")


def train_records(root, run_id: str | None = None):
    """Every recorded value but the clocks, of the one run under ``root`` (or of ``run_id``), indexed by
    (epoch, key)."""
    from bench.records import load_results

    df = load_results(root)
    df = df[~df.key.str.startswith(CLOCKS)]
    df = df if run_id is None else df[df.run_id == run_id]
    return df.set_index(["epoch", "key"])["value"].sort_index()
