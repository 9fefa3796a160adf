"""Every model family at tiny size (FLUX.1 dev and schnell, Qwen-Image, Z-Image, FLUX.2 klein): saved and loaded back
through the real path, the harness's Euler sampler against the family's own diffusers pipeline on the same initial
noise, LoRA targets, and one epoch of NFT and of FlowGRPO through the trainer."""
import json

import pytest
import torch

from bench.config import resolve
from bench.records import load_results
from bench.trainer import Trainer
from rollout import lora
from rollout.families import FAMILIES, ModelLoadError, load_policy
from rollout.families.base import PolicyOptions
from rollout.families.tiny import BUILDERS
from rollout.families.tokens import pack_2x2, unpack_2x2
from rollout.samplers import sample

WORDS = "a photo of an the red blue green cat dog left right above below two three".split()
VARIANTS = ["flux-dev", "flux-schnell", "qwen-image", "z-image", "flux2-klein"]
TEXT_LEN = 32


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """variant -> a directory written by the variant's tiny pipeline's ``save_pretrained`` (built once)."""
    dirs = {}

    def get(variant: str):
        if variant not in dirs:
            dirs[variant] = tmp_path_factory.mktemp(variant)
            BUILDERS[variant](WORDS, 0).save_pretrained(dirs[variant], safe_serialization=True)
        return dirs[variant]
    return get


def pipeline_run(policy, prompts: list[str], x: torch.Tensor, steps: int, guidance: float, output_type: str):
    """The family's own pipeline from initial noise ``x`` (the harness's spatial latent); "latent" comes back in the
    harness's layout (FLUX.2: the VAE latent, what the pipeline returns)."""
    family, b = policy.family, len(prompts)
    h, w = x.shape[-2:]
    kw = dict(prompt=list(prompts), height=32, width=32, num_inference_steps=steps, output_type=output_type,
              max_sequence_length=TEXT_LEN)  # a copy of the prompts: ZImagePipeline rewrites its list in place
    if family in ("flux", "qwen-image"):
        kw["latents"] = pack_2x2(x.clone())
        if guidance != 1.0:
            kw.update(true_cfg_scale=guidance, negative_prompt=[""] * b)
        if family == "flux":
            kw["guidance_scale"] = policy.options.guidance_embed
        else:
            kw["true_cfg_scale"] = guidance
    elif family == "z-image":
        kw.update(latents=x.clone(), guidance_scale=guidance - 1)  # Z-Image's CFG is pos + w (pos - neg), w = g - 1
    else:
        kw.update(latents=x.clone(), guidance_scale=guidance)
    out = policy.pipe(**kw).images
    if output_type == "latent" and family in ("flux", "qwen-image"):
        out = unpack_2x2(out, h, w)
    return out


@pytest.mark.parametrize("guidance", [1.0, 4.0])
@pytest.mark.parametrize("variant", VARIANTS)
def test_euler_sampler_reproduces_the_family_pipeline(saved, variant, guidance):
    """Same initial noise, same sigma table (the family's own, FLUX's resolution-dependent shift included), same
    guidance: the harness's Euler ODE on ``policy.velocity`` and the family's diffusers pipeline agree to float32
    rounding (atol 1e-5 on latents of magnitude ~5 and on images in [0, 1]; measured when written: <= 1e-6). This
    is the check that the velocity sign, timestep, packing, text padding and CFG conventions are the pipeline's."""
    policy = load_policy(saved(variant), PolicyOptions(max_sequence_length=TEXT_LEN, timestep_mode="float"))
    prompts = ["a photo of a red cat", "two blue dog left of a green cat"]
    x = torch.randn(2, *policy.latent_shape(32, 32), generator=torch.Generator().manual_seed(0))
    cond = policy.encode(prompts)
    steps = 4
    ours = sample(lambda x_, s: policy.velocity(x_, s, cond, guidance=guidance), x, policy.sigmas(steps, 32, 32),
                  "euler").x0
    ref = pipeline_run(policy, prompts, x, steps, guidance, "latent")
    mine = policy.to_vae_latents(ours) if policy.family == "flux2-klein" else ours
    assert mine.shape == ref.shape and ref.abs().max() > 1
    assert torch.allclose(mine, ref, atol=1e-5, rtol=0), (mine - ref).abs().max()
    images = pipeline_run(policy, prompts, x, steps, guidance, "pt")
    assert images.shape == (2, 3, 32, 32)
    assert torch.allclose(policy.decode(ours), images, atol=1e-5, rtol=0), (policy.decode(ours) - images).abs().max()


def test_flux_dev_schedule_shifts_with_resolution(saved):
    """FLUX.1-dev's table depends on the image size (mu linear in the image tokens); schnell's does not."""
    dev = load_policy(saved("flux-dev"))
    schnell = load_policy(saved("flux-schnell"))
    assert not torch.allclose(dev.sigmas(4, 32, 32), dev.sigmas(4, 64, 64))
    assert torch.equal(schnell.sigmas(4, 32, 32), schnell.sigmas(4, 64, 64))
    assert torch.allclose(schnell.sigmas(4, 32, 32), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_lora_targets_each_match_and_start_at_the_base(saved, variant):
    policy = load_policy(saved(variant), PolicyOptions(max_sequence_length=TEXT_LEN, timestep_mode="float"))
    targets = list(type(policy).lora_targets)
    lora.add_lora(policy.transformer, lora.LoraOptions(rank=2, alpha=4, target_modules=targets), seed=0)
    names = list(lora.adapter_params(policy.transformer, lora.TRAINABLE))
    for target in targets:  # no dead entry: every suffix adapts at least one module of the family's transformer
        assert any(f".{target}.lora_" in n for n in names), target
    x = torch.randn(2, *policy.latent_shape(32, 32))
    cond = policy.encode(["a red cat", "a dog"])
    v = policy.velocity(x, 0.5, cond, guidance=2.0)
    with lora.reference(policy.transformer):
        assert torch.equal(policy.velocity(x, 0.5, cond, guidance=2.0), v)  # gaussian init: B = 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_epoch_of_nft_and_flowgrpo_through_the_trainer(saved, variant, tmp_path):
    """The real path: the world is the saved directory, its family's policy, presets and LoRA targets."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a red cat\ntwo blue dog\n")
    world = str(saved(variant))
    for method in ("nft", "flowgrpo"):
        cfg = resolve({"method": method, "seed": 0, "epochs": 1, "world": world}, None, [
            "resolution=32", "prompts_per_epoch=2", "images_per_prompt=4", "rollout_batch_size=8",
            "nft.train_batch_size=4", "flowgrpo.train_batch_size=4", "nft.num_steps=2", "flowgrpo.num_steps=2",
            "flowgrpo.sde_window=0", "eval_every=0", "reward=brightness", f"train_prompts={prompts}",
            "lora.rank=4", "lora.alpha=8", "tensorboard=false", "reward_workers=1", f"out={tmp_path / method}"])
        family = type(load_policy(world)).family
        assert cfg.lora.target_modules == list(type(load_policy(world)).lora_targets), family
        trainer = Trainer(cfg)
        assert trainer.policy.family == family
        result = trainer.run()
        df = load_results(tmp_path / method)
        loss = df[df.key == "train/loss"].value.to_numpy()
        assert result["epochs"] == 1 and len(loss) == 1 and torch.isfinite(torch.tensor(loss)).all()
        assert df[df.key == "cum/images"].value.max() == 8
        b = [v for k, v in trainer.method.state_dict()["default"].items() if "lora_B" in k]
        assert b and any(t.abs().max() > 0 for t in b), "the optimizer step left the LoRA at its init"


def test_a_directory_of_an_unknown_family_names_the_file_and_the_families(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    known = r"known pipelines: StableDiffusion3Pipeline \(sd3\), FluxPipeline \(flux\)"
    with pytest.raises(ModelLoadError, match=r"model_index.json: _class_name 'WanPipeline' is not a known model "
                                             r"family; " + known):
        load_policy(tmp_path)
    from bench.cli import check_world

    with pytest.raises(ValueError, match="WanPipeline"):
        check_world(str(tmp_path))
    assert set(FAMILIES) == {"sd3", "flux", "flux2-klein", "qwen-image", "z-image"}


def test_family_presets_follow_the_reference_configs(saved):
    """Paper-scale presets per family: FlowGRPO's FLUX.1-dev and Qwen-Image configs, the family's LoRA targets, no
    CFG for a step-distilled FLUX.2 klein; SD3 worlds are untouched."""
    flux = resolve({"method": "flowgrpo", "world": str(saved("flux-dev")), "task": "pickscore"}, None, [])
    assert (flux.flowgrpo.num_steps, flux.eval_steps, flux.flowgrpo.guidance) == (6, 28, 1.0)
    assert flux.rollout_batch_size == flux.flowgrpo.train_batch_size == 3
    assert (flux.lora.rank, flux.lora.alpha, flux.flowgrpo.kl_beta, flux.flowgrpo.noise_level) == (64, 128, 0.0, 0.9)
    assert "ff_context.net.2" in flux.lora.target_modules
    fast = resolve({"method": "flowgrpo-fast", "world": str(saved("flux-dev")), "task": "geneval"}, None, [])
    assert (fast.flowgrpo.solver, fast.flowgrpo.noise_level, fast.flowgrpo.sde_window) == ("cps", 0.8, 3)
    qwen = resolve({"method": "flowgrpo", "world": str(saved("qwen-image")), "task": "pickscore"}, None, [])
    assert (qwen.prompts_per_epoch, qwen.images_per_prompt, qwen.flowgrpo.guidance, qwen.flowgrpo.sde_window,
            qwen.flowgrpo.noise_level, qwen.eval_steps) == (32, 16, 4.0, 2, 1.2, 50)
    klein = resolve({"method": "flowgrpo", "world": str(saved("flux2-klein-distilled"))}, None, [])
    assert klein.flowgrpo.guidance == 1.0 and "attn.to_qkv_mlp_proj" in klein.lora.target_modules
    assert resolve({"method": "flowgrpo", "world": str(saved("flux2-klein"))}, None, []).flowgrpo.guidance == 4.5
    sd3 = resolve({"method": "flowgrpo", "world": "stabilityai/stable-diffusion-3.5-medium"}, None, [])
    assert sd3.lora.target_modules == lora.LoraOptions().target_modules and sd3.flowgrpo.num_steps == 10
