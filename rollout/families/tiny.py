"""Every family at tiny size, buildable offline: random weights, word-level tokenizers, small configs.

Each builder returns the family's own diffusers pipeline (so ``save_pretrained`` writes the real layout and the
policy loads it back through the real path), with a VAE of scale factor 2 (32 px images -> 16 x 16 latents) and text
encoders of width ``hidden``. Scheduler configs are the published models' (dynamic shifting where they use it), so
the schedules the tests check are the real ones. Builders draw from the global RNG after ``torch.manual_seed(seed)``.
"""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, AutoencoderKLFlux2, AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler,
                       Flux2KleinPipeline, Flux2Transformer2DModel, FluxPipeline, FluxTransformer2DModel,
                       QwenImagePipeline, QwenImageTransformer2DModel, ZImagePipeline, ZImageTransformer2DModel)
from transformers import (CLIPTextConfig, CLIPTextModel, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                          Qwen3Config, Qwen3ForCausalLM, Qwen3Model, T5Config, T5EncoderModel)

from rollout.models import build_tiny_sd3
from rollout.text import build_word_tokenizer

# FLUX.1-dev / FLUX.1-schnell scheduler_config.json
FLUX_DEV_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                          num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
FLUX_SCHNELL_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                              num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
# Qwen/Qwen-Image scheduler_config.json (dynamic exponential shift, stretched to a terminal sigma of 0.02)
QWEN_IMAGE_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9,
                            num_train_timesteps=1000, shift=1.0, shift_terminal=0.02, use_dynamic_shifting=True,
                            time_shift_type="exponential")
# Tongyi-MAI/Z-Image-Turbo scheduler_config.json (static shift 3)
Z_IMAGE_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
# FLUX.2 klein: dynamic shifting (the pipeline's mu is compute_empirical_mu)
FLUX2_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential")
# a chat template for the word-level tokenizers of the Qwen-based families (they format prompts with it)
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|> assistant{% endif %}")


def tiny_vae(latent_channels: int, sample_size: int = 32, shift: float = 0.1159,
             scale: float = 0.3611) -> AutoencoderKL:
    """A two-level ``AutoencoderKL`` (scale factor 2); FLUX.1's shift and scale factors by default."""
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=latent_channels, norm_num_groups=4, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=shift, scaling_factor=scale, sample_size=sample_size)


def build_tiny_flux(words: list[str], *, dev: bool = True, hidden: int = 32, max_len: int = 16,
                    seed: int = 0) -> FluxPipeline:
    """FLUX.1 at tiny size: ``dev=True`` has the guidance embedding and dev's dynamic shift, ``dev=False`` is
    schnell (no guidance embedding, static shift 1). CLIP (pooled, width ``hidden``) and T5 (width ``hidden``)."""
    torch.manual_seed(seed)
    tok = build_word_tokenizer(words, max_length=max_len)
    special = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=max_len,
                                        projection_dim=hidden, hidden_act="gelu", **special))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=hidden, d_kv=16, d_ff=hidden * 2, num_layers=1,
                                 num_heads=2, dropout_rate=0.0, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id))
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=hidden,
                                         pooled_projection_dim=hidden, guidance_embeds=dev, axes_dims_rope=(4, 4, 8))
    scheduler = FlowMatchEulerDiscreteScheduler(**(FLUX_DEV_SCHEDULER if dev else FLUX_SCHNELL_SCHEDULER))
    return FluxPipeline(scheduler=scheduler, vae=tiny_vae(4), text_encoder=clip, tokenizer=tok, text_encoder_2=t5,
                        tokenizer_2=build_word_tokenizer(words, max_length=max_len), transformer=transformer)


def _chat_tokenizer(words: list[str], max_len: int):
    tok = build_word_tokenizer(words, max_length=max_len)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _qwen3(config_cls, model_cls, vocab: int, hidden: int, layers: int, max_len: int, pad: int):
    cfg = config_cls(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                     num_attention_heads=2, num_key_value_heads=2, head_dim=hidden // 2,
                     max_position_embeddings=max(max_len, 64), pad_token_id=pad)
    return model_cls(cfg)


def build_tiny_qwenimage(words: list[str], *, hidden: int = 16, max_len: int = 64, seed: int = 0) -> QwenImagePipeline:
    """Qwen-Image at tiny size: a Qwen2.5-VL text encoder of width ``hidden`` (tiny vision tower), a one-frame video
    VAE with non-trivial latent statistics (scale factor 4: 32 px -> 8 x 8 latents), a 2-layer transformer."""
    torch.manual_seed(seed)
    tok = build_word_tokenizer(words, max_length=max_len)
    text = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                         rope_scaling=dict(mrope_section=[1, 1, 2], rope_type="default", type="default"),
                         rope_theta=1000000.0),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=hidden),
        hidden_size=hidden, vocab_size=len(tok)))
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.1, -0.2, 0.05, 0.3],
                                 latents_std=[1.5, 0.8, 1.2, 2.0])
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=3, joint_attention_dim=hidden,
                                              guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    return QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER), vae=vae,
                             text_encoder=text.eval(), tokenizer=tok, transformer=transformer)


def build_tiny_zimage(words: list[str], *, hidden: int = 16, max_len: int = 32, seed: int = 0) -> ZImagePipeline:
    """Z-Image at tiny size: a 2-layer Qwen3 text encoder of width ``hidden``, a 16-channel VAE (scale factor 2), a
    2-layer transformer with one refiner layer; its pad tokens (``torch.empty`` at init) set to ones."""
    torch.manual_seed(seed)
    tok = _chat_tokenizer(words, max_len)
    text = _qwen3(Qwen3Config, Qwen3Model, len(tok), hidden, 2, max_len, tok.pad_token_id)
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32,
                                           n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5,
                                           qk_norm=True, cap_feat_dim=hidden, rope_theta=256.0, t_scale=1000.0,
                                           axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])
    with torch.no_grad():
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    return ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**Z_IMAGE_SCHEDULER), vae=tiny_vae(16),
                          text_encoder=text.eval(), tokenizer=tok, transformer=transformer)


def build_tiny_flux2_klein(words: list[str], *, hidden: int = 16, max_len: int = 16, distilled: bool = False,
                           seed: int = 0) -> Flux2KleinPipeline:
    """FLUX.2 klein at tiny size: a 27-layer Qwen3 of width ``hidden`` (so the pipeline's hidden layers 9, 18, 27
    exist; 3 x ``hidden`` wide prompt embeddings), a 4-channel FLUX.2 VAE (scale factor 2; 16 patchified channels)
    with non-trivial batch-norm statistics, one double and one single block."""
    torch.manual_seed(seed)
    tok = _chat_tokenizer(words, max_len)
    text = _qwen3(Qwen3Config, Qwen3ForCausalLM, len(tok), hidden, 27, max_len, tok.pad_token_id)
    vae = AutoencoderKLFlux2(sample_size=32, block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                             norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False)
    with torch.no_grad():
        vae.bn.running_mean.copy_(0.3 * torch.randn(16))
        vae.bn.running_var.copy_(torch.rand(16) + 0.5)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=3 * hidden,
                                          timestep_guidance_channels=256, axes_dims_rope=(4, 4, 4, 4),
                                          guidance_embeds=False)
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER), vae=vae,
                              text_encoder=text.eval(), tokenizer=tok, transformer=transformer, is_distilled=distilled)


BUILDERS = {
    "sd3": lambda words, seed: build_tiny_sd3(words, seed=seed),
    "flux-dev": lambda words, seed: build_tiny_flux(words, dev=True, seed=seed),
    "flux-schnell": lambda words, seed: build_tiny_flux(words, dev=False, seed=seed),
    "qwen-image": lambda words, seed: build_tiny_qwenimage(words, seed=seed),
    "z-image": lambda words, seed: build_tiny_zimage(words, seed=seed),
    "flux2-klein": lambda words, seed: build_tiny_flux2_klein(words, seed=seed),
    "flux2-klein-distilled": lambda words, seed: build_tiny_flux2_klein(words, distilled=True, seed=seed),
}
"""Tiny variant name -> builder over (vocabulary, seed)."""


def main(argv: list[str] | None = None) -> None:
    """``python -m rollout.families.tiny <variant> <dir>``: write a tiny model of a family (shapes-world vocabulary)
    that ``python -m bench.run --world <dir>`` trains on a CPU."""
    import argparse

    from worlds.shapes.prompts import VOCAB

    ap = argparse.ArgumentParser(prog="python -m rollout.families.tiny", description=main.__doc__)
    ap.add_argument("variant", choices=sorted(BUILDERS), help="Family variant to build.")
    ap.add_argument("out", help="Directory to write (save_pretrained layout).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    args = ap.parse_args(argv)
    BUILDERS[args.variant](VOCAB, args.seed).save_pretrained(args.out, safe_serialization=True)
    print(f"wrote a tiny {args.variant} pipeline to {args.out}")


if __name__ == "__main__":
    main()
