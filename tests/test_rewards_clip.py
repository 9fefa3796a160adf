"""CLIP-based rewards on a tiny randomly initialised CLIP saved to disk and loaded back through the real path."""
import pytest
import torch
import torch.nn.functional as F

from rewards import build_reward
from rewards.aesthetic import AestheticMLP, AestheticReward
from rewards.clip_rewards import (
    ClipEmbedder,
    ClipScoreReward,
    center_crop_tensor,
    resize_tensor,
    resolve_dtype,
    save_tiny_clip,
    uint8_to_pil,
)
from rewards.pickscore import PickScoreReward

PROMPTS = ["a red cat", "a blue dog on a sofa", "text", "an apple"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(str(tmp_path_factory.mktemp("tiny_clip")))


def _images(b=4, h=40, w=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, h, w, generator=g) * 255).round() / 255


def _manual_text(model, processor, prompts):
    tok = processor.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    out = model.get_text_features(**tok)
    return F.normalize(getattr(out, "pooler_output", out), dim=-1)


def _manual_pil(model, processor, pil):
    px = processor.image_processor(images=pil, return_tensors="pt")["pixel_values"]
    out = model.get_image_features(pixel_values=px)
    return F.normalize(getattr(out, "pooler_output", out), dim=-1)


def test_resize_and_crop_follow_torchvision_conventions():
    x = torch.rand(2, 3, 40, 80)
    assert resize_tensor(x, 32).shape[-2:] == (32, 64)
    assert resize_tensor(torch.rand(1, 3, 50, 30), 32).shape[-2:] == (53, 32)  # int(32 * 50 / 30)
    assert resize_tensor(x, (24, 24)).shape[-2:] == (24, 24)
    assert resize_tensor(x, 40) is x  # already the right size
    y = torch.arange(7 * 9, dtype=torch.float32).view(1, 1, 7, 9)
    crop = center_crop_tensor(y, (4, 4))
    assert crop[0, 0, 0, 0] == y[0, 0, 2, 2]  # top = round(3 / 2) = 2, left = round(5 / 2) = 2
    assert center_crop_tensor(torch.rand(1, 3, 2, 2), (4, 4)).shape[-2:] == (4, 4)


def test_resolve_dtype():
    assert resolve_dtype(None) == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(ValueError):
        resolve_dtype("int3")


def test_embedder_loads_lazily_and_batches_consistently(tiny_clip):
    small = ClipEmbedder(tiny_clip, device="cpu", batch_size=1)
    assert small._model is None  # nothing loaded before the first use
    big = ClipEmbedder(tiny_clip, device="cpu", batch_size=64)
    t1, t2 = small.embed_text(PROMPTS), big.embed_text(PROMPTS)
    assert t1.shape == (4, 16) and t1.dtype == torch.float32
    assert torch.allclose(t1.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(t1, t2, atol=1e-5)
    images = _images()
    assert torch.allclose(small.embed_float(images), big.embed_float(images), atol=1e-5)
    assert torch.allclose(small.embed_pil(uint8_to_pil(images)), big.embed_pil(uint8_to_pil(images)), atol=1e-5)


def test_float_preprocessing_matches_the_processor_at_native_size(tiny_clip):
    emb = ClipEmbedder(tiny_clip, device="cpu")
    images = _images(h=32, w=32)
    ours = emb.preprocess_float(images)
    theirs = emb.preprocess_pil(uint8_to_pil(images))
    assert ours.shape == theirs.shape == (4, 3, 32, 32)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert emb.preprocess_float(_images(h=64, w=48)).shape == (4, 3, 32, 32)
    assert emb.preprocess_float(_images(h=64, w=48), resize="squash", interpolation="bicubic").shape == (4, 3, 32, 32)


def test_clipscore_is_the_cosine_of_the_pair(tiny_clip):
    reward = ClipScoreReward(model=tiny_clip, device="cpu", batch_size=3)
    images = _images()
    out = reward(images, PROMPTS, [{}] * 4)["clipscore"]
    assert out.shape == (4,) and out.dtype == torch.float32
    img = reward.clip.embed_float(images)
    txt = reward.clip.embed_text(PROMPTS)
    assert torch.allclose(out, torch.diagonal(img @ txt.T), atol=1e-5)
    assert out.abs().max() <= 1 + 1e-5
    # known answer: identical embeddings give cosine 1
    reward.clip.embed_text = lambda prompts: img
    assert torch.allclose(reward(images, PROMPTS, [{}] * 4)["clipscore"], torch.ones(4), atol=1e-5)


def test_pickscore_formula_against_a_manual_computation(tiny_clip):
    reward = PickScoreReward(model=tiny_clip, processor=tiny_clip, device="cpu")
    images = _images()
    out = reward(images, PROMPTS, [{}] * 4)
    model, processor = reward.clip.model, reward.clip.processor
    with torch.no_grad():
        cos = (_manual_pil(model, processor, uint8_to_pil(images)) * _manual_text(model, processor, PROMPTS)).sum(-1)
        expected = model.logit_scale.exp() * cos / 26
    assert out["pickscore"].shape == (4,)
    assert torch.allclose(out["pickscore"], expected, atol=1e-5)
    assert torch.allclose(out["pickscore_x26"], 26 * out["pickscore"], atol=1e-5)


def test_aesthetic_mlp_layout_and_scoring(tiny_clip, tmp_path):
    full = AestheticMLP()
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items() if k.endswith("weight")}
    assert shapes == {"layers.0.weight": (1024, 768), "layers.2.weight": (128, 1024), "layers.4.weight": (64, 128),
                      "layers.6.weight": (16, 64), "layers.7.weight": (1, 16)}
    torch.manual_seed(1)
    mlp = AestheticMLP((16, 24, 12, 8, 4, 1))
    path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(mlp.state_dict(), path)
    reward = AestheticReward(weights=str(path), clip_model=tiny_clip, device="cpu")
    images = _images()
    out = reward(images, PROMPTS, [{}] * 4)["aesthetic"]
    assert out.shape == (4,) and out.dtype == torch.float32
    emb = reward.clip.embed_pil(uint8_to_pil(images))
    with torch.no_grad():
        assert torch.allclose(out, mlp.eval()(emb).squeeze(-1), atol=1e-5)
    # dropouts are inactive: scoring twice gives the same numbers
    assert torch.equal(out, reward(images, PROMPTS, [{}] * 4)["aesthetic"])


def test_aesthetic_needs_its_weights(tiny_clip, tmp_path):
    with pytest.raises(FileNotFoundError, match="weights="):
        AestheticReward(clip_model=tiny_clip, device="cpu")(_images(b=1), ["x"], [{}])
    bad = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="aesthetic"):
        AestheticReward(weights=str(bad), clip_model=tiny_clip, device="cpu")(_images(b=1), ["x"], [{}])


def test_missing_model_names_the_option_and_how_to_get_it(tmp_path):
    missing = str(tmp_path / "no" / "such" / "model")
    with pytest.raises(FileNotFoundError, match=r"model=.*huggingface-cli download|huggingface-cli download"):
        ClipScoreReward(model=missing, device="cpu")(_images(b=1), ["x"], [{}])
    with pytest.raises(FileNotFoundError, match="processor="):
        PickScoreReward(model=missing, processor=missing, device="cpu")(_images(b=1), ["x"], [{}])


def test_registry_builds_clip_rewards_with_options(tiny_clip):
    reward = build_reward("clipscore:0.5,pickscore:0.5", options={
        "clipscore": {"model": tiny_clip, "device": "cpu"},
        "pickscore": {"model": tiny_clip, "processor": tiny_clip, "device": "cpu", "dtype": "float32"},
    })
    out = reward(_images(b=2), PROMPTS[:2], [{}] * 2)
    assert torch.allclose(out["avg"], 0.5 * out["clipscore"] + 0.5 * out["pickscore"])
    assert out["pickscore_x26"].shape == (2,)


def test_download_hint_for_a_hub_id_and_a_path():
    from rewards.clip_rewards import download_hint

    hub = download_hint("model", "yuvalkirstain/PickScore_v1", "pickscore")
    assert "huggingface-cli download yuvalkirstain/PickScore_v1" in hub and "model=<folder>" in hub
    local = download_hint("clip_model", "/data/models/clip", "aesthetic")
    assert "clip_model='/data/models/clip'" in local and "huggingface-cli download" in local
