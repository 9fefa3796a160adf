"""The published architectures behind ``bench.perf --model <family>`` and ``bench.cost``: their sizes match the
releases, their FLOP model is consistent, and each builds as its family's policy with random weights."""
import dataclasses

import pytest
import torch

from bench.cost import family_flops_per_forward, transformer_flops_per_forward
from bench.perf import family_overrides
from bench.published import PUBLISHED, random_policy

# the releases' headline transformer sizes, in billions of parameters
RELEASED_B = {"flux-dev": 12.0, "flux-schnell": 12.0, "qwen-image": 20.0, "z-image": 6.0, "flux2-klein": 4.0}
# each family's transformer cut to one small block, keeping what must match the rest of the model (latent channels,
# text width): the wiring of the published VAE and the text stand-in is what is under test
SMALL = {
    "flux-dev": dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                     axes_dims_rope=(4, 4, 8)),
    "qwen-image": dict(num_layers=1, attention_head_dim=16, num_attention_heads=2, axes_dims_rope=(8, 4, 4)),
    "z-image": dict(dim=32, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, axes_dims=[8, 4, 4]),
    "flux2-klein": dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                        axes_dims_rope=(4, 4, 4, 4)),
}


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_published_transformers_have_the_released_size(model):
    params = PUBLISHED[model].transformer_params() / 1e9
    assert abs(params - RELEASED_B[model]) / RELEASED_B[model] < 0.05, params


def test_flops_per_forward_follow_the_token_count():
    for model in PUBLISHED:
        at512, at1024 = family_flops_per_forward(model, 512), family_flops_per_forward(model, 1024)
        params = PUBLISHED[model].transformer_params()
        assert 2 * params * 1024 < at512 < at1024  # at least the matmuls of 1024 image tokens
        assert at1024 / at512 > 3  # 4x the image tokens (the text tokens stay), quadratic attention on top
    layers, width = PUBLISHED["flux-dev"].depth_and_width()
    assert (layers, width) == (57, 3072)
    expected = transformer_flops_per_forward(PUBLISHED["flux-dev"].transformer_params(), 1024, 128, 57, 3072)
    assert family_flops_per_forward("flux-dev", 512) == expected
    with pytest.raises(ValueError, match="no published architecture for 'sd4'"):
        family_flops_per_forward("sd4")


@pytest.mark.parametrize("model", sorted(SMALL))
def test_random_policy_wires_the_published_vae_and_text_widths(model):
    spec = PUBLISHED[model]
    small = dataclasses.replace(spec, transformer={**spec.transformer, **SMALL[model]})
    policy = random_policy(small, "cpu")
    assert policy.family == spec.family and policy.text_encoders == []
    x = torch.randn(1, *policy.latent_shape(64, 64))
    cond = policy.encode(["a photo of a cat"])
    assert cond[0].shape[-1] == spec.text_width
    v = policy.velocity(x, 0.5, cond, guidance=2.0)
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert policy.decode(x).shape == (1, 3, 64, 64)


def test_perf_overrides_carry_the_family_conventions():
    assert "flowgrpo.guidance=1.0" in family_overrides("flux-dev")  # guidance through the embedding, no true CFG
    assert "flowgrpo.guidance=1.0" in family_overrides("flux2-klein")  # the distilled release
    assert not any(o.startswith("flowgrpo.guidance") for o in family_overrides("z-image"))
    assert family_overrides("z-image")[0].startswith("lora.target_modules=attention.to_q,")
