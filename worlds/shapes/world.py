"""The shapes world as a harness world: its base model, prompt files and reward names.

The base model is committed under ``worlds/shapes/checkpoint/`` in the ``StableDiffusion3Pipeline`` layout and
loads through the same ``from_pretrained`` path as SD3.5-Medium. :func:`build_shapes_model` is its architecture:
an SD3 transformer in pixel space (32 x 32 x 3, patch 4 -> 64 tokens, 6 layers, width 128) with two tiny CLIP
text encoders over a word-level tokenizer, no T5 and no VAE.
"""
from __future__ import annotations

from pathlib import Path

from diffusers import StableDiffusion3Pipeline

from worlds.base import World
from rollout.models import PolicyOptions, build_tiny_sd3
from rollout.prompts import PromptSet, load_geneval_metadata

HERE = Path(__file__).parent
CHECKPOINT = HERE / "checkpoint"
DATA = HERE / "data"
MAX_TOKENS = 20


def build_shapes_model(seed: int = 0) -> StableDiffusion3Pipeline:
    """The shapes-world base architecture with random weights (pretraining starts here)."""
    from worlds.shapes.prompts import VOCAB

    return build_tiny_sd3(VOCAB, sample_size=32, patch_size=4, layers=6, heads=4, head_dim=32, clip_hidden=64,
                          with_t5=False, with_vae=False, max_len=MAX_TOKENS, shift=3.0, seed=seed)


def load_prompts(which: str) -> PromptSet:
    """``"train"`` or ``"test"``: the shipped GenEval-format prompt files of the world."""
    if which not in ("train", "test"):
        raise ValueError(f"shapes prompt set must be 'train' or 'test', got {which!r}")
    return load_geneval_metadata(DATA / f"{which}_metadata.jsonl", name=f"shapes_{which}")


SHAPES = World(
    name="shapes",
    model=str(CHECKPOINT),
    resolution=32,
    eval_steps=10,
    policy_options=PolicyOptions(max_sequence_length=0, timestep_mode="int", autocast_dtype=None),
    reward_aliases={"geneval": "shapes_geneval"},
    train_set="train",
    test_set="test",
)
