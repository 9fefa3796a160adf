"""The SD3 paper-scale path, end to end at tiny size: a pipeline saved with `save_pretrained` (two CLIP encoders, T5,
VAE) is loaded through `--world <folder>` and every trained method (the FlowGRPO variants included) runs one epoch
of the real entry point."""
from __future__ import annotations

import json

from bench import run
from bench.records import load_results
from rollout.models import build_tiny_sd3

WORDS = "a photo of red blue green cat dog cube ball two on the left".split()
METHODS = ("awm", "dgpo", "nft", "flowgrpo", "grpo-guard", "tempflow-grpo")
SECTIONS = ("awm", "dgpo", "nft", "flowgrpo")  # their config sections: the FlowGRPO variants read `flowgrpo.*`


def test_every_method_runs_one_epoch_on_a_saved_sd3_folder(tmp_path):
    build_tiny_sd3(WORDS, sample_size=16, with_t5=True, with_vae=True, max_len=16).save_pretrained(tmp_path / "sd3")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a red cat\na photo of two blue dogs\na green cube on the left\na red ball\n")
    tiny = ["resolution=32", "prompts_per_epoch=2", "images_per_prompt=4", "rollout_batch_size=4", "eval_every=0",
            "lora.rank=4", "lora.alpha=8", f"train_prompts={prompts}", f"test_prompts={prompts}",
            "dgpo.trunc_steps=2", "dgpo.num_train_timesteps=2", "awm.train_batch_size=2",
            *(f"{m}.num_steps=4" for m in SECTIONS),
            *(f"{m}.train_batch_size=4" for m in SECTIONS if m != "awm")]
    run.main(["--methods", ",".join(METHODS), "--world", str(tmp_path / "sd3"), "--task", "geneval",
              "--reward", "brightness", "--epochs", "1", "--out", str(tmp_path / "results"), "--no-report", *tiny])
    df = load_results(tmp_path / "results")
    assert sorted(df["method"].unique()) == sorted(METHODS)
    for folder in (tmp_path / "results").iterdir():
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["config"]["world"] == str(tmp_path / "sd3") and meta["config"]["lora"]["rank"] == 4
    rows = df[df["key"] == "count/rollout_forward"].set_index("method")["value"]
    # 8 images x 4 steps; the FlowGRPO family and DGPO roll out with CFG 4.5 (two forwards per step), AWM and NFT
    # without; TempFlow-GRPO per noise: a trunk forward at each of the 3 branch points and 6 branches finishing by
    # ODE from each (3 + 2 + 1 steps): 3 + 6 * 6 = 39, x 8 noises x 2
    assert rows.to_dict() == {"awm": 32, "dgpo": 64, "nft": 32, "flowgrpo": 64, "grpo-guard": 64,
                              "tempflow-grpo": 8 * (3 + 6 * 6) * 2}
    trained = df[df["key"] == "train/grad_norm"].set_index("method")["value"]
    assert set(trained.index) == set(METHODS) and (trained > 0).all()
