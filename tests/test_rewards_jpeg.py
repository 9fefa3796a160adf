import io

import numpy as np
import pytest
import torch
from PIL import Image

from rewards import build_reward
from rewards.jpeg import JpegCompressibility, JpegIncompressibility, jpeg_kilobytes


def _images(seed=0, b=3, h=48, w=40):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, h, w, generator=g)
    images[0] = 0.5  # flat image: compresses far better than noise
    return images


def _pil_kb(images, quality):
    out = []
    for x in images:
        a = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        out.append(len(buf.getvalue()) / 1000)
    return torch.tensor(out)


def test_kilobytes_match_a_hand_made_pil_jpeg_at_quality_95():
    images = _images()
    assert torch.allclose(jpeg_kilobytes(images), _pil_kb(images, 95))
    assert torch.allclose(jpeg_kilobytes(images, quality=50), _pil_kb(images, 50))


def test_signs_keys_and_ordering():
    images = _images()
    comp = JpegCompressibility()(images, [""] * 3, [{}] * 3)
    incomp = JpegIncompressibility()(images, [""] * 3, [{}] * 3)
    kb = _pil_kb(images, 95)
    assert comp["jpeg_compressibility"].shape == (3,) and comp["jpeg_compressibility"].dtype == torch.float32
    assert torch.allclose(comp["jpeg_compressibility"], -kb)
    assert torch.allclose(incomp["jpeg_incompressibility"], kb)
    # the flat image is the most compressible one
    assert int(comp["jpeg_compressibility"].argmax()) == 0
    assert int(incomp["jpeg_incompressibility"].argmin()) == 0


def test_flowgrpo_scale_option_and_bad_quality():
    images = _images()
    out = JpegCompressibility(scale=1 / 500)(images, [""] * 3, [{}] * 3)
    assert torch.allclose(out["jpeg_compressibility"], -_pil_kb(images, 95) / 500)
    with pytest.raises(ValueError, match="quality"):
        JpegCompressibility(quality=0)


def test_through_the_registry():
    images = _images()
    out = build_reward("jpeg_compressibility:2")(images, ["a"] * 3, [{}] * 3)
    assert torch.allclose(out["avg"], 2 * out["jpeg_compressibility"])


def test_uses_the_references_uint8_rounding():
    # 0.5/255 above a level rounds up (round, not truncate): both images hit the same uint8 image -> same size
    base = torch.full((1, 3, 16, 16), 100 / 255)
    nudged = base + 0.4 / 255
    assert torch.equal(jpeg_kilobytes(base), jpeg_kilobytes(nudged))
    assert np.isfinite(jpeg_kilobytes(torch.zeros(1, 3, 8, 8)).numpy()).all()
